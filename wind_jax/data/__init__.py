"""Prompt and preference data: validated JSONL -> tfds array_record datasets -> tokenized, bucketed batches.

tensorflow_datasets is imported only by the functions that need it (``build``, ``load_source``, ...), so the
loaders and JSONL validation work on machines without tfds.
"""
from wind_jax.data.jsonl import JsonlReport, MalformedRecord, SkipCounter, check_jsonl, read_records, render_chat
from wind_jax.data.pipeline import PreferenceLoader, PromptLoader, bucket_length, shuffled_indices
from wind_jax.data.sharegpt import sharegpt_prompts


def build(*args, **kwargs):
    """See wind_jax.data.builders.build (imports tensorflow_datasets)."""
    from wind_jax.data import builders

    return builders.build(*args, **kwargs)


def load_source(*args, **kwargs):
    """See wind_jax.data.builders.load_source (imports tensorflow_datasets)."""
    from wind_jax.data import builders

    return builders.load_source(*args, **kwargs)


def process_split(*args, **kwargs):
    """See wind_jax.data.builders.process_split (imports tensorflow_datasets)."""
    from wind_jax.data import builders

    return builders.process_split(*args, **kwargs)


def skipped(builder) -> dict:
    """Skip counts stored in a prepared dataset's metadata."""
    from wind_jax.data import builders

    return builders.skipped(builder)


__all__ = ["JsonlReport", "MalformedRecord", "SkipCounter", "check_jsonl", "read_records", "render_chat",
           "PromptLoader", "PreferenceLoader", "bucket_length", "shuffled_indices", "build", "load_source",
           "process_split", "skipped", "sharegpt_prompts"]

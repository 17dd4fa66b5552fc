"""tfds builders (array_record files, no TensorFlow) for prompts and preference pairs.

    builder = build("prompts", "prompts.jsonl", data_dir="/tmp/tfds")     # validates, writes array_record
    source = builder.as_data_source(split="train")                         # random access, no TF
    # later / elsewhere: tfds.builder_from_directory(builder.data_dir) or load_source(builder.data_dir)

Each prepared dataset is a builder config named after the file stem and the sha256 of its bytes (plus the
skip flag), so two different JSONL files never share a directory and an unchanged file is not re-read.
Skipped-record counts are stored in the dataset metadata (``builder.info.metadata["skipped"]``).
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds

from wind_jax.data.jsonl import SkipCounter, read_records

_VERSION = tfds.core.Version("1.0.0")


def _config_name(path: str, skip_malformed: bool, max_prompt_chars: int | None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(f"|skip={skip_malformed}|max_chars={max_prompt_chars}".encode())
    stem = "".join(c if c.isalnum() else "_" for c in os.path.splitext(os.path.basename(path))[0])[:40]
    return f"{stem or 'data'}_{digest.hexdigest()[:16]}"


class _JsonlBuilder(tfds.core.GeneratorBasedBuilder):
    """Shared logic: one "train" split generated from a validated JSONL file."""

    VERSION = _VERSION
    _KIND = ""

    def __init__(self, *, jsonl_path: str, skip_malformed: bool = False, max_prompt_chars: int | None = None,
                 **kwargs):
        if not os.path.isfile(jsonl_path):
            raise ValueError(f"jsonl_path: no such file {jsonl_path!r}")
        self._jsonl_path = os.fspath(jsonl_path)
        self._skip_malformed = skip_malformed
        self._max_prompt_chars = max_prompt_chars
        config = tfds.core.BuilderConfig(
            name=_config_name(self._jsonl_path, skip_malformed, max_prompt_chars),
            description=f"{self._KIND} from {self._jsonl_path}")
        kwargs.setdefault("file_format", "array_record")
        super().__init__(config=config, **kwargs)

    def _features(self) -> dict:
        return {"prompt": tfds.features.Text(), "messages": tfds.features.Text(), "line": np.int64}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, description=self.builder_config.description,
            features=tfds.features.FeaturesDict(self._features()), metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        skips = SkipCounter()
        for record in read_records(self._jsonl_path, self._KIND, skip_malformed=self._skip_malformed,
                                   skips=skips, max_prompt_chars=self._max_prompt_chars):
            yield record["line"], record
        self.info.metadata["source"] = self._jsonl_path
        self.info.metadata["skipped"] = skips.as_dict()


class Prompts(_JsonlBuilder):
    """Prompts from JSONL lines {"prompt": str} or {"messages": [{"role", "content"}, ...]}.

    Features: prompt (text; chat messages rendered by ``render_chat``), messages (JSON, '' for plain
    prompts), line (1-based line in the source file).
    """

    _KIND = "prompts"


class PreferencePairs(_JsonlBuilder):
    """Preferences from {"prompt", "chosen", "rejected"} (stored as scores [1, 0]) or {"prompt", "responses",
    "scores"}. Features: prompt, messages, responses (list of text), scores (list of float32), line."""

    _KIND = "preference_pairs"

    def _features(self) -> dict:
        return {**super()._features(), "responses": tfds.features.Sequence(tfds.features.Text()),
                "scores": tfds.features.Sequence(np.float32)}


BUILDERS = {"prompts": Prompts, "preference_pairs": PreferencePairs}


def build(kind: str, jsonl_path: str, data_dir: str, *, skip_malformed: bool = False,
          max_prompt_chars: int | None = None):
    """Validate ``jsonl_path`` and write it as an array_record tfds dataset under ``data_dir``; return the builder.

    Malformed lines raise ValueError naming file:line (nothing is left half-written: tfds writes to an
    ``incomplete.*`` directory first), or are counted when ``skip_malformed``.
    """
    if kind not in BUILDERS:
        raise ValueError(f"kind must be one of {sorted(BUILDERS)}, got {kind!r}")
    builder = BUILDERS[kind](jsonl_path=jsonl_path, skip_malformed=skip_malformed,
                             max_prompt_chars=max_prompt_chars, data_dir=data_dir)
    builder.download_and_prepare()
    return builder


def skipped(builder) -> dict:
    """The skip counts recorded when the dataset was prepared."""
    return dict(builder.info.metadata.get("skipped", {"total": 0, "by_kind": {}, "first_messages": []}))


def process_split(split: str = "train", process_index: int | None = None, process_count: int | None = None) -> str:
    """This process's share of ``split`` (tfds.split_for_jax_process, or even_splits with explicit indices)."""
    if process_index is None and process_count is None:
        return tfds.split_for_jax_process(split, drop_remainder=True)
    if process_index is None or process_count is None:
        raise ValueError("process_index and process_count must be given together")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
    return tfds.even_splits(split, n=process_count, drop_remainder=True)[process_index]


def load_source(builder_or_dir, split: str = "train", *, process_index: int | None = None,
                process_count: int | None = None):
    """Random-access source (``as_data_source``) of this process's share of a prepared dataset.

    ``builder_or_dir``: a builder from ``build`` or its ``data_dir`` (read with tfds.builder_from_directory).
    """
    builder = builder_or_dir
    if isinstance(builder_or_dir, (str, os.PathLike)):
        builder = tfds.builder_from_directory(os.fspath(builder_or_dir))
    return builder.as_data_source(split=process_split(split, process_index, process_count))

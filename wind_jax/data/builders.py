"""tfds builders (array_record files, no TensorFlow) for prompts and preference pairs.

    builder = build("prompts", "prompts.jsonl", data_dir="/tmp/tfds")     # validates, writes array_record
    source = builder.as_data_source(split="train")                         # random access, no TF
    # later / elsewhere: tfds.builder_from_directory(builder.data_dir) or load_source(builder.data_dir)

Each prepared dataset is a builder config named after the file stem and the sha256 of its bytes (plus the
skip flag), so two different JSONL files never share a directory and an unchanged file is not re-read.
Skipped-record counts are stored in the dataset metadata (``builder.info.metadata["skipped"]``).
tfds's console lines for remote downloads ("Downloading and preparing dataset Unknown size", "Using custom
data configuration", progress bars) are not printed for these local files.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import warnings

import numpy as np
import tensorflow_datasets as tfds

from wind_jax.data.jsonl import SkipCounter, check_jsonl, read_records

_VERSION = tfds.core.Version("1.0.0")


def _config_name(path: str, skip_invalid: bool, max_prompt_chars: int | None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(f"|skip={skip_invalid}|max_chars={max_prompt_chars}".encode())
    stem = "".join(c if c.isalnum() else "_" for c in os.path.splitext(os.path.basename(path))[0])[:40]
    return f"{stem or 'data'}_{digest.hexdigest()[:16]}"


class _JsonlBuilder(tfds.core.GeneratorBasedBuilder):
    """Shared logic: one "train" split generated from a validated JSONL file."""

    VERSION = _VERSION
    _KIND = ""

    def __init__(self, *, jsonl_path: str, skip_invalid: bool = False, max_prompt_chars: int | None = None,
                 **kwargs):
        if not os.path.isfile(jsonl_path):
            raise ValueError(f"jsonl_path: no such file {jsonl_path!r}")
        self._jsonl_path = os.fspath(jsonl_path)
        self._skip_invalid = skip_invalid
        self._max_prompt_chars = max_prompt_chars
        config = tfds.core.BuilderConfig(
            name=_config_name(self._jsonl_path, skip_invalid, max_prompt_chars),
            description=f"{self._KIND} from {self._jsonl_path}")
        kwargs.setdefault("file_format", "array_record")
        with _quiet_tfds():
            super().__init__(config=config, **kwargs)

    def _log_download_bytes(self) -> None:  # tfds prints "Downloading and preparing dataset Unknown size"
        pass

    def _log_download_done(self) -> None:  # and "Dataset ... downloaded and prepared to ..."
        pass

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
        for record in read_records(self._jsonl_path, self._KIND, skip_invalid=self._skip_invalid,
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


class _DropCustomConfigLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Using custom data configuration")


@contextlib.contextmanager
def _quiet_tfds():
    """Silence tfds's custom-config warning and progress bars (local JSONL files, nothing downloads)."""
    from tensorflow_datasets.core.utils import tqdm_utils

    absl_logger, drop = logging.getLogger("absl"), _DropCustomConfigLine()
    active = tqdm_utils._active
    absl_logger.addFilter(drop)
    tqdm_utils.display_progress_bar(False)
    try:
        yield
    finally:
        tqdm_utils.display_progress_bar(active)
        absl_logger.removeFilter(drop)


def _prepared(builder) -> bool:
    """Whether the builder's version directory holds a finished dataset (tfds's own is_prepared logs a
    warning for a directory that does not exist yet)."""
    return os.path.isfile(os.path.join(builder.data_dir, "dataset_info.json"))


def build(kind: str, jsonl_path: str, data_dir: str, *, skip_invalid: bool = False,
          max_prompt_chars: int | None = None, skip_malformed: bool | None = None):
    """Validate ``jsonl_path`` and write it as an array_record tfds dataset under ``data_dir``; return the builder.

    The whole file is checked first (``check_jsonl``): a missing or empty file, or one without a usable
    record, raises ValueError naming it; an invalid line (bad JSON, non-UTF-8 bytes, missing fields) raises
    ValueError naming file:line, or with ``skip_invalid`` is skipped and "file: N of M lines skipped: reasons"
    is printed. The dataset is generated in a temporary directory and renamed into place, so a failure
    leaves nothing half-written. ``skip_malformed`` is the former name of ``skip_invalid`` (deprecated).
    """
    if kind not in BUILDERS:
        raise ValueError(f"kind must be one of {sorted(BUILDERS)}, got {kind!r}")
    if skip_malformed is not None:
        warnings.warn("build(skip_malformed=...) is deprecated; use skip_invalid=...", DeprecationWarning,
                      stacklevel=2)
        skip_invalid = skip_invalid or skip_malformed
    report = check_jsonl(jsonl_path, kind, skip_invalid=skip_invalid, max_prompt_chars=max_prompt_chars)
    if report.skips.total:
        print(report.summary(), flush=True)
    kwargs = dict(jsonl_path=jsonl_path, skip_invalid=skip_invalid, max_prompt_chars=max_prompt_chars)
    builder = BUILDERS[kind](**kwargs, data_dir=data_dir)
    if _prepared(builder):
        return builder
    os.makedirs(data_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".incomplete_build_", dir=data_dir)
    try:
        staged = BUILDERS[kind](**kwargs, data_dir=staging)
        with _quiet_tfds():
            staged.download_and_prepare()
        os.makedirs(os.path.dirname(builder.data_dir), exist_ok=True)
        try:
            os.rename(staged.data_dir, builder.data_dir)
        except OSError:
            if not _prepared(builder):  # else: a concurrent build of the same file won
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BUILDERS[kind](**kwargs, data_dir=data_dir)  # re-opened: reads the info and metadata written


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

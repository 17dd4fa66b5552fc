"""Tokenize, shuffle (by seed and epoch), and pad records from a data source into fixed-bucket numpy batches.

Works on any random-access source (``len`` and ``__getitem__`` returning the builders' feature dicts), so
it needs neither TensorFlow nor tfds at run time. Over-long examples raise ValueError naming file:line, or
with ``on_overlong="skip"`` are counted in ``loader.skips`` and the count is printed (before the next batch
and at the end of the pass: "N of M examples skipped: ..."); nothing is ever truncated. An epoch that keeps no example at all raises
ValueError instead of ending empty.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from wind_jax.data.jsonl import MalformedRecord, SkipCounter


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _encoder(tokenizer) -> Callable[[str], list[int]]:
    if callable(tokenizer) and not hasattr(tokenizer, "encode"):
        return tokenizer
    if hasattr(tokenizer, "encode"):
        def encode(text):
            out = tokenizer.encode(text)
            return list(getattr(out, "ids", out))
        return encode
    raise ValueError("tokenizer must be a callable str -> list[int] or have .encode(str)")


def shuffled_indices(n: int, seed: int, epoch: int) -> np.ndarray:
    """Deterministic permutation of range(n) for (seed, epoch): the same on every run and every host."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= length (buckets sorted ascending)."""
    for b in buckets:
        if length <= b:
            return b
    raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")


class _Loader:
    def __init__(self, source, tokenizer, *, batch_size: int, buckets: Sequence[int], seed: int = 0,
                 pad_id: int = 0, on_overlong: str = "raise", drop_remainder: bool = True,
                 chat_template: Callable[[list], str | list[int]] | None = None, source_name: str = "<source>"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        buckets = tuple(sorted(int(b) for b in buckets))
        if not buckets or buckets[0] < 1:
            raise ValueError(f"buckets must be positive lengths, got {buckets}")
        if on_overlong not in ("raise", "skip"):
            raise ValueError(f'on_overlong must be "raise" or "skip", got {on_overlong!r}')
        self.source, self.encode = source, _encoder(tokenizer)
        self.batch_size, self.buckets, self.seed, self.pad_id = batch_size, buckets, seed, pad_id
        self.on_overlong, self.drop_remainder = on_overlong, drop_remainder
        self.chat_template, self.source_name = chat_template, source_name
        self.skips = SkipCounter()

    def __len__(self) -> int:
        return len(self.source)

    def _prompt_ids(self, record) -> list[int]:
        """Token ids of the prompt. With ``chat_template`` (messages -> text or token ids) a plain
        {"prompt": p} record is the one-turn conversation [{"role": "user", "content": p}]."""
        if self.chat_template is None:
            return self.encode(_text(record["prompt"]))
        messages = _text(record["messages"])
        conversation = (json.loads(messages) if messages else
                        [{"role": "user", "content": _text(record["prompt"])}])
        out = self.chat_template(conversation)
        return self.encode(out) if isinstance(out, str) else [int(t) for t in out]

    def _overlong(self, record, n: int, what: str) -> None:
        err = MalformedRecord(self.source_name, int(record["line"]),
                              f"{what} has {n} tokens > largest bucket {self.buckets[-1]}", "overlong")
        if self.on_overlong == "raise":
            raise err
        self.skips.add(err)

    def epoch(self, epoch: int) -> Iterator[dict]:
        """Batches of one epoch, shuffled by (seed, epoch). Skipped over-long examples are reported before
        each batch that follows new skips ("k of n examples read so far skipped") and at the end of the pass
        ("k of n examples skipped"); a pass that keeps nothing raises ValueError."""
        chunk, seen, skipped, reported, kept = [], 0, 0, 0, 0

        def report(final: bool) -> None:
            nonlocal reported
            if skipped > reported or (final and skipped):
                so_far = "" if final else "read so far "
                print(f"{self.source_name}: {skipped} of {seen} examples {so_far}skipped: longer than the "
                      f"largest bucket {self.buckets[-1]} tokens", flush=True)
                reported = skipped

        for i in shuffled_indices(len(self.source), self.seed, epoch):
            record = self.source[int(i)]
            seen += 1
            self.skips.seen += 1
            example = self._encode(record)
            if example is None:
                skipped += 1
                continue
            kept += 1
            chunk.append((int(i), record, example))
            if len(chunk) == self.batch_size:
                report(final=False)
                yield self._collate(chunk)
                chunk = []
        if kept == 0:
            raise ValueError(f"{self.source_name}: no usable example in {len(self.source)} records "
                             f"({skipped} longer than the largest bucket {self.buckets[-1]} tokens)")
        report(final=True)
        if chunk and not self.drop_remainder:
            yield self._collate(chunk)


class PromptLoader(_Loader):
    """Batches {"tokens" int32 [B, L], "attention_mask" bool [B, L], "lengths" int32 [B], "line", "index"}.

    Prompts are LEFT-padded (``padding_side``="left", default, ready for generation) or right-padded, to the
    smallest bucket holding the longest prompt of the batch.
    """

    def __init__(self, source, tokenizer, *, padding_side: str = "left", **kwargs):
        super().__init__(source, tokenizer, **kwargs)
        if padding_side not in ("left", "right"):
            raise ValueError(f'padding_side must be "left" or "right", got {padding_side!r}')
        self.padding_side = padding_side

    def _encode(self, record):
        ids = self._prompt_ids(record)
        if len(ids) == 0:
            raise MalformedRecord(self.source_name, int(record["line"]), "prompt tokenizes to 0 tokens",
                                  "empty_prompt")
        if len(ids) > self.buckets[-1]:
            return self._overlong(record, len(ids), "prompt")
        return ids

    def _collate(self, chunk) -> dict:
        length = bucket_length(max(len(ids) for _, _, ids in chunk), self.buckets)
        tokens = np.full((len(chunk), length), self.pad_id, np.int32)
        mask = np.zeros((len(chunk), length), bool)
        for row, (_, _, ids) in enumerate(chunk):
            sl = slice(length - len(ids), length) if self.padding_side == "left" else slice(0, len(ids))
            tokens[row, sl], mask[row, sl] = ids, True
        return {"tokens": tokens, "attention_mask": mask,
                "lengths": np.array([len(ids) for _, _, ids in chunk], np.int32),
                "line": np.array([int(r["line"]) for _, r, _ in chunk], np.int64),
                "index": np.array([i for i, _, _ in chunk], np.int64)}


class PreferenceLoader(_Loader):
    """Batches in the train-step layout: {"tokens": {"chosen", "rejected"}: [B, T], "response_mask": {...},
    "attention_mask": {...}, "weight": [B], "score_margin": [B], "line", "index"}.

    Each sequence is prompt + response (+ ``eos_id``), right-padded to a shared bucket; ``response_mask``
    marks the response tokens. For {"responses", "scores"} records, chosen = highest and rejected = lowest
    score (the best/worst pair, as SPPO and BoNBoN use).
    """

    def __init__(self, source, tokenizer, *, eos_id: int | None = None, **kwargs):
        super().__init__(source, tokenizer, **kwargs)
        self.eos_id = eos_id

    def _encode(self, record):
        prompt = self._prompt_ids(record)
        responses = [_text(r) for r in record["responses"]]
        scores = np.asarray(record["scores"], np.float32)
        best, worst = int(np.argmax(scores)), int(np.argmin(scores))
        seqs = {}
        for name, idx in (("chosen", best), ("rejected", worst)):
            resp = self.encode(responses[idx]) + ([] if self.eos_id is None else [self.eos_id])
            if len(resp) == 0:
                raise MalformedRecord(self.source_name, int(record["line"]), f"{name} response tokenizes to 0 "
                                      "tokens", "empty_response")
            if len(prompt) + len(resp) > self.buckets[-1]:
                return self._overlong(record, len(prompt) + len(resp), f"prompt + {name} response")
            seqs[name] = (prompt, resp)
        return seqs, float(scores[best] - scores[worst])

    def _collate(self, chunk) -> dict:
        length = bucket_length(max(len(p) + len(r) for _, _, (s, _) in chunk for p, r in s.values()),
                               self.buckets)
        out = {"tokens": {}, "response_mask": {}, "attention_mask": {}}
        for name in ("chosen", "rejected"):
            tokens = np.full((len(chunk), length), self.pad_id, np.int32)
            resp_mask = np.zeros((len(chunk), length), bool)
            attn = np.zeros((len(chunk), length), bool)
            for row, (_, _, (seqs, _)) in enumerate(chunk):
                prompt, resp = seqs[name]
                n = len(prompt) + len(resp)
                tokens[row, :n] = prompt + resp
                attn[row, :n] = True
                resp_mask[row, len(prompt):n] = True
            out["tokens"][name], out["response_mask"][name], out["attention_mask"][name] = tokens, resp_mask, attn
        out["weight"] = np.ones(len(chunk), np.float32)
        out["score_margin"] = np.array([m for _, _, (_, m) in chunk], np.float32)
        out["line"] = np.array([int(r["line"]) for _, r, _ in chunk], np.int64)
        out["index"] = np.array([i for i, _, _ in chunk], np.int64)
        return out

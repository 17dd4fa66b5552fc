"""Validated reading of prompt / preference JSONL files (pure Python, no tfds).

Every problem is reported as ``MalformedRecord`` naming ``file:line``; callers either raise it or count it
(``skip_invalid``). ``check_jsonl`` validates a whole file up front (cheap: no model, no tfds), so a run
can refuse a missing, empty or invalid prompts file before it loads anything.
"""
from __future__ import annotations

import collections
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field


class MalformedRecord(ValueError):
    """A JSONL line that cannot be used; the message starts with ``file:line:``."""

    def __init__(self, path: str, line: int, reason: str, kind: str):
        super().__init__(f"{path}:{line}: {reason}")
        self.path, self.line, self.reason, self.kind = path, line, reason, kind


@dataclass
class SkipCounter:
    """Counts skipped records by kind and keeps the first messages (for logs and dataset metadata)."""

    counts: collections.Counter = field(default_factory=collections.Counter)
    messages: list = field(default_factory=list)
    max_messages: int = 50
    seen: int = 0  # records (non-blank lines, or examples) looked at, skipped or not

    def add(self, err: MalformedRecord) -> None:
        self.counts[err.kind] += 1
        if len(self.messages) < self.max_messages:
            self.messages.append(str(err))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        return {"total": self.total, "seen": self.seen, "by_kind": dict(self.counts),
                "first_messages": list(self.messages)}

    def summary(self, what: str = "lines") -> str:
        """'N of M {what} skipped: kind count, ... (first: file:line: reason)'."""
        reasons = ", ".join(f"{kind} {n}" for kind, n in sorted(self.counts.items()))
        first = f" (first: {self.messages[0]})" if self.messages else ""
        return f"{self.total} of {self.seen} {what} skipped: {reasons}{first}"


def _prompt_fields(obj: dict, path: str, line: int) -> tuple[str, str]:
    """(prompt text, messages JSON or '') from {"prompt": str} or {"messages": [{"role", "content"}, ...]}."""
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise MalformedRecord(path, line, 'field "messages" must be a non-empty list', "bad_messages")
        for i, m in enumerate(msgs):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise MalformedRecord(
                    path, line, f'field "messages"[{i}] must be {{"role": str, "content": str}}', "bad_messages")
        if not any(m["content"].strip() for m in msgs):
            raise MalformedRecord(path, line, 'field "messages" has only empty contents', "empty_prompt")
        clean = [{"role": m["role"], "content": m["content"]} for m in msgs]
        return render_chat(clean), json.dumps(clean, ensure_ascii=False)
    if "prompt" not in obj:
        raise MalformedRecord(path, line, 'missing field "prompt" (or "messages")', "missing_field")
    prompt = obj["prompt"]
    if not isinstance(prompt, str):
        raise MalformedRecord(path, line, f'field "prompt" must be a string, got {type(prompt).__name__}',
                              "bad_type")
    if not prompt.strip():
        raise MalformedRecord(path, line, 'field "prompt" is empty', "empty_prompt")
    return prompt, ""


def render_chat(messages: list[dict]) -> str:
    """Plain-text chat rendering used when no tokenizer chat template is given (one turn per block)."""
    return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"


def _response_fields(obj: dict, path: str, line: int) -> tuple[list[str], list[float]]:
    """(responses, scores) from {"chosen", "rejected"} (scores 1, 0) or {"responses", "scores"}."""
    if "chosen" in obj or "rejected" in obj:
        responses = []
        for key in ("chosen", "rejected"):
            value = obj.get(key)
            if not isinstance(value, str):
                raise MalformedRecord(path, line, f'field "{key}" must be a string', "missing_field")
            if not value.strip():
                raise MalformedRecord(path, line, f'field "{key}" is empty', "empty_response")
            responses.append(value)
        return responses, [1.0, 0.0]
    if "responses" not in obj or "scores" not in obj:
        raise MalformedRecord(
            path, line, 'needs "chosen" and "rejected", or "responses" and "scores"', "missing_field")
    responses, scores = obj["responses"], obj["scores"]
    if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
        raise MalformedRecord(path, line, 'field "responses" must be a list of >= 2 strings', "bad_type")
    if any(not r.strip() for r in responses):
        raise MalformedRecord(path, line, 'field "responses" contains an empty response', "empty_response")
    if not isinstance(scores, list) or len(scores) != len(responses):
        raise MalformedRecord(path, line, 'field "scores" must be a list as long as "responses"', "bad_type")
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores):
        raise MalformedRecord(path, line, 'field "scores" must hold finite numbers', "bad_score")
    if max(scores) == min(scores):
        raise MalformedRecord(path, line, 'field "scores": all scores are equal, no preference', "tied_scores")
    return responses, [float(s) for s in scores]


def _objects(path: str) -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON or MalformedRecord) per non-blank line; each line is decoded as UTF-8 on
    its own, so one bad byte names its line and does not stop the file."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield line_no, MalformedRecord(
                    path, line_no, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte column {e.start + 1})",
                    "bad_utf8")
                continue
            if line_no == 1:
                text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark
            if not text.strip():
                continue
            try:
                yield line_no, json.loads(text)
            except json.JSONDecodeError as e:
                yield line_no, MalformedRecord(path, line_no, f"invalid JSON ({e.msg} at column {e.colno})",
                                               "bad_json")


KINDS = ("prompts", "preference_pairs")


def read_records(path: str, kind: str, *, skip_invalid: bool = False, skips: SkipCounter | None = None,
                 max_prompt_chars: int | None = None) -> Iterator[dict]:
    """Yield validated records of ``kind`` "prompts" or "preference_pairs" with their 1-based ``line``.

    Invalid lines raise ``MalformedRecord`` (file:line), or with ``skip_invalid`` are counted in ``skips``
    (``skips.seen`` counts every non-blank line).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    for line_no, obj in _objects(path):
        if skips is not None:
            skips.seen += 1
        try:
            if isinstance(obj, MalformedRecord):
                raise obj
            if not isinstance(obj, dict):
                raise MalformedRecord(path, line_no, "a line must be a JSON object", "bad_type")
            prompt, messages = _prompt_fields(obj, path, line_no)
            if max_prompt_chars is not None and len(prompt) > max_prompt_chars:
                raise MalformedRecord(
                    path, line_no, f"prompt has {len(prompt)} characters > max_prompt_chars={max_prompt_chars}",
                    "overlong_prompt")
            record = {"prompt": prompt, "messages": messages, "line": line_no}
            if kind == "preference_pairs":
                record["responses"], record["scores"] = _response_fields(obj, path, line_no)
        except MalformedRecord as err:
            if not skip_invalid:
                raise
            if skips is not None:
                skips.add(err)
            continue
        yield record


@dataclass(frozen=True)
class JsonlReport:
    """What ``check_jsonl`` found: ``records`` usable records out of ``lines`` non-blank lines."""

    path: str
    kind: str
    records: int
    lines: int
    skips: SkipCounter

    def summary(self) -> str:
        return f"{self.path}: {self.skips.summary()}"


def check_jsonl(path: str, kind: str = "prompts", *, skip_invalid: bool = False,
                max_prompt_chars: int | None = None) -> JsonlReport:
    """Validate every line of a prompts / preference JSONL file before anything expensive runs.

    Raises ValueError naming the file for a missing path, an empty file or a file without one usable
    record, and (unless ``skip_invalid``) ``MalformedRecord`` naming file:line for the first invalid line.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{kind} file not found: {path}")
    if not os.path.isfile(path):
        raise ValueError(f"{kind} file {path} is not a regular file")
    skips = SkipCounter()
    records = sum(1 for _ in read_records(path, kind, skip_invalid=skip_invalid, skips=skips,
                                          max_prompt_chars=max_prompt_chars))
    if records == 0:
        if skips.seen == 0:
            raise ValueError(f"{path}: the {kind} file is empty (no non-blank line)")
        raise ValueError(f"{path}: no usable record, every line is invalid; {skips.summary()}")
    return JsonlReport(path, kind, records, skips.seen, skips)

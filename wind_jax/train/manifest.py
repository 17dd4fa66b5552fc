"""Checkpoint manifests: what a complete checkpoint held when it was written, so that a file deleted,
truncated or altered later is named before any restore is attempted.

A manifest is `wind_manifest.json` inside a checkpoint's step directory: every file's size, and a CRC-32 of
every file up to `checksum_limit` bytes (bigger files are checked by size only, so that verifying a large
model's checkpoint costs a directory listing, not a full read). wind_jax.train.checkpoint writes it from
Orbax's post-finalization callback, i.e. into the temporary directory just before the rename that commits
the checkpoint, so a committed checkpoint always carries its manifest. The step-level
`_CHECKPOINT_METADATA` is left out: Orbax rewrites it (commit timestamp) after the callback.
"""
from __future__ import annotations

import datetime
import json
import zlib

from etils import epath

MANIFEST_NAME = "wind_manifest.json"
CHECKSUM_LIMIT = 64 * 2**20  # bytes; files above it are checked by size only
_UNLISTED = {MANIFEST_NAME, MANIFEST_NAME + ".tmp", "_CHECKPOINT_METADATA"}  # top-level names not recorded
_CHUNK = 4 * 2**20


def _files(step_dir: epath.Path) -> dict[str, epath.Path]:
    """{relative path: path} of every file under step_dir (recursively)."""
    out, stack = {}, [(step_dir, "")]
    while stack:
        folder, rel = stack.pop()
        for p in folder.iterdir():
            name = f"{rel}{p.name}"
            if p.is_dir():
                stack.append((p, name + "/"))
            elif not (rel == "" and p.name in _UNLISTED):
                out[name] = p
    return out


def _crc32(path: epath.Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _size(path: epath.Path) -> int:
    return int(path.stat().length)


def write_manifest(step_dir, step: int, checksum_limit: int = CHECKSUM_LIMIT) -> dict:
    """Record every file of `step_dir` (sizes; CRC-32 up to checksum_limit bytes) in its manifest."""
    step_dir = epath.Path(step_dir)
    files = {}
    for rel, p in sorted(_files(step_dir).items()):
        size = _size(p)
        files[rel] = {"size": size, **({"crc32": _crc32(p)} if size <= checksum_limit else {})}
    manifest = {"format": 1, "step": int(step), "files": files}
    tmp = step_dir / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.rename(step_dir / MANIFEST_NAME)
    return manifest


def check_manifest(step_dir) -> list[str] | None:
    """Problems found in `step_dir` against its manifest ([] = intact), or None when it has no manifest
    (a checkpoint written before manifests existed: it can only be checked by restoring it)."""
    step_dir = epath.Path(step_dir)
    path = step_dir / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        return [f"{MANIFEST_NAME} is unreadable ({type(e).__name__}: {e})"]
    problems = []
    for rel, rec in files.items():
        p = step_dir / rel
        if not p.exists():
            problems.append(f"{rel} is missing")
            continue
        size = _size(p)
        if size != rec["size"]:
            problems.append(f"{rel} has {size} bytes, {rec['size']} when written (truncated or overwritten)")
        elif "crc32" in rec and _crc32(p) != rec["crc32"]:
            problems.append(f"{rel} has the written size but a different CRC-32 (altered)")
    return problems


def move_aside(step_dir) -> epath.Path:
    """Rename a corrupt checkpoint to <step>.corrupt-<UTC time> (a name Orbax does not list as a step, kept
    for inspection) and return the new path."""
    step_dir = epath.Path(step_dir)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = step_dir.parent / f"{step_dir.name}.corrupt-{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = step_dir.parent / f"{step_dir.name}.corrupt-{stamp}-{n}"
    step_dir.rename(target)
    return target

"""Telling checkpoint storage failures apart, for wind_jax.train.checkpoint: the OS error behind a failed
write, a read failure (missing, truncated, undecodable files) as opposed to a restore target that does not fit,
and quieting the duplicate reports Orbax and TensorStore print from their threads while the Checkpointer
raises one clear error.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys

log = logging.getLogger("wind_jax.train.checkpoint")

_OS_ERROR_TEXT = re.compile(r"No space left on device|Permission denied|Read-only file system|Disk quota exceeded|"
                            r"Input/output error|Too many open files|File too large")
_READ_ERROR_TEXT = re.compile(r"NOT_FOUND|OUT_OF_RANGE|DATA_LOSS|Error reading|Error decoding|does not exist|"
                              r"not found|Unterminated string|Expecting value")


def chain(e: BaseException | None):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def first_line(e: BaseException, limit: int = 300) -> str:
    """"ValueError: NOT_FOUND: Error reading ..." (first line, TensorStore's spec dump cut off)."""
    lines = str(e).strip().split(" [tensorstore_spec=")[0].splitlines()
    return f"{type(e).__name__}: {lines[0][:limit] if lines else ''}"


def os_error_text(e: BaseException) -> str:
    """The OS error behind a failed write ("[Errno 28] No space left on device"), else its first line."""
    for c in chain(e):
        if isinstance(c, OSError) and c.strerror:
            return f"[Errno {c.errno}] {c.strerror}"
    for c in chain(e):
        if m := _OS_ERROR_TEXT.search(str(c)):
            return m.group(0)
    return first_line(e)


def is_read_error(e: BaseException) -> bool:
    """A failure to read a checkpoint's files (missing, truncated, undecodable), as opposed to a restore
    target that does not fit (which must not condemn the checkpoint)."""
    for c in chain(e):
        if isinstance(c, (FileNotFoundError, json.JSONDecodeError)):
            return True
        if isinstance(c, (ValueError, RuntimeError, OSError)) and _READ_ERROR_TEXT.search(str(c)):
            return True
    return False


_WRITE_FAILURE_TEXT = re.compile(_OS_ERROR_TEXT.pattern + r"|RESOURCE_EXHAUSTED|Failed writing|Error writing")


class _QuietWriteFailures(logging.Filter):
    """Drops Orbax's own error logs of a failed write (tracebacks from its save threads, hundreds of lines):
    the Checkpointer reports that failure once, as a CheckpointWriteError holding the original error. Dropped
    records go to this module's logger at DEBUG level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or f"{os.sep}orbax{os.sep}" not in (record.pathname or ""):
            return True
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += " " + " ".join(str(c) for c in chain(record.exc_info[1]))
        if not _WRITE_FAILURE_TEXT.search(text):
            return True
        log.debug("orbax (write failure, reported by CheckpointWriteError): %s", record.getMessage())
        return False


QUIET_WRITE_FAILURES = _QuietWriteFailures()


def quiet_late_callbacks() -> None:
    """After a failed read or write TensorStore may complete the item's other operations once Orbax's asyncio
    loop is closed; their callbacks then print "RuntimeError: Event loop is closed" through
    sys.unraisablehook, a traceback with no bearing on the run. Drop exactly those (logged at DEBUG level);
    everything else passes through."""
    previous = sys.unraisablehook
    if getattr(previous, "_wind_jax_quiet", False):
        return

    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
            log.debug("dropped a late TensorStore callback after a failed checkpoint read: Event loop is closed")
            return
        previous(unraisable)

    hook._wind_jax_quiet = True
    sys.unraisablehook = hook

"""One run per output folder: an exclusive lock on <out_dir>/.run.lock.

    with RunLock(out_dir):      # RunLockedError naming the holder (pid, host, start time) if in use
        loop.run()

The lock is an advisory `flock` on the file, held for the run's lifetime, plus a JSON record of the holder
(pid, host, start time, command). The kernel drops the flock when the holder dies, however it dies (SIGKILL
included), so a record whose flock is free was left by a process that no longer runs: it is taken over with
a warning naming that process. On filesystems without flock (some FUSE mounts) the record alone decides: a
holder on this host whose pid is gone is stale; a holder on another host is respected. Released on normal
exit and on exceptions (context manager; an atexit hook covers a forgotten release).

Multi-host runs: only process 0 takes the lock (the caller decides, e.g. `if jax.process_index() == 0`);
the other processes share the folder with it by design.
"""
from __future__ import annotations

import atexit
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys

log = logging.getLogger(__name__)
LOCK_NAME = ".run.lock"


class RunLockedError(RuntimeError):
    """The output folder is in use by another live run."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')} ({holder.get('command', '?')})")


class RunLock:
    """Exclusive lock of `out_dir` for one run; see the module docstring."""

    def __init__(self, out_dir: str, name: str = LOCK_NAME):
        self.out_dir = os.path.abspath(out_dir)
        self.path = os.path.join(self.out_dir, name)
        self._fd: int | None = None
        self.took_over: dict | None = None   # the stale holder's record, when one was taken over

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self.held:
            return self
        os.makedirs(self.out_dir, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                locked = self._flock(fd)
                if locked and os.fstat(fd).st_ino != _inode(self.path):
                    os.close(fd)   # the holder released (unlinked) it between our open and flock: retry
                    continue
                holder = _read(fd)
                if locked is False:
                    raise RunLockedError(f"{self.out_dir} is in use by another run: {_describe(holder)}. "
                                         "Wait for it to end, stop it, or choose another out_dir.")
                if locked is None and holder and not self._stale_without_flock(holder):
                    raise RunLockedError(f"{self.out_dir} is in use by another run: {_describe(holder)} "
                                         f"(no flock on this filesystem; delete {self.path} if that run is gone)")
                if holder:
                    self.took_over = holder
                    log.warning("%s: taking over the stale lock of %s, which no longer runs",
                                self.out_dir, _describe(holder))
                _write(fd, {"pid": os.getpid(), "host": socket.gethostname(),
                            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                            "command": " ".join(sys.argv)[:200]})
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            atexit.register(self.release)
            return self

    @staticmethod
    def _flock(fd: int) -> bool | None:
        """True: locked; False: held by another process; None: this filesystem has no flock."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return None
            raise

    @staticmethod
    def _stale_without_flock(holder: dict) -> bool:
        return (holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int)
                and not _pid_alive(holder["pid"]))

    def release(self) -> None:
        """Remove the record and drop the lock (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        atexit.unregister(self.release)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)   # closing drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    if not data.strip():
        return {}
    try:
        record = json.loads(data)
        return record if isinstance(record, dict) else {"record": repr(record)}
    except ValueError:
        return {"record": data[:200].decode(errors="replace")}


def _write(fd: int, record: dict) -> None:
    data = json.dumps(record).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)

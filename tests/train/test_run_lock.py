"""wind_jax.train.run_lock with real processes: a second run meets an error naming the holder, a lock left by
a SIGKILLed run is taken over (said so), release on normal exit and on exceptions, one winner among
concurrent starters, and the record-only mode for filesystems without flock."""
import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from wind_jax.train import run_lock
from wind_jax.train.run_lock import RunLock, RunLockedError

# Holder processes load the module from its file: no package import, so they start in milliseconds.
_HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("run_lock", sys.argv[1])
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
out, mode = sys.argv[2], sys.argv[3]
if mode == "raise":
    with m.RunLock(out):
        print("locked", flush=True)
        raise RuntimeError("a failing run")
try:
    lock = m.RunLock(out).acquire()
except m.RunLockedError:
    print("lost", flush=True)
    sys.exit(0)
print("locked" if mode != "race" else "won", flush=True)
if mode in ("sleep", "race"):
    time.sleep(float(sys.argv[4]))
"""


def _start(out, mode, seconds=60):
    return subprocess.Popen([sys.executable, "-c", _HOLDER, run_lock.__file__, str(out), mode, str(seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_locked(proc):
    line = proc.stdout.readline().strip()
    assert line == "locked", proc.stderr.read()


def test_second_run_is_refused_naming_the_holder_and_a_killed_holder_is_taken_over(tmp_path, caplog):
    holder = _start(tmp_path, "sleep")
    try:
        _wait_locked(holder)
        with pytest.raises(RunLockedError) as err:
            RunLock(tmp_path).acquire()
        msg = str(err.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}, started 20" in msg and str(tmp_path) in msg
        holder.kill()   # SIGKILL: no clean-up, the record stays behind
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert os.path.exists(tmp_path / run_lock.LOCK_NAME)
    with caplog.at_level(logging.WARNING, logger="wind_jax.train.run_lock"):
        with RunLock(tmp_path) as lock:
            assert lock.took_over["pid"] == holder.pid
            record = json.loads((tmp_path / run_lock.LOCK_NAME).read_text())
            assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert f"{tmp_path}: taking over the stale lock of pid {holder.pid} on host" in caplog.text
    assert not os.path.exists(tmp_path / run_lock.LOCK_NAME)


@pytest.mark.parametrize("mode", ["exit", "raise"])
def test_released_on_normal_exit_and_on_exceptions(tmp_path, mode):
    proc = _start(tmp_path, mode)
    _wait_locked(proc)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == (1 if mode == "raise" else 0)
    assert ("a failing run" in err) == (mode == "raise")
    assert not os.path.exists(tmp_path / run_lock.LOCK_NAME)
    with RunLock(tmp_path) as lock:
        assert lock.took_over is None


def test_one_winner_among_concurrent_starters(tmp_path):
    procs = [_start(tmp_path, "race", 3) for _ in range(5)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(outs) == ["lost"] * 4 + ["won"], outs
    assert not os.path.exists(tmp_path / run_lock.LOCK_NAME)


def test_same_process_twice_is_refused(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()


def test_record_only_mode_without_flock(tmp_path, monkeypatch):
    monkeypatch.setattr(RunLock, "_flock", staticmethod(lambda fd: None))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / run_lock.LOCK_NAME
    path.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then"}))
    with RunLock(tmp_path) as lock:
        assert lock.took_over["pid"] == dead.pid
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for host, pid in ((socket.gethostname(), sleeper.pid), ("another-host", dead.pid)):
            path.write_text(json.dumps({"pid": pid, "host": host, "started": "then"}))
            with pytest.raises(RunLockedError, match=f"pid {pid} on host {host}.*delete"):
                RunLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_release_is_idempotent_and_lock_can_be_retaken(tmp_path):
    lock = RunLock(tmp_path / "new" / "dir").acquire()
    assert lock.held
    lock.release()
    lock.release()
    assert not lock.held
    start = time.time()
    with RunLock(tmp_path / "new" / "dir"):
        pass
    assert time.time() - start < 1.0

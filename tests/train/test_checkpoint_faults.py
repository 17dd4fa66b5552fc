"""wind_jax.train.checkpoint under faults, on real Orbax checkpoints: files deleted, truncated or altered in
the latest checkpoint (named, moved aside, the newest intact one restored), none intact (a clear error), a
full disk and a read-only disk during a save (one line naming the directory and the OS error, the previous
checkpoint intact, a quiet exit)."""
import glob
import json
import logging
import os
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from wind_jax.train import manifest as manifest_lib
from wind_jax.train.checkpoint import (CheckpointCorruptError, Checkpointer, CheckpointWriteError)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _state(step):
    return {"w": jnp.full((32, 32), float(step), jnp.float32), "b": jnp.arange(5) + step}


def _write(directory, steps=(1, 2, 3), async_save=True):
    with Checkpointer(directory, max_to_keep=5, async_save=async_save) as ck:
        for s in steps:
            ck.save(s, _state(s), {"iteration": s}, extra={"batch": np.arange(3) + s} if s == 3 else None)


def _one(pattern):
    hits = sorted(glob.glob(pattern))
    assert hits, pattern
    return hits[0]


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _restored_step(directory):
    with Checkpointer(directory, max_to_keep=5) as ck:
        state, meta, _ = ck.restore()
        assert float(state["w"][0, 0]) == meta["iteration"]
        np.testing.assert_array_equal(np.asarray(state["b"]), np.arange(5) + meta["iteration"])
        return meta["iteration"], ck.moved_aside


@pytest.mark.parametrize("async_save", [True, False])
def test_every_committed_checkpoint_carries_a_matching_manifest(tmp_path, async_save):
    _write(tmp_path, async_save=async_save)
    for s in (1, 2, 3):
        manifest = json.loads((tmp_path / str(s) / manifest_lib.MANIFEST_NAME).read_text())
        assert manifest["step"] == s and any(k.startswith("state/") for k in manifest["files"])
        assert any(k.startswith("meta/") for k in manifest["files"])
        assert manifest_lib.check_manifest(tmp_path / str(s)) == []
    assert all("crc32" in rec for rec in manifest["files"].values())


@pytest.mark.parametrize("damage, rel", [
    ("delete", "3/state/d/*"), ("delete", "3/meta/metadata"), ("delete", "3/extra/_METADATA"),
    ("truncate", "3/state/manifest.ocdbt"), ("truncate", "3/state/d/*"), ("truncate", "3/meta/metadata"),
])
def test_damaged_latest_is_named_moved_aside_and_previous_restored(tmp_path, caplog, damage, rel):
    _write(tmp_path)
    path = _one(str(tmp_path / rel))
    os.remove(path) if damage == "delete" else _truncate(path)
    name = os.path.relpath(path, tmp_path / "3")
    with caplog.at_level(logging.WARNING, logger="wind_jax.train.checkpoint"):
        step, moved = _restored_step(tmp_path)
    assert step == 2
    assert len(moved) == 1 and "checkpoint 3" in moved[0] and name in moved[0]
    assert ("missing" if damage == "delete" else "truncated") in moved[0]
    text = caplog.text
    assert "checkpoint 3" in text and name in text and "using checkpoint 2 of" in text
    aside = glob.glob(str(tmp_path / "3.corrupt-*"))
    assert len(aside) == 1 and os.path.exists(os.path.join(aside[0], manifest_lib.MANIFEST_NAME))
    with Checkpointer(tmp_path) as ck:   # the next run sees the intact ones only
        assert ck.all_steps() == [1, 2] and ck.latest_step() == 2


def test_altered_file_of_the_same_size_is_caught_by_its_checksum(tmp_path):
    _write(tmp_path)
    path = _one(str(tmp_path / "3/meta/metadata"))
    data = open(path, "rb").read()
    open(path, "wb").write(data.replace(b"3", b"7"))
    assert os.path.getsize(path) == len(data)
    step, moved = _restored_step(tmp_path)
    assert step == 2 and "CRC-32" in moved[0] and "meta/metadata" in moved[0]


def test_latest_step_and_read_meta_skip_a_corrupt_latest(tmp_path):
    _write(tmp_path)
    os.remove(_one(str(tmp_path / "3/state/d/*")))
    with Checkpointer(tmp_path) as ck:
        assert ck.all_steps() == [1, 2, 3]
        assert ck.latest_step() == 2
        assert ck.read_meta()["iteration"] == 2


def test_without_manifest_a_failed_read_falls_back(tmp_path, caplog):
    """Checkpoints written before manifests existed: the restore failure itself condemns the checkpoint."""
    _write(tmp_path)
    for s in (1, 2, 3):
        os.remove(tmp_path / str(s) / manifest_lib.MANIFEST_NAME)
        assert manifest_lib.check_manifest(tmp_path / str(s)) is None
    _truncate(_one(str(tmp_path / "3/state/manifest.ocdbt")))
    os.remove(_one(str(tmp_path / "2/meta/metadata")))
    with caplog.at_level(logging.WARNING, logger="wind_jax.train.checkpoint"):
        step, moved = _restored_step(tmp_path)
    assert step == 1 and len(moved) == 2
    assert "checkpoint 3" in moved[0] and "reading it failed" in moved[0]
    assert "checkpoint 2" in moved[1] and "not found" in moved[1]
    assert "using checkpoint 1 of" in caplog.text


def test_no_intact_checkpoint_is_a_clear_error(tmp_path):
    _write(tmp_path, steps=(1, 2))
    os.remove(_one(str(tmp_path / "2/state/d/*")))
    _truncate(_one(str(tmp_path / "1/meta/metadata")))
    with Checkpointer(tmp_path) as ck, pytest.raises(CheckpointCorruptError) as err:
        ck.restore()
    msg = str(err.value)
    assert "no intact checkpoint" in msg and "checkpoint 2" in msg and "checkpoint 1" in msg
    assert "state/d/" in msg and "meta/metadata" in msg
    # a later run on the same folder is told again instead of silently starting afresh
    with Checkpointer(tmp_path) as ck, pytest.raises(CheckpointCorruptError, match=r"2\.corrupt-.*afresh"):
        ck.latest_step()


def test_explicit_corrupt_step_is_refused(tmp_path):
    _write(tmp_path)
    os.remove(_one(str(tmp_path / "3/meta/metadata")))
    with Checkpointer(tmp_path) as ck:
        with pytest.raises(CheckpointCorruptError, match=r"checkpoint 3 .*meta/metadata is missing"):
            ck.restore(3)
        assert ck.restore(2)[1]["iteration"] == 2


def test_a_target_that_does_not_fit_does_not_condemn_the_checkpoint(tmp_path):
    _write(tmp_path)
    with Checkpointer(tmp_path) as ck:
        with pytest.raises(Exception) as err:
            ck.restore(target={"w": jnp.zeros((4, 4)), "c": jnp.zeros(2)})
        assert not isinstance(err.value, CheckpointCorruptError)
        assert ck.all_steps() == [1, 2, 3] and not ck.moved_aside
    assert not glob.glob(str(tmp_path / "*.corrupt-*"))


# ------------------------------------------------------------------------------------------- write failures
_SAVER = """
import os, sys, time
import jax.numpy as jnp, numpy as np
from wind_jax.train.checkpoint import Checkpointer, CheckpointWriteError
ck = Checkpointer(sys.argv[1], async_save=sys.argv[2] == "1")
ck.save(1, {"w": jnp.ones((8, 8))}, {"iteration": 1})
ck.wait()
rng = np.random.default_rng(0)   # 40 layers of 37 KiB: 1.5 MiB of incompressible data, many writes in flight
big = {f"layer{i}": {"k": jnp.asarray(rng.standard_normal((96, 96)), jnp.float32),
                     "b": jnp.asarray(rng.standard_normal(96), jnp.float32)} for i in range(40)}
start = time.time()
try:
    ck.save(2, big, {"iteration": 2})
    ck.wait()
except CheckpointWriteError as e:
    print(f"{time.time() - start:.2f}", file=sys.stdout)
    print(e, file=sys.stderr)
    sys.exit(3)
"""


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs mounted inside the test (skipped where mounting is not permitted)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


@pytest.mark.parametrize("async_save", ["1", "0"])
def test_full_disk_is_one_line_previous_checkpoint_intact_quiet_exit(small_fs, async_save):
    directory = small_fs / "ck"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _SAVER, str(directory), async_save], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert float(proc.stdout.strip()) < 10.0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1] == f"cannot write checkpoint 2 to {directory}: No space left on device", proc.stderr[-3000:]
    for noise in ("Traceback", "Exception ignored", "RESOURCE_EXHAUSTED", "ERROR"):
        assert noise not in proc.stderr, proc.stderr[-3000:]
    assert sorted(os.listdir(directory)) == ["1"], "the failed step's partial files are removed"
    with Checkpointer(directory) as ck:
        assert ck.latest_step() == 1 and ck.restore()[1]["iteration"] == 1


def test_read_only_disk_during_save(small_fs):
    directory = small_fs / "ck"
    ck = Checkpointer(directory, async_save=True)
    ck.save(1, _state(1), {"iteration": 1})
    ck.wait()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True, timeout=30)
    try:
        start = time.time()
        with pytest.raises(CheckpointWriteError) as err:
            ck.save(2, _state(2), {"iteration": 2})
            ck.wait()
        assert time.time() - start < 10.0
        assert str(err.value) == f"cannot write checkpoint 2 to {directory}: [Errno 30] Read-only file system"
        assert err.value.original is not None
        with pytest.raises(RuntimeError, match="closed"):
            ck.save(3, _state(3), {"iteration": 3})
        ck.close()  # already closed: a no-op
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True, timeout=30)
    with Checkpointer(directory) as ck2:
        assert ck2.all_steps() == [1] and float(ck2.restore()[0]["w"][0, 0]) == 1.0


def test_unwritable_directory_is_named_at_once(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointWriteError, match=f"checkpoint directory {blocker}/ck is not writable"):
        Checkpointer(blocker / "ck")


# ------------------------------------------------------------------------------------------- two processes
@pytest.mark.slow
@pytest.mark.parametrize("damage", ["delete", "truncate", "none"])
def test_two_processes_agree_on_the_newest_intact_checkpoint(tmp_path, damage):
    """2 jax.distributed processes share one folder: process 0 writes the manifests (covering process 1's
    files), decides that checkpoint 3 is corrupt and moves it aside; both restore checkpoint 2 onto the mesh."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    worker = os.path.join(ROOT, "tests", "train", "checkpoint_worker.py")
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, worker, str(i), "2", str(port), str(tmp_path / "ck"), damage,
                               str(outs[i])], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    results = [json.loads(o.read_text()) for o in outs]
    want = 3 if damage == "none" else 2
    for r in results:
        assert r["step"] == r["n"] == want and r["equal"] and r["sharding_ok"], r
        assert r["steps"] == [1, 2, 3][:want]
    assert len(results[0]["moved"]) == (0 if damage == "none" else 1)
    if damage != "none":
        assert "checkpoint 3" in results[0]["moved"][0]
        assert ("missing" if damage == "delete" else "truncated") in results[0]["moved"][0]
        assert len(glob.glob(str(tmp_path / "ck" / "3.corrupt-*"))) == 1
    files = json.loads((tmp_path / "ck" / "2" / manifest_lib.MANIFEST_NAME).read_text())["files"]
    assert any("process_1" in f for f in files), sorted(files)


def test_late_event_loop_closed_callbacks_are_dropped_others_pass(monkeypatch):
    from types import SimpleNamespace

    from wind_jax.train import storage_errors

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    storage_errors.quiet_late_callbacks()
    storage_errors.quiet_late_callbacks()   # installed once
    late, other = RuntimeError("Event loop is closed"), RuntimeError("something else")
    for exc in (late, other):
        sys.unraisablehook(SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None, err_msg=None,
                                           object=None))
    assert seen == [other]

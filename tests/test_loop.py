"""wind_jax.train.loop: crash safety (SIGKILL at random points, subprocesses), config refusal, methods."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from wind_jax.train.checkpoint import CheckpointConfigError, Checkpointer
from wind_jax.train.metrics import deterministic_view, read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--config.model.hidden_size=16", "--config.model.intermediate_size=32", "--config.model.num_layers=1",
         "--config.model.num_heads=2", "--config.model.num_kv_heads=1", "--config.pretrain.steps=20",
         "--config.head.steps=20", "--config.loop.num_iterations=3", "--config.loop.steps_per_iteration=4",
         "--config.loop.prompts_per_iteration=16", "--config.loop.batch_size=16",
         "--config.loop.eval_prompts=16", "--config.loop.checkpoint_every_steps=2", "--config.plot=False",
         "--config.tensorboard=False"]


def _cmd(out_dir, method="wind_sq_offset"):
    return [sys.executable, "-m", "experiments.llm_alignment", f"--config.out_dir={out_dir}",
            f"--config.method={method}", *SMALL]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _run(out_dir, method="wind_sq_offset"):
    subprocess.run(_cmd(out_dir, method), cwd=ROOT, env=_env(), check=True, capture_output=True, timeout=600)


def _run_and_kill(out_dir, after_step_records, method="wind_sq_offset"):
    """Start the run, SIGKILL it once metrics.jsonl holds `after_step_records` step records."""
    proc = subprocess.Popen(_cmd(out_dir, method), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    path = os.path.join(out_dir, "metrics.jsonl")
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                n = sum('"kind": "step"' in line for line in f)
            if n >= after_step_records:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    proc.wait()
    return proc.returncode


def _final(out_dir):
    with Checkpointer(os.path.join(out_dir, "checkpoints")) as ck:
        state, meta, _ = ck.restore()
    hist = deterministic_view(read_jsonl(os.path.join(out_dir, "metrics.jsonl")))
    return jax.tree.map(np.asarray, state), meta, hist


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("reference"))
    _run(out)
    return _final(out)


def _check_same(reference, out_dir):
    state, meta, hist = _final(out_dir)
    ref_state, ref_meta, ref_hist = reference
    assert meta["iteration"] == ref_meta["iteration"] == 3 and meta["step_in_iteration"] == 0
    assert jax.tree.structure(state) == jax.tree.structure(ref_state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
        np.testing.assert_array_equal(a, b)
    assert hist == ref_hist
    assert deterministic_view(meta["history"]) == ref_hist


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_uninterrupted(reference_run, tmp_path):
    """One trial (3 subprocess runs, ~4 min on a loaded 2-core machine): killed after a random number (3..9) of policy steps, inside an iteration."""
    out = str(tmp_path / "killed")
    rc = _run_and_kill(out, random.Random(0).randint(3, 9))
    assert rc == -signal.SIGKILL
    _run(out)
    _check_same(reference_run, out)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(4))
def test_sigkill_at_random_points_several_trials(reference_run, tmp_path, trial):
    """Several trials, kill points from setup (0 records) to the end; some killed twice."""
    rng = random.Random(100 + trial)
    out = str(tmp_path / f"killed{trial}")
    for _ in range(1 + trial % 2):
        _run_and_kill(out, rng.randint(0, 12))
    _run(out)
    _check_same(reference_run, out)


@pytest.mark.slow
def test_incompatible_config_is_refused_naming_the_field(reference_run, tmp_path):
    out = str(tmp_path / "run")
    _run(out)
    cmd = _cmd(out) + ["--config.loop.beta=0.2"]
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode != 0
    assert "loop.beta" in res.stderr and "0.1" in res.stderr and "0.2" in res.stderr
    # a field that may change on resume: more iterations continue the run
    res = subprocess.run(_cmd(out) + ["--config.loop.num_iterations=4"], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    hist = read_jsonl(os.path.join(out, "metrics.jsonl"))
    assert [r["iteration"] for r in hist if r["kind"] == "iteration"] == [0, 1, 2, 3, 4]


def test_config_error_class_is_value_error():
    assert issubclass(CheckpointConfigError, ValueError)

"""Issue 21, end to end: runs stopped by what TPU VMs do to them resume to the uninterrupted result (slow: real
subprocesses, several full tiny runs each); and an oracle answering strings is refused (fast).

- SIGTERM, one process: `python -m experiments.llm_alignment` (the tiny config of tests/train/test_loop.py) is sent
  SIGTERM after a random number of step records; it exits 0 printing where it stopped, and the same command
  resumes it to the final checkpoint and metrics of the uninterrupted run.
- SIGTERM, two jax.distributed processes (tests/train/multiprocess_loop_worker.py): one process gets the signal at a
  random point; both stop at the same step with one collective save, and resuming both ends with the params,
  win rates and metrics of the uninterrupted 2-process run.
- A dead worker: one of the two processes is SIGKILLed mid-run; the other exits, with an error naming the
  dead task, within the heartbeat bound (WIND_JAX_HEARTBEAT_TIMEOUT=10); resuming both ends identical.
"""
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from wind_jax.train.checkpoint import Checkpointer
from wind_jax.train.metrics import read_jsonl

from test_loop import SMALL, deterministic_view  # noqa: E402  (tests/train is on the path)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOOP_WORKER = os.path.join(ROOT, "tests", "train", "multiprocess_loop_worker.py")
# test_loop.SMALL: 3 iterations x 4 policy steps, a checkpoint every 2 steps

TOTAL_STEPS = 12




def final_state(out_dir):
    """(numpy state, meta, timing-free metrics) of the newest checkpoint in out_dir."""
    with Checkpointer(os.path.join(out_dir, "checkpoints")) as ck:
        state, meta, _ = ck.restore()
    return (jax.tree.map(np.asarray, state), meta,
            deterministic_view(read_jsonl(os.path.join(out_dir, "metrics.jsonl"))))


def meta_and_metrics(out_dir):
    """(meta of the newest checkpoint, timing-free metrics): for a multi-process run's out_dir, whose arrays this
    (one-process) test cannot restore onto its own devices; the params come from the worker's RESULT.npz."""
    with Checkpointer(os.path.join(out_dir, "checkpoints")) as ck:
        meta = ck.read_meta(ck.latest_step())
    return meta, deterministic_view(read_jsonl(os.path.join(out_dir, "metrics.jsonl")))


def assert_identical(got, want):
    state, meta, hist = got
    ref_state, ref_meta, ref_hist = want
    assert (meta["iteration"], meta["step_in_iteration"]) == (ref_meta["iteration"], ref_meta["step_in_iteration"])
    assert meta["counters"] == ref_meta["counters"]
    assert jax.tree.structure(state) == jax.tree.structure(ref_state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert hist == ref_hist


def step_records(out_dir):
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum('"kind": "step"' in line for line in f)


# ------------------------------------------------------------------------------------------- one process
def _cmd(out_dir):
    return [sys.executable, "-m", "experiments.llm_alignment", f"--config.out_dir={out_dir}",
            "--config.method=wind_sq_offset", *SMALL]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def run_single(out_dir):
    res = subprocess.run(_cmd(out_dir), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def run_single_and_sigterm(out_dir, after_step_records):
    """Start the run; SIGTERM it once metrics.jsonl holds `after_step_records` step records (of this or an
    earlier run in out_dir). -> (returncode, stdout, stderr, seconds from the signal to the exit)."""
    before = step_records(out_dir)
    proc = subprocess.Popen(_cmd(out_dir), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    out = {}
    reader = threading.Thread(target=lambda: out.update(zip(("stdout", "stderr"), proc.communicate())),
                              daemon=True)
    reader.start()
    sent, deadline = None, time.time() + 900
    while proc.poll() is None and time.time() < deadline:
        # records of an earlier run count only once this run has logged past them (it rewrites the file)
        if step_records(out_dir) >= max(after_step_records, before + 1):
            proc.send_signal(signal.SIGTERM)
            sent = time.time()
            break
        time.sleep(0.02)
    reader.join(timeout=900)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    return proc.returncode, out.get("stdout", ""), out.get("stderr", ""), (time.time() - sent if sent else None)


@pytest.fixture(scope="module")
def single_reference(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("single_reference"))
    run_single(out)
    return final_state(out)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(4))
def test_sigterm_one_process_then_rerun_matches_uninterrupted(single_reference, tmp_path, trial):
    """SIGTERM after 1..9 step records (trial 2: twice, the second time during the resumed run): exit 0 with
    one stdout line saying where it stopped, a checkpoint there, then the same command finishes the run."""
    rng = random.Random(2100 + trial)
    out = str(tmp_path / "run")
    stops = []
    for _ in range(1 + (trial == 2)):
        k = rng.randint(1 + (stops[-1] if stops else 0), 9)
        rc, stdout, stderr, secs = run_single_and_sigterm(out, k)
        assert rc == 0, stderr[-3000:]
        lines = [ln for ln in stdout.splitlines() if ln.startswith("preemption:")]
        assert len(lines) == 1, (stdout[-2000:], stderr[-2000:])
        line = lines[0]
        assert "SIGTERM received by this process" in line and "run the same command to resume" in line, line
        assert secs is not None and secs < 120, secs
        with Checkpointer(os.path.join(out, "checkpoints")) as ck:
            meta = ck.read_meta(ck.latest_step())
        stopped = meta["counters"]["global_step"]
        assert f"stopping after step {stopped}" in line, (line, meta)
        assert f"iteration {meta['iteration']}, step {meta['step_in_iteration']}" in line, (line, meta)
        assert k <= stopped < TOTAL_STEPS, (k, stopped)
        assert step_records(out) == stopped     # every step up to the stop, none after it
        stops.append(stopped)
        print(f"trial {trial}: SIGTERM after {k} step records -> stopped at global step {stopped} "
              f"(exit 0, {secs:.1f} s after the signal)")
    res = run_single(out)
    assert "resumed at iteration" in res.stdout + res.stderr
    assert_identical(final_state(out), single_reference)


# ------------------------------------------------------------------------------------------- two processes
class LoopWorkers:
    """Two tests/train/multiprocess_loop_worker.py processes on one out_dir; stdout lines collected as they come."""

    def __init__(self, out_dir, result, env_extra=None, n=2):
        with socket.socket() as s:
            s.bind(("localhost", 0))
            port = s.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env.update(env_extra or {})
        self.procs = [subprocess.Popen([sys.executable, LOOP_WORKER, str(i), str(n), str(port), str(out_dir),
                                        str(result)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True) for i in range(n)]
        self.lines = [[] for _ in range(n)]
        self.threads = [threading.Thread(target=self._read, args=(i,), daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def _read(self, i):
        for line in self.procs[i].stdout:
            self.lines[i].append(line.rstrip())

    def steps(self, i):
        return [int(ln.split()[1]) for ln in list(self.lines[i]) if ln.startswith("global_step ")]

    def wait_for_step(self, i, k, timeout=900):
        deadline = time.time() + timeout
        while not any(s >= k for s in self.steps(i)):
            if self.procs[i].poll() is not None or time.time() > deadline:
                return None
            time.sleep(0.02)
        return max(self.steps(i))

    def finish(self, timeout=900):
        try:
            for p in self.procs:
                p.wait(timeout=timeout)
        finally:
            for p in self.procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for t in self.threads:
            t.join(timeout=10)

    def log(self, i):
        return "\n".join(self.lines[i][-40:])


def run_two(out_dir, result, timeout=900):
    w = LoopWorkers(out_dir, result)
    w.finish(timeout)
    for i in range(2):
        assert w.procs[i].returncode == 0, w.log(i)
    return w


LOOP_TOTAL_STEPS = 4     # multiprocess_loop_worker: 2 iterations x 2 steps, a checkpoint after every step


@pytest.fixture(scope="module")
def two_reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("two_reference")
    run_two(str(base / "run"), str(base / "result.npz"))
    return dict(np.load(base / "result.npz")), meta_and_metrics(str(base / "run"))


def _assert_two_identical(out_dir, result, two_reference):
    ref_result, ref_final = two_reference
    got = dict(np.load(result))
    assert got.keys() == ref_result.keys()
    for k in got:
        np.testing.assert_array_equal(got[k], ref_result[k], err_msg=k)
    meta, hist = meta_and_metrics(out_dir)
    ref_meta, ref_hist = ref_final
    assert (meta["iteration"], meta["step_in_iteration"], meta["counters"]) == \
        (ref_meta["iteration"], ref_meta["step_in_iteration"], ref_meta["counters"])
    assert hist == ref_hist


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(5))
def test_sigterm_one_of_two_processes_then_resume_matches_uninterrupted(two_reference, tmp_path, trial):
    """SIGTERM to process `trial % 2` after its 1st..3rd policy step: both print PREEMPTED at the same global
    step and exit 0; the checkpoint there is the newest; both restarted end where the uninterrupted run ends."""
    rng = random.Random(2110 + trial)
    target, k = trial % 2, rng.randint(1, LOOP_TOTAL_STEPS - 1)
    out, result = str(tmp_path / "run"), str(tmp_path / "result.npz")
    w = LoopWorkers(out, result)
    seen = w.wait_for_step(target, k)
    assert seen is not None, w.log(target)
    os.kill(w.procs[target].pid, signal.SIGTERM)
    w.finish()
    for i in range(2):
        assert w.procs[i].returncode == 0, w.log(i)
    stops = []
    for i in range(2):
        pre = [ln for ln in w.lines[i] if ln.startswith("PREEMPTED ")]
        assert len(pre) == 1, w.log(i)
        stops.append(int(pre[0].split()[1]))
        assert max(w.steps(i)) == stops[-1], w.log(i)        # no process stepped past the agreed step
        assert "one of the 2 processes (all agreed on the step)" in pre[0], pre[0]
    assert stops[0] == stops[1] and seen <= stops[0] < LOOP_TOTAL_STEPS + 1, (stops, seen)
    assert not os.path.exists(result)
    with Checkpointer(os.path.join(out, "checkpoints")) as ck:
        meta = ck.read_meta(ck.latest_step())
    assert meta["counters"]["global_step"] == stops[0]
    print(f"trial {trial}: SIGTERM to process {target} after its step {seen} -> both stopped at global step "
          f"{stops[0]}")
    run_two(out, result)
    _assert_two_identical(out, result, two_reference)


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_dead_worker_then_resume_matches_uninterrupted(two_reference, tmp_path, victim):
    """SIGKILL process `victim` after its first policy step: the survivor exits non-zero within the heartbeat
    bound (10 s here, + slack for a loaded machine), its log naming the dead task (task 1 by number; task 0
    as "the leader"); resuming both processes ends identical to the uninterrupted run."""
    out, result = str(tmp_path / "run"), str(tmp_path / "result.npz")
    w = LoopWorkers(out, result, env_extra={"WIND_JAX_HEARTBEAT_TIMEOUT": "10"})
    seen = w.wait_for_step(victim, 1)
    assert seen is not None, w.log(victim)
    os.kill(w.procs[victim].pid, signal.SIGKILL)
    start = time.time()
    survivor = w.procs[1 - victim]
    try:
        survivor.wait(timeout=120)
    finally:
        w.finish(timeout=5)
    elapsed = time.time() - start
    log = "\n".join(w.lines[1 - victim])
    assert survivor.returncode not in (0, None), log[-3000:]
    assert elapsed < 40, (elapsed, log[-3000:])
    assert "another task died" in log, log[-3000:]
    if victim == 1:   # the coordination service (in process 0) names the task whose heartbeats stopped
        assert "The following tasks are unhealthy (stopped sending heartbeats):\n1\n" in log, log[-3000:]
    else:             # the coordination service itself is gone
        assert "the leader task was preempted/died" in log, log[-3000:]
    assert not os.path.exists(result)
    said = [ln for ln in w.lines[1 - victim] if "task died" in ln or "heartbeat" in ln.lower()][:1]
    print(f"victim {victim} killed after its step {seen}: survivor exited after {elapsed:.1f} s with status "
          f"{survivor.returncode}, saying: {said[0][-300:] if said else '?'}")
    run_two(out, result)
    _assert_two_identical(out, result, two_reference)


# ------------------------------------------------------------------------------------------- an oracle's answers
def test_an_oracle_answering_strings_is_refused_naming_it_and_the_iteration(tmp_path):
    """Numeric strings ("0.731") used to be parsed silently by PreferenceOracle.probability's float32
    conversion, so rollout.Collector.judge's non-numeric check never saw them."""
    from flax import nnx

    from wind_jax.models import LlamaConfig, Transformer
    from wind_jax.train import AlignmentLoop, FunctionPrompts, LoopConfig
    from wind_jax.train.oracle import GoldOracle
    from wind_jax.train.synthetic import EOS, PAD, SyntheticLanguage

    lang = SyntheticLanguage(vocab_size=12, prompt_len=3, max_response_len=4)

    class StringOracle(GoldOracle):
        name = "chatty_judge"

        def _prob(self, prompt, a, b):
            return np.array([f"{x:.3f}" for x in np.asarray(super()._prob(prompt, a, b))])

    cfg = LoopConfig(method="wind_sq", num_iterations=1, prompts_per_iteration=8, steps_per_iteration=2,
                     batch_size=8, eval_prompts=8, eval_samples_per_prompt=1, max_new_tokens=lang.response_width,
                     eos_token_id=EOS, pad_token_id=PAD, async_checkpoint=False, learning_rate=1e-2, seed=3)
    model_cfg = LlamaConfig(vocab_size=lang.vocab_size, hidden_size=16, intermediate_size=32, num_layers=1,
                            num_heads=2, num_kv_heads=1, max_position_embeddings=32, tie_word_embeddings=False)
    loop = AlignmentLoop(cfg, policy=Transformer(model_cfg, rngs=nnx.Rngs(0)), oracle=StringOracle(lang.gold_preference),
                         out_dir=str(tmp_path / "run"), prompts=FunctionPrompts(lang.sample_prompts, seed=1),
                         eval_oracle=GoldOracle(lang.gold_preference),
                         eval_prompts=FunctionPrompts(lang.sample_prompts, seed=2), tensorboard=False,
                         progress=False)
    with pytest.raises(ValueError, match="non-numeric") as e:
        loop.run()
    loop.close()
    assert "chatty_judge" in str(e.value) and "iteration 0" in str(e.value), str(e.value)
    with Checkpointer(str(tmp_path / "run" / "checkpoints")) as ck:
        assert ck.latest_step() is None

"""wind_jax.train.loop: crash safety (in-process resume from mid-iteration checkpoints, fast; SIGKILL at random
points in subprocesses, slow), config refusal, Hugging Face export."""
import os
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wind_jax.models import LlamaConfig, Transformer
from wind_jax.train.checkpoint import CheckpointConfigError, Checkpointer
from wind_jax.train import AlignmentLoop, FunctionPrompts, LoopConfig
from wind_jax.train.metrics import read_jsonl
from wind_jax.train.oracle import GoldOracle
from wind_jax.train.synthetic import EOS, PAD, SyntheticLanguage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


def deterministic_view(history):
    """History without timing fields (time/*), for comparing two runs of the same config."""
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in history]


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


# ------------------------------------------------------------------------- in-process crash safety (fast)
_LANG = SyntheticLanguage(vocab_size=12, prompt_len=3, max_response_len=4)
_MODEL_CFG = LlamaConfig(vocab_size=_LANG.vocab_size, hidden_size=16, intermediate_size=32, num_layers=1,
                         num_heads=2, num_kv_heads=1, max_position_embeddings=32, tie_word_embeddings=False)


class _Crash(Exception):
    pass


def _tiny_loop(out_dir, crash_after_steps=None, **overrides):
    """wind_sq_offset (policy + offset head) on the synthetic language, gold oracle, 2 iterations x 4 steps,
    a checkpoint every 2 steps (inside iterations, with the frozen batch). `crash_after_steps`: raise once
    that many step records have been logged in this process (the process 'dies' there)."""
    cfg = LoopConfig(method="wind_sq_offset", num_iterations=2, prompts_per_iteration=8, steps_per_iteration=4,
                     batch_size=8, eval_prompts=8, eval_samples_per_prompt=2, max_new_tokens=_LANG.response_width,
                     eos_token_id=EOS, pad_token_id=PAD, checkpoint_every_steps=2, async_checkpoint=False,
                     learning_rate=1e-2, seed=3, **overrides)
    loop = AlignmentLoop(cfg, policy=Transformer(_MODEL_CFG, rngs=nnx.Rngs(0)),
                         oracle=GoldOracle(_LANG.gold_preference), out_dir=out_dir,
                         prompts=FunctionPrompts(_LANG.sample_prompts, seed=1),
                         eval_oracle=GoldOracle(_LANG.gold_preference),
                         eval_prompts=FunctionPrompts(_LANG.sample_prompts, seed=2),
                         tensorboard=False, progress=False)
    if crash_after_steps is not None:
        log, seen = loop.logger.log, []

        def crashing_log(record, *, kind):
            out = log(record, kind=kind)
            seen.append(kind)
            if seen.count("step") >= crash_after_steps:
                raise _Crash
            return out
        loop.logger.log = crashing_log
    return loop


def _params(loop):
    return [np.asarray(x) for x in jax.tree.leaves(loop.state)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("uninterrupted"))
    loop = _tiny_loop(out)
    result = loop.run()
    loop.close()
    return loop, result, out


def test_resume_after_crashes_mid_iteration_reproduces_uninterrupted_run(uninterrupted, tmp_path):
    """Crash after 3 policy steps (inside iteration 0: resume from its step-2 checkpoint and frozen batch),
    then after 5 more (inside iteration 1, before its step-2 save), plant a half-written later checkpoint, then finish: final params
    and the (timing-free) metric history equal the uninterrupted run's; the half-written one is ignored."""
    ref_loop, ref_result, _ = uninterrupted
    out = str(tmp_path / "crashed")
    for crash_after in (3, 5):
        loop = _tiny_loop(out, crash_after_steps=crash_after)
        with pytest.raises(_Crash):
            loop.run()
        loop.close()
    ckpt_dir = os.path.join(out, "checkpoints")
    with Checkpointer(ckpt_dir) as ck:
        latest = ck.latest_step()
        assert ck.read_meta(latest)["step_in_iteration"] == 2 and ck.read_meta(latest)["iteration"] == 1
    bogus = os.path.join(ckpt_dir, f"{latest + 1}.orbax-checkpoint-tmp-1700000000")
    os.makedirs(os.path.join(bogus, "state"))
    with open(os.path.join(bogus, "state", "garbage"), "wb") as f:
        f.write(os.urandom(64))
    loop = _tiny_loop(out)
    result = loop.run()
    loop.close()
    for a, b in zip(_params(loop), _params(ref_loop), strict=True):
        np.testing.assert_array_equal(a, b)
    assert deterministic_view(result.history) == deterministic_view(ref_result.history)
    assert deterministic_view(read_jsonl(os.path.join(out, "metrics.jsonl"))) == \
        deterministic_view(ref_result.history)
    its = [r for r in result.history if r["kind"] == "iteration"]
    assert [r["counts/queries"] for r in its] == [0, 8, 16]  # one duel per prompt, 8 prompts per iteration
    assert [r["counts/samples"] for r in its] == [0, 16, 32]


def test_evaluations_inside_iterations_change_nothing_else_and_survive_a_crash(uninterrupted, tmp_path):
    """eval_every_steps=1: an "eval" record after steps 1-3 of each 4-step iteration (step 4 is the
    iteration's own evaluation), each with its own draw; the parameters and every other record equal the run
    without them. A crash after 3 steps and a resume (from the step-2 checkpoint) gives the same records."""
    ref_loop, ref_result, _ = uninterrupted
    loop = _tiny_loop(str(tmp_path / "evals"), eval_every_steps=1)
    result = loop.run()
    loop.close()
    for a, b in zip(_params(loop), _params(ref_loop), strict=True):
        np.testing.assert_array_equal(a, b)
    hist = deterministic_view(result.history)
    assert [r for r in hist if r["kind"] != "eval"] == deterministic_view(ref_result.history)
    evals = [r for r in hist if r["kind"] == "eval"]
    assert [(r["iteration"], r["step"], r["global_step"]) for r in evals] == \
        [(0, 1, 1), (0, 2, 2), (0, 3, 3), (1, 1, 5), (1, 2, 6), (1, 3, 7)]
    assert [r["counts/queries"] for r in evals] == [8] * 3 + [16] * 3  # the iteration's duels are spent first
    assert len({r["eval/kl_to_ref"] for r in evals}) == len(evals)
    assert [p["step"] for p in loop.evaluator.per_prompt] == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    out = str(tmp_path / "crashed")
    crashed = _tiny_loop(out, crash_after_steps=3, eval_every_steps=1)
    with pytest.raises(_Crash):
        crashed.run()
    crashed.close()
    resumed = _tiny_loop(out, eval_every_steps=1)
    assert deterministic_view(resumed.run().history) == hist
    resumed.close()


def test_rerun_after_crash_before_first_checkpoint_drops_orphan_records(uninterrupted, tmp_path):
    """Crash after 1 policy step (no checkpoint yet), then run to the end: the run starts again and the
    metrics file holds the uninterrupted run's records only (not the dead run's first records as well)."""
    _, ref_result, _ = uninterrupted
    out = str(tmp_path / "crashed")
    loop = _tiny_loop(out, crash_after_steps=1)
    with pytest.raises(_Crash):
        loop.run()
    loop.close()
    loop = _tiny_loop(out)
    loop.run()
    loop.close()
    assert deterministic_view(read_jsonl(os.path.join(out, "metrics.jsonl"))) == \
        deterministic_view(ref_result.history)


def test_export_round_trips_through_import_hf(uninterrupted, tmp_path):
    """AlignmentLoop.export -> a Hugging Face directory that convert.import_hf loads to identical logits."""
    from wind_jax.models.convert import import_hf
    loop, _, _ = uninterrupted
    path = loop.export(str(tmp_path / "hf"))
    assert {"config.json", "model.safetensors"} <= set(os.listdir(path))
    config, model = import_hf(path)
    assert config.hidden_size == _MODEL_CFG.hidden_size and config.vocab_size == _MODEL_CFG.vocab_size
    tokens = jax.random.randint(jax.random.key(0), (3, 9), 0, _MODEL_CFG.vocab_size)
    trained = loop.policy_model()
    np.testing.assert_array_equal(np.asarray(model(tokens)[0]), np.asarray(trained(tokens)[0]))
    # the export is the TRAINED policy, not pi_ref
    ref_logits = loop.ref_model()(tokens)[0]
    assert np.abs(np.asarray(ref_logits) - np.asarray(trained(tokens)[0])).max() > 1e-4


@pytest.mark.interop
def test_export_loads_in_transformers(uninterrupted, tmp_path):
    """transformers' LlamaForCausalLM loads the exported directory; logits agree with wind_jax (float32)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    loop, _, _ = uninterrupted
    path = loop.export(str(tmp_path / "hf"))
    hf = transformers.LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (2, 7), 0, _MODEL_CFG.vocab_size))
    with torch.no_grad():
        ref = hf(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
    ours = np.asarray(loop.policy_model()(jnp.asarray(tokens))[0])
    np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=1e-4)


# ------------------------------------------------------------------------- the loop on a mesh, methods, faults
def _loop(out_dir, method="wind_sq", mesh_shape=(1, 1, 1), oracle=None, iterations=1, **kw):
    from wind_jax import sharding
    cfg = dict(method=method, num_iterations=iterations, prompts_per_iteration=8, steps_per_iteration=2,
               batch_size=8, eval_prompts=8, eval_samples_per_prompt=1, max_new_tokens=_LANG.response_width,
               eos_token_id=EOS, pad_token_id=PAD, async_checkpoint=False, learning_rate=1e-2, seed=3)
    cfg.update(kw)
    mesh = sharding.make_mesh(mesh_shape, devices=jax.devices()[:int(np.prod(mesh_shape))])
    return AlignmentLoop(LoopConfig(**cfg), policy=Transformer(_MODEL_CFG, rngs=nnx.Rngs(0)),
                         oracle=oracle or GoldOracle(_LANG.gold_preference), out_dir=out_dir,
                         prompts=FunctionPrompts(_LANG.sample_prompts, seed=1),
                         eval_oracle=GoldOracle(_LANG.gold_preference),
                         eval_prompts=FunctionPrompts(_LANG.sample_prompts, seed=2), tensorboard=False,
                         progress=False, mesh=mesh)


def _run_loop(loop):
    result = loop.run()
    loop.close()
    return [np.asarray(x) for x in jax.tree.leaves(loop.state)], deterministic_view(result.history)


def _assert_same_run(a, b):
    for x, y in zip(a[0], b[0], strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)
    assert len(a[1]) == len(b[1])
    for r, s in zip(a[1], b[1]):
        assert r.keys() == s.keys()
        for k in r:
            if k == "train/rewards/accuracies":  # sign of h_chosen - h_rejected, both 0 + roundoff at a step's start
                continue
            if isinstance(r[k], float):
                np.testing.assert_allclose(r[k], s[k], atol=1e-4, rtol=1e-4, err_msg=k)
            else:
                assert r[k] == s[k], k


@pytest.fixture(scope="module")
def one_device_runs():
    return {}


@pytest.mark.parametrize("method,mesh_shape", [("wind_sq", (2, 2, 2))] + [
    pytest.param(m, s, marks=pytest.mark.slow) for m in ("wind_sq", "sppo", "bonbon")
    for s in ((8, 1, 1), (2, 4, 1), (1, 4, 2)) if (m, s) != ("wind_sq", (2, 2, 2))])
def test_loop_on_a_mesh_equals_one_device(tmp_path, method, mesh_shape, one_device_runs):
    # lr 1e-3: Adam turns reduction-order differences (1e-7 relative) into updates of order lr on weights
    # with tiny gradients; at 1e-2 sppo on (1, 4, 2) differs by 2.5e-5.
    if method not in one_device_runs:
        one_device_runs[method] = _run_loop(_loop(str(tmp_path / "one"), method, learning_rate=1e-3))
    one = one_device_runs[method]
    loop = _loop(str(tmp_path / "mesh"), method, mesh_shape, learning_rate=1e-3)
    sharded = _run_loop(loop)
    _assert_same_run(sharded, one)
    import json
    with open(tmp_path / "mesh" / "run.json") as f:
        info = json.load(f)
    assert info["mesh"] == dict(zip(("data", "fsdp", "tensor"), mesh_shape))
    total = sum(x.nbytes for x in one[0])
    assert info["param_bytes_total"] == total
    # fsdp / tensor split the larger matrices: a device holds less than all of them
    assert (info["param_bytes_per_device"] < total) == (mesh_shape[1] * mesh_shape[2] > 1)


@pytest.mark.slow  # a full (tiny) loop run with its own compiles
def test_a_new_method_is_one_record(tmp_path, monkeypatch):
    """IPO on a best-vs-worst tournament (an adaptive schedule: the oracle is asked round by round) added as
    one Method record runs through the loop with its derived counts (4 samples, 3n/2 - 2 = 4 duels)."""
    from wind_jax import methods as M
    rec = M.Method("ipo_best_worst", "ipo", (("policy", 0),), {"chosen": "policy", "rejected": "policy"},
                   M.BEST_VS_WORST, M.get_method("dpo_best_worst").assemble, default_n=4)
    monkeypatch.setitem(M.METHODS, "ipo_best_worst", rec)
    loop = _loop(str(tmp_path / "ipo"), "ipo_best_worst", loss_hparams=(("tau", 0.5),))
    result = loop.run()
    loop.close()
    its = [r for r in result.history if r["kind"] == "iteration"]
    assert (its[-1]["counts/samples"], its[-1]["counts/queries"]) == (4 * 8, 4 * 8)
    steps = [r for r in result.history if r["kind"] == "step"]
    assert len(steps) == 2 and all(np.isfinite(r["train/loss"]) for r in steps)


@pytest.mark.parametrize("field,value,match", [
    ("beta", -1.0, "beta"), ("eta", 0.0, "eta"), ("eta", 20.0, "eta\\*beta"), ("learning_rate", -1.0, "learning_rate"),
    ("learning_rate", float("nan"), "learning_rate"), ("temperature", 0.0, "temperature"),
    ("eta_final", 30.0, "iteration 3"), ("num_samples", 3, "exactly 2"), ("method", "nope", "unknown method")])
def test_bad_config_values_are_refused_naming_the_field(field, value, match):
    kw = {"method": "wind_sq", "num_iterations": 4, "schedule": "linear", field: value}
    with pytest.raises(ValueError, match=match):
        LoopConfig(**kw)


class _BadOracle(GoldOracle):
    name = "bad"

    def __init__(self, kind):
        super().__init__(_LANG.gold_preference)
        self.kind = kind

    def _prob(self, prompt, a, b):
        p = np.asarray(super()._prob(prompt, a, b))
        if self.kind == "nan":
            p = p.copy()
            p[0] = np.nan
        elif self.kind == "range":
            p = p + 1.0
        elif self.kind == "short":
            p = p[:-1]
        return p


@pytest.mark.parametrize("kind,mode,error,match", [
    ("nan", "prob", FloatingPointError, "non-finite"),
    pytest.param("nan", "sample", FloatingPointError, "non-finite", marks=pytest.mark.slow),
    ("range", "prob", ValueError, "outside \\[0, 1\\]"),
    pytest.param("short", "sample", ValueError, "shape", marks=pytest.mark.slow)])
def test_bad_oracle_answers_stop_the_run_before_any_save(tmp_path, kind, mode, error, match):
    loop = _loop(str(tmp_path / kind), "wind_sq", oracle=_BadOracle(kind), oracle_mode=mode)
    with pytest.raises(error, match=match) as e:
        loop.run()
    loop.close()
    assert "bad" in str(e.value) and "iteration 0" in str(e.value)
    with Checkpointer(os.path.join(str(tmp_path / kind), "checkpoints")) as ck:
        assert ck.latest_step() is None


def test_non_finite_loss_aborts_before_the_save(tmp_path):
    loop = _loop(str(tmp_path / "nan"), "wind_sq", iterations=2, checkpoint_every_steps=1)
    loop.ref_state = jax.tree.map(lambda x: x * np.float32(np.nan), loop.ref_state)   # log pi_ref = NaN
    with pytest.raises(FloatingPointError, match="iteration 0, step 0"):
        loop.run()
    loop.close()
    with Checkpointer(os.path.join(str(tmp_path / "nan"), "checkpoints")) as ck:
        assert ck.latest_step() is None


def test_unwritable_checkpoint_directory_is_named(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").write_text("a file where the checkpoint directory should be")
    with pytest.raises(OSError, match="checkpoints"):
        _loop(str(out), "wind_sq")


@pytest.mark.slow  # a full (tiny) loop run with its own compiles
def test_lora_run_trains_adapters_only_and_exports_merged(tmp_path):
    """A LoRA wind_sq_offset run: the optimizer holds only adapters (+ offset head), the base weights stay
    bitwise, checkpoints hold the adapters (not the base), and the exported policy is the merged model."""
    from wind_jax.models.lora import lora_state
    loop = _loop(str(tmp_path / "lora"), "wind_sq_offset", lora_rank=2, lora_alpha=4.0, learning_rate=3e-2)
    base_before = [np.asarray(x) for x in jax.tree.leaves(loop.ref_state)]
    loop.run()
    loop.close()
    opt_leaves = sum(x.size for x in jax.tree.leaves(loop.opt_state) if x.ndim)
    module = nnx.merge(loop.graphdef, loop.state)
    adapters = sum(x.size for x in jax.tree.leaves(lora_state(module.policy)))
    head = sum(x.size for x in jax.tree.leaves(nnx.state(module.offset_head)))
    assert opt_leaves == 2 * (adapters + head)   # Adam's two moments of the trainable parameters only
    base_after = [np.asarray(x) for x in jax.tree.leaves(nnx.state(module.policy.base))]
    for a, b in zip(base_before, base_after, strict=True):
        np.testing.assert_array_equal(a, b)
    with Checkpointer(os.path.join(str(tmp_path / "lora"), "checkpoints")) as ck:
        state, _, _ = ck.restore()
    assert set(state["policy"]) == {k for k in state["policy"] if "adapters" in k} and state["policy"]
    tokens = jax.random.randint(jax.random.key(0), (2, 7), 0, _MODEL_CFG.vocab_size)
    merged = loop.policy_model()
    moved = np.abs(np.asarray(merged(tokens)[0]) - np.asarray(loop.ref_model()(tokens)[0])).max()
    assert moved > 1e-4   # the adapters trained
    from wind_jax.models.convert import import_hf
    _, exported = import_hf(loop.export(str(tmp_path / "hf")))
    np.testing.assert_allclose(np.asarray(exported(tokens)[0]), np.asarray(merged(tokens)[0]), atol=1e-5)


@pytest.mark.slow  # three tiny loop runs
def test_checkpoint_resumes_onto_another_mesh(tmp_path):
    """Iteration 1 on an (8, 1, 1) mesh, then the same run resumed on (2, 2, 2) for iteration 2, ends where an
    uninterrupted 2-iteration run on one device ends."""
    out = str(tmp_path / "moved")
    _run_loop(_loop(out, "wind_sq", (8, 1, 1), iterations=1, learning_rate=1e-3))
    moved = _run_loop(_loop(out, "wind_sq", (2, 2, 2), iterations=2, learning_rate=1e-3))
    one = _run_loop(_loop(str(tmp_path / "one"), "wind_sq", iterations=2, learning_rate=1e-3))
    _assert_same_run(moved, one)


def test_fixed_reference_draws_pi_ref_once_and_keeps_per_prompt_values(tmp_path):
    """eval_fixed_reference: pi_ref's evaluation replies are the t = 0 draw at every evaluation (and equal the
    default's t = 0 draw); without it each evaluation draws anew. per_prompt keeps each evaluation's values."""
    fixed = _loop(str(tmp_path / "fixed"), eval_fixed_reference=True)
    fresh = _loop(str(tmp_path / "fresh"))
    prompts = fixed.collector.global_prompts(fixed.evaluator.prompts, 0, 8)
    draw = lambda loop, t: [np.asarray(a) for a in loop.evaluator._reference_replies(t, loop.ref_state, prompts, 1)]  # noqa: E731
    first, again = draw(fixed, 0), draw(fixed, 3)
    for a, b, c in zip(first, again, draw(fresh, 0)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert not all(np.array_equal(a, b) for a, b in zip(draw(fresh, 0), draw(fresh, 3)))
    out = fixed.evaluate(1)
    rec = fixed.evaluator.per_prompt[-1]
    assert rec["t"] == 1 and rec["kl"].shape == (8, 1) and rec["win"].shape == (8, 1)
    assert out["eval/kl_to_ref"] == pytest.approx(float(rec["kl"].mean()), abs=1e-6)
    assert out["eval/win_rate_vs_ref"] == pytest.approx(float(rec["win"].mean()), abs=1e-6)
    fixed.close()
    fresh.close()

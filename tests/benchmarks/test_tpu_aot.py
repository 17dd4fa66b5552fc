"""benchmarks.tpu_aot: the TPU compiler's plan for a tiny model (slow; skipped without libtpu), the CPU
variant of the same program, the iteration plan (every program with finite, positive figures), the per-key
cost extrapolation, and argument errors. Argument bytes are checked against a closed form."""
import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import tpu_aot
from benchmarks.tpu_aot import programs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(args, tmp_path, env_extra=None):
    out = tmp_path / "plan.json"
    env = dict(os.environ, TPU_SKIP_MDS_QUERY="1", **(env_extra or {}))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.tpu_aot", *args, "--json", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def _expected_argument_bytes(num_params, chips, batch, length):
    """float32 params + AdamW mu and nu, all split over `chips` (FSDP), plus the batch rows of one chip:
    tokens int32, two bool masks, three float32 per-example keys (wind_sq: prev_y, ref_y, target)."""
    return (3 * 4 * num_params + batch * length * (4 + 1 + 1) + batch * 3 * 4) / chips


@pytest.mark.slow
def test_tiny_model_plan_on_a_tpu_topology(tmp_path):
    pytest.importorskip("libtpu")
    plan, stdout = _run(["--topology", "v5e:2x2", "--model", "tiny", "--batch", "8", "--length", "128"],
                        tmp_path, {"JAX_PLATFORMS": "cpu"})
    assert plan["chips"] == 4 and plan["hbm_gib"] == 16.0 and plan["attention"] == "splash"
    want = _expected_argument_bytes(plan["num_params"], 4, 8, 128)
    # TPU buffers are padded to (8, 128) tiles: a tiny model's arguments exceed the closed form (1.48x here)
    assert 1.0 <= plan["argument_gib"] * 2**30 / want < 2.0
    assert 0 < plan["per_chip_gib"] < plan["hbm_gib"] and plan["compile_s"] > 0
    assert plan["flops_per_chip"] > 0 and plan["estimated_step_s"] > 0 and 0 < plan["estimated_mfu"] < 1
    assert "ESTIMATED MFU" in stdout and "not a measurement" in stdout
    decode, _ = _run(["--topology", "v5e:2x2", "--model", "tiny", "--decode", "--batch", "8",
                      "--cache-length", "128", "--mesh", "1,2,2"], tmp_path, {"JAX_PLATFORMS": "cpu"})
    assert decode["mode"] == "decode" and decode["hbm_bound_s"] > 0 and decode["per_chip_gib"] > 0


@pytest.mark.slow
def test_cpu_platform_plan_of_the_same_step(tmp_path):
    plan, _ = _run(["--platform", "cpu", "--topology", "4", "--model", "tiny", "--batch", "8", "--length", "64",
                    "--remat", "dots"], tmp_path,
                   {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert plan["attention"] == "xla" and plan["remat"] == "dots" and plan["hbm_gib"] is None
    want = _expected_argument_bytes(plan["num_params"], 4, 8, 64)
    assert abs(plan["argument_gib"] * 2**30 / want - 1) < 0.05
    assert plan["flops_per_chip"] > 0


def test_bad_arguments_name_the_flag():
    with pytest.raises(SystemExit, match="unknown chip"):
        tpu_aot.chip_of("v9x:2x2")
    with pytest.raises(SystemExit, match="--batch"):
        tpu_aot.parse_args(["--topology", "v4:2x2x4", "--batch", "0"])
    with pytest.raises(SystemExit, match="not a LlamaConfig preset"):
        tpu_aot.model_config(tpu_aot.parse_args(["--topology", "v4:2x2x4", "--model", "gpt2"]))
    assert tpu_aot.CHIPS["v4"].hbm_gib == 32.0
    with pytest.raises(SystemExit, match="--judge 'gpt2' is not a LlamaConfig preset"):
        tpu_aot.main(["--iteration", "--platform", "cpu", "--topology", "1", "--model", "tiny", "--judge", "gpt2"])
    with pytest.raises(SystemExit, match="--programs: unknown"):
        tpu_aot.main(["--iteration", "--platform", "cpu", "--topology", "1", "--model", "tiny", "--judge", "tiny",
                      "--programs", "rollout,sampler"])
    with pytest.raises(SystemExit, match="does not compile for 1 .*divisible by 128"):   # a reason, not a traceback
        tpu_aot.main(["--platform", "cpu", "--topology", "1", "--model", "tiny", "--attention", "splash",
                      "--batch", "2", "--length", "96", "--no-layer-costs"])
    with pytest.raises(SystemExit, match="wind_sq.*--samples 3"):
        programs.iteration_shape("wind_sq", 3, 8, 16, 8, "reward")


def test_each_cost_key_is_extrapolated_on_its_own():
    """Issue 21: Llama-3-8B at batch 48 on v4:2x2x4 gave optimal_seconds -19.8 (1 layer) and -60.8 (2 layers);
    that key is left out, named, and FLOPs / bytes still extrapolate: v1 + (L - 1)(v2 - v1)."""
    c1 = {"flops": 3.0e12, "bytes accessed": 7.0e10, "optimal_seconds": -19.82}
    c2 = {"flops": 7.5e12, "bytes accessed": 1.3e11, "optimal_seconds": -60.76}
    cost, ignored = tpu_aot.extrapolate(c1, c2, 32)
    assert cost == {"flops": 3.0e12 + 31 * 4.5e12, "bytes accessed": 7.0e10 + 31 * 6.0e10}
    assert list(ignored) == ["optimal_seconds"] and "non-positive" in ignored["optimal_seconds"]
    cost, ignored = tpu_aot.extrapolate({"flops": 2.0, "bytes accessed": 5.0}, {"flops": 2.0, "bytes accessed": 6.0}, 4)
    assert cost == {"bytes accessed": 8.0} and "not increasing" in ignored["flops"]
    cost, ignored = tpu_aot.extrapolate({"flops": 0.0}, {"flops": 1.0, "optimal_seconds": 1.0}, 4)
    assert cost == {} and set(ignored) == {"flops", "optimal_seconds"}   # 0 FLOPs is never a figure


def test_iteration_shape_of_wind_sq_and_wind_kl():
    """wind_sq (MATH.md Alg. 3): 2 policy samples, one duel, both duellists become rows of y, which needs pi_ref
    log-probs; wind_kl: one row per duel with y and y_prime."""
    s = programs.iteration_shape("wind_sq", None, 64, 512, 512, "reward")
    assert (s.n, s.pairs, s.draws, s.rows, s.ref_names) == (2, 1, (("policy", 2),), {"y": 2}, ("y",))
    k = programs.iteration_shape("wind_kl", None, 64, 512, 512, "reward")
    assert (k.pairs, k.rows) == (1, {"y": 1, "y_prime": 1})
    assert s.judge_rows(16) == 64 and s.judge_length == 1024
    j = programs.iteration_shape("wind_sq", 2, 6, 512, 512, "judge")
    assert j.judge_rows(8) == 16 and j.judge_length == sum(programs.JUDGE_TEMPLATE_LENGTHS) + 1536


def _iteration_plan(extra):
    return tpu_aot.main(["--iteration", "--platform", "cpu", "--topology", "8", "--mesh", "2,2,2", "--model", "tiny",
                         "--judge", "tiny", "--batch", "8", "--prompt-length", "16", "--max-new-tokens", "8", *extra])


def _check_iteration_plan(plan):
    assert set(plan["programs"]) == {"rollout", "decode_step", "reference_logprobs", "judge", "policy_step"}
    for name, p in plan["programs"].items():
        assert "error" not in p, (name, p)
        for key in ("compile_s", "flops_per_chip", "model_flops_per_chip"):
            assert math.isfinite(p[key]) and p[key] > 0, (name, key, p[key])
        # the compiler's counts against 2 N (forward) / 6 N (policy step) per token: attention, the logits'
        # softmax and, for the rollout, every decode step are in; a forgotten decode loop would fall below
        assert 0.9 < p["flops_ratio"] < 3.0, (name, p["flops_ratio"])
    for name in ("rollout", "reference_logprobs", "judge", "policy_step"):
        p = plan["programs"][name]
        assert p["argument_gib"] > 0 and p["temp_gib"] >= 0 and p["transient_gib"] > 0
    r = plan["resident"]
    n = plan["num_params"]
    # closed forms on a (2, 2, 2) mesh: every tiny matrix splits over fsdp x tensor (4 ways); norms over fsdp
    assert r["policy_params"] * 2**30 <= 4 * n / 4 * 1.05 and r["optimizer_state"] >= 2 * r["policy_params"]
    assert r["judge"] * 2**30 <= 2 * plan["judge_num_params"] / 4   # bf16, embed over data x fsdp
    step = plan["programs"]["policy_step"]
    rows, t = 16, 24   # wind_sq: 2 rows of y per prompt; tokens int32 + two bool masks, 3 float32 keys
    batch = rows * t * (4 + 1 + 1) + 3 * rows * 4
    want = (r["policy_params"] + r["optimizer_state"]) * 2**30 + batch / 4
    assert abs(step["argument_gib"] * 2**30 / want - 1) < 0.1
    assert plan["peak_gib"] > plan["resident_gib"] > 0 and plan["chips"] == 8


@pytest.mark.slow
def test_iteration_plan_on_cpu_unrolled():
    """Every program of one wind_sq iteration, compiled for 8 CPU devices without scanned layers (the costs
    of the programs themselves)."""
    _check_iteration_plan(_iteration_plan(["--no-scan-layers", "--remat", "none"]))


@pytest.mark.slow
def test_iteration_plan_on_cpu_scanned_with_layer_costs(tmp_path):
    plan, stdout = _run(["--iteration", "--platform", "cpu", "--topology", "8", "--mesh", "2,2,2", "--model", "tiny",
                         "--judge", "tiny", "--batch", "8", "--prompt-length", "16", "--max-new-tokens", "8"],
                        tmp_path, {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    _check_iteration_plan(plan)
    assert "peak" in stdout and "unrolled 1- and 2-layer" in plan["programs"]["judge"]["cost_source"]


@pytest.mark.slow
def test_iteration_plan_on_a_tpu_topology(tmp_path):
    pytest.importorskip("libtpu")
    plan, _ = _run(["--iteration", "--topology", "v5e:2x2", "--model", "tiny", "--judge", "tiny", "--batch", "8",
                    "--prompt-length", "128", "--max-new-tokens", "128", "--oracle", "judge"], tmp_path,
                   {"JAX_PLATFORMS": "cpu"})
    assert plan["hbm_gib"] == 16.0 and plan["goals"]["peak_within_90pct_hbm"] is True
    for name, p in plan["programs"].items():
        assert "error" not in p and p["flops_per_chip"] > 0 and p["compile_s"] > 0, (name, p)
    assert plan["programs"]["decode_step"]["hbm_bound_s"] > 0

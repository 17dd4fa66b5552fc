"""benchmarks.tpu_aot: the TPU compiler's plan for a tiny model (slow; skipped without libtpu), the CPU
variant of the same program, and argument errors. Argument bytes are checked against a closed form."""
import json
import os
import subprocess
import sys

import pytest

from benchmarks import tpu_aot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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

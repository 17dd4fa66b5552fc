"""The experiments' entry points run end to end at reduced size (subprocesses, as a user runs them)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_module(module, *flags, timeout=300):
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-m", module, *flags], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_contextual_bandit_main_job(tmp_path):
    out = _run_module("experiments.contextual_bandit", f"--out_dir={tmp_path}", "--num_seeds=1",
                      "--num_contexts=4", "--num_responses=5", "--num_steps=40")
    for panel in "abcd":
        assert (tmp_path / f"panel_{panel}.png").stat().st_size > 1000
    results = json.loads((tmp_path / "results.json").read_text())
    assert set("abcd") <= set(results)
    # (c) exact WIND stays under the (1 - eta beta)^t bound for eta*beta <= 1/2 (Theorem 3 shape).
    assert "exploitability" in out and "pi*_beta" in out
    ratios = [float(line.split("/")[-1]) for line in out.splitlines() if line.startswith("c ")]
    assert ratios and all(r <= 1.0 + 1e-6 for r in ratios[:2])

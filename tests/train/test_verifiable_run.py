"""The verifiable config end to end on SmolLM2-135M-Instruct: a run's Hugging Face export, evaluated by
`python -m experiments.evaluate` on the run's own evaluation prompts (validation split, same seed, same
number of replies, the loop's EOS id), reproduces the run's final accuracy, reference accuracy, win rate
against pi_ref and KL within their confidence intervals (issue 22, "Evaluating an export")."""
import json
import math
import os
import subprocess
import sys

import pytest

Z95 = 1.959964
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _se(ci95):
    """Standard error from a 95% interval (bootstrap or normal)."""
    return (ci95[1] - ci95[0]) / (2 * Z95)


@pytest.mark.interop
@pytest.mark.slow
def test_export_evaluation_reproduces_the_runs_final_metrics(smollm2_gguf, tmp_path):
    from experiments import evaluate
    from experiments.configs.llm_alignment import get_config
    from wind_jax.train.tasks import load_llm

    c = get_config("verifiable")
    # one short, strong iteration: the policy must move far enough from pi_ref (KL well above its error) that
    # an export missing the update (LoRA adapters not merged, pi_ref written instead) fails the KL check
    loop = dict(num_iterations=1, prompts_per_iteration=16, steps_per_iteration=2, batch_size=16,
                learning_rate=3e-3, eval_prompts=16, eval_samples_per_prompt=4)
    c.loop.update(loop)
    run_dir, export_dir = tmp_path / "run", tmp_path / "export"
    # the command a user runs, in its own process on ONE CPU device (the suite's 8 fake devices would hold
    # 8 replicas of the 135M model, its reference and optimizer state: over 20 GB)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "experiments.llm_alignment",
           "--config=experiments/configs/llm_alignment.py:verifiable", f"--config.out_dir={run_dir}",
           f"--config.export_dir={export_dir}", f"--config.real.model_path={smollm2_gguf}", "--config.plot=False",
           "--config.tensorboard=False"] + [f"--config.loop.{k}={v}" for k, v in loop.items()]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["kind"] == "iteration"][-1]
    assert last["iteration"] == 1
    eos = load_llm(smollm2_gguf)[2].eos_id
    assert eos == 2

    out = tmp_path / "eval.json"
    ev = evaluate.main(["--policy", str(export_dir), "--reference", smollm2_gguf, "--split", "validation",
                        "--num_prompts", str(c.loop.eval_prompts), "--samples", str(c.loop.eval_samples_per_prompt),
                        "--max_new_tokens", str(c.loop.max_new_tokens), "--seed", str(c.seed),
                        "--eos_token_id", str(eos), "--output", str(out)])
    assert json.loads(out.read_text())["num_prompts"] == c.loop.eval_prompts

    # the run moved the policy: its KL is clearly positive, and so is the export's
    kl_run, kl_run_se = last["eval/kl_to_ref"], last["eval/kl_to_ref_stderr"]
    assert kl_run - Z95 * kl_run_se > 0.05, (kl_run, kl_run_se)
    assert ev["kl"]["ci95"][0] > 0.05, ev["kl"]

    # two independent estimates of one quantity (the run's eval keys differ from evaluate's): their
    # difference lies within 1.96 x the standard error of the difference. The run reports no interval for
    # the accuracies; its design (prompts, replies per prompt) is evaluate's, so it gets evaluate's error.
    checks = {
        "accuracy": (last["eval/accuracy"], ev["accuracy"]["mean"], _se(ev["accuracy"]["ci95"]),
                     _se(ev["accuracy"]["ci95"])),
        "reference_accuracy": (last["eval/accuracy_ref"], ev["reference_accuracy"]["mean"],
                               _se(ev["reference_accuracy"]["ci95"]), _se(ev["reference_accuracy"]["ci95"])),
        "win_rate": (last["eval/win_rate_vs_ref"], ev["win_rate"]["mean"], last["eval/win_rate_vs_ref_stderr"],
                     _se(ev["win_rate"]["ci95"])),
        "kl": (kl_run, ev["kl"]["mean"], kl_run_se, ev["kl"]["stderr"]),
    }
    for name, (run_v, ev_v, se_run, se_ev) in checks.items():
        tol = Z95 * math.hypot(se_run, se_ev)
        print(f"{name}: run {run_v:.4f} export {ev_v:.4f} |difference| {abs(run_v - ev_v):.4f} allowed {tol:.4f}")
        assert tol > 0 and abs(run_v - ev_v) <= tol, f"{name}: run {run_v:.4f} vs export {ev_v:.4f} (+- {tol:.4f})"
    # the identity both sides rely on (gold P = 1/2 + (c - c')/2)
    assert ev["win_rate"]["mean"] == pytest.approx(
        0.5 + (ev["accuracy"]["mean"] - ev["reference_accuracy"]["mean"]) / 2)
    assert last["eval/win_rate_vs_ref"] == pytest.approx(
        0.5 + (last["eval/accuracy"] - last["eval/accuracy_ref"]) / 2, abs=1e-6)

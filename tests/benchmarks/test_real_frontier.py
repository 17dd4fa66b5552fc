"""benchmarks.real_frontier: the chord rule, the matched-KL choice, the paired bootstrap (hand-made data with
known answers) and the quick comparison end to end on SmolLM2 (slow)."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from benchmarks.real_frontier import analysis as A

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(points, x=20, n=10, queries=8):
    """A run whose evaluation i has KL kl_i on every reply and accuracy acc_i on every prompt (acc_i * n of
    the n replies correct)."""
    correct = [[[1] * round(acc * n) + [0] * (n - round(acc * n))] * x for _, acc in points]
    kl = [[[k] * n] * x for k, _ in points]
    return {"correct": correct, "kl": kl, "curve": [{"counts/queries": i * queries} for i in range(len(points))]}


def test_chord_gap_reads_the_frontier_between_the_same_two_kls():
    f_kl = np.linspace(0, 4, 4001)
    f_win = np.sqrt(f_kl)  # concave
    # points (0.25, 0.4) and (1, 0.9); at KL 0.5: curve 0.4 + 0.5/3, frontier chord 0.5 + 0.5/3 -> gap 0.1
    assert A.chord_gap([0.25, 1.0], [0.4, 0.9], f_kl, f_win, 0.5) == pytest.approx(0.1, abs=1e-4)
    # a point exactly on the frontier has no gap; a target outside the points is not measured
    assert A.chord_gap([0.0, 1.0], [0.0, 1.0], f_kl, f_win, 0.3) == pytest.approx(0.0, abs=1e-6)
    assert np.isnan(A.chord_gap([0.25, 1.0], [0.4, 0.9], f_kl, f_win, 2.0))
    assert np.isnan(A.chord_gap([0.25, 5.0], [0.4, 0.9], f_kl, f_win, 1.0))  # beyond the frontier's reach


def test_curve_is_win_rate_against_pi_refs_per_prompt_accuracy():
    p_ref = np.full(20, 0.3)
    kl, win = A.curve(_run([(0.0, 0.3), (0.2, 0.5)]), p_ref)
    np.testing.assert_allclose(kl, [0.0, 0.2])
    np.testing.assert_allclose(win, [0.5, 0.6])  # 1/2 + (acc - p)/2


def test_queries_to_reach():
    run = _run([(0.0, 0.3), (0.1, 0.35), (0.2, 0.5)], queries=16)
    p_ref = np.full(20, 0.3)
    assert A.queries_to_reach(run, p_ref, 0.52) == 16.0 and A.queries_to_reach(run, p_ref, 0.6) == 32.0
    assert np.isnan(A.queries_to_reach(run, p_ref, 0.7))


def test_matched_kl_rule_prefers_the_curve_closer_to_the_frontier():
    ref = np.tile(np.array([1] * 3 + [0] * 7), (20, 1)).astype(float)  # p = 0.3 on every prompt
    slow = _run([(0.0, 0.3), (0.05, 0.32), (0.3, 0.40)])     # moves far, gains little
    good = _run([(0.0, 0.3), (0.05, 0.36), (0.3, 0.55)])     # the same KLs, more accuracy
    lr, table = A.choose_lr({1e-3: [slow], 3e-4: [good]}, ref, [0.05, 0.2])
    assert lr == 3e-4 and all(a > b for a, b in zip(table[1e-3], table[3e-4]))
    # no common target: the candidate spanning more of them wins
    short = _run([(0.0, 0.3), (0.02, 0.31)])
    assert A.choose_lr({1e-3: [short], 3e-4: [slow]}, ref, [0.05, 0.2])[0] == 3e-4
    # over seeds: the gaps are averaged, and a target counts only where every seed's run spans it
    lucky = _run([(0.0, 0.3), (0.05, 0.5), (0.3, 0.8)])    # one seed far ahead of `good` ...
    bad = _run([(0.0, 0.3), (0.05, 0.1), (0.3, 0.1)])      # ... the other far behind it
    lr, table = A.choose_lr({1e-3: [lucky, bad], 3e-4: [good, good]}, ref, [0.05, 0.2])
    assert lr == 3e-4 and A.choose_lr({1e-3: [lucky], 3e-4: [good]}, ref, [0.05, 0.2])[0] == 1e-3
    np.testing.assert_allclose(table[1e-3], np.mean([A.gaps(r, ref, [0.05, 0.2]) for r in (lucky, bad)], 0))
    assert np.isnan(A.choose_lr({1e-3: [slow, short]}, ref, [0.05, 0.2])[1][1e-3][1])


def test_paired_bootstrap_calls_ties_and_differences():
    rng = np.random.default_rng(0)
    ref = (rng.random((40, 32)) < 0.3).astype(float)
    base = _run([(0.0, 0.3), (0.1, 0.4), (0.3, 0.5)], x=40)
    tied = A.paired_bootstrap([base], [base], ref, [0.2], num=100)[0]
    assert tied["diff"] == 0.0 and tied["verdict"] == "tied"
    worse = _run([(0.0, 0.3), (0.1, 0.3), (0.3, 0.3)], x=40)
    behind = A.paired_bootstrap([worse], [base], ref, [0.2], num=100)[0]
    assert behind["verdict"] == "behind" and behind["lo"] > 0 and behind["diff"] == pytest.approx(0.075, abs=1e-6)


def test_report_compares_each_method_at_its_chosen_learning_rate():
    from benchmarks.real_frontier import report
    runs = [{"method": m, "lr": lr, "seed": s} for m, lr in (("wind_sq", 3e-4), ("wind_sq", 1e-3), ("dpo", 3e-4))
            for s in (0, 1)]
    res = {"runs": runs, "chosen_lr": {"wind_sq": 1e-3}}  # dpo was not searched in this invocation
    kept = report.compared_runs(res)
    assert [(r["method"], r["lr"]) for r in kept] == [("wind_sq", 1e-3)] * 2 + [("dpo", 3e-4)] * 2


def test_a_run_stopped_by_a_signal_stops_the_benchmark_unrecorded(monkeypatch, tmp_path):
    from benchmarks.real_frontier import __main__ as cli
    from wind_jax.train import loop as loop_lib
    from wind_jax.train import tasks
    from wind_jax.train import verifiable as v

    class Tok:
        eos_id, pad_id = 2, 0

    class StoppedLoop:
        def __init__(self, cfg, **kw):
            self.out_dir = kw["out_dir"]
            os.makedirs(self.out_dir)

        def run(self):
            return loop_lib.LoopResult(None, [], self.out_dir, preempted="stopping after step 3")

        def close(self):
            pass

    monkeypatch.setattr(tasks, "load_llm", lambda path: (None, None, Tok()))
    monkeypatch.setattr(v, "encode_prompts", lambda problems, tok: (np.ones((len(problems), 4), np.int32),
                                                                      np.ones((len(problems), 4), bool)))
    monkeypatch.setattr(v, "VerifierOracle", lambda tok: None)
    monkeypatch.setattr(loop_lib, "AlignmentLoop", StoppedLoop)
    stale = tmp_path / "wind_sq_s0_lr0.0003_test"
    stale.mkdir()
    (stale / "old").write_text("a run cut short before")
    args = cli.parse(["--out_dir", str(tmp_path)])
    res = {"runs": []}
    with pytest.raises(SystemExit, match="wind_sq seed 0 stopped by a signal"):
        cli._run(res, str(tmp_path / "results.json"), args, "wind_sq", 0, 3e-4, "test", "runs")
    assert res["runs"] == [] and not (tmp_path / "results.json").exists()
    assert not (stale / "old").exists()   # the run started over in a fresh folder


@pytest.mark.slow
@pytest.mark.interop
def test_quick_comparison_end_to_end(smollm2_gguf, tmp_path):
    """--quick with two methods, in its own process on ONE CPU device (under the suite's 8 fake devices the
    loop's mesh replicates the model eight times: 24 GiB, killed): every run evaluated after each iteration
    at equal queries, the tables written from the JSON alone (--report gives the same report)."""
    from benchmarks.real_frontier.__main__ import main
    out = tmp_path / "rf"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.real_frontier", "--quick", "--methods", "wind_sq,sppo",
                           "--model", smollm2_gguf, "--out_dir", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    saved = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in saved["runs"]] == ["wind_sq", "sppo"]
    for r in saved["runs"]:
        assert [c["counts/queries"] for c in r["curve"]] == [0, 10, 20]
        assert np.asarray(r["correct"]).shape == (3, 16, 1) and np.isfinite(np.asarray(r["kl"])).all()
    assert np.asarray(saved["reference"]["test"]).shape == (16, 32)
    report = (out / "report.md").read_text()
    assert "| wind_sq |" in report and "| sppo |" in report
    main(["--report", str(out / "results.json")])
    assert (out / "report.md").read_text() == report
    assert saved["chosen_lr"] == {"wind_sq": 3e-4, "sppo": 3e-4}

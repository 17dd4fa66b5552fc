"""The result scripts' bookkeeping: budgets, warm-iteration medians, and the all-or-nothing publishing of
benchmarks.reproduce_all. The end-to-end table at tiny size is slow-marked."""
import math
import os
import sys

import pytest

from benchmarks import llm_results as R
from benchmarks import reproduce_all


def test_budgets_match_the_loop_accounting():
    # samples and queries per prompt: 2 and 1 for WIND, K and K(K-1)/2 for round robins, 3 and 3 for J-BOND
    assert R.per_prompt_cost("wind_kl") == (2, 1)
    assert R.per_prompt_cost("sppo") == (5, 10)
    assert R.per_prompt_cost("bonbon") == (8, 28)
    assert R.per_prompt_cost("jbond") == (3, 3)
    assert R.prompts_for_budget("sppo", "queries", 128) == 12      # 120 queries <= 128
    assert R.prompts_for_budget("sppo", "samples", 128) == 51      # 255 samples <= 256
    assert R.prompts_for_budget("bonbon", "queries", 10) == 1      # never zero prompts
    with pytest.raises(ValueError, match="budget"):
        R.prompts_for_budget("wind_sq", "tokens", 128)
    with pytest.raises(ValueError, match="method"):
        R.per_prompt_cost("rlhf")


def test_phase_medians_skip_warmup_and_name_the_remainder():
    recs = [{"iteration": 1, "time/iteration": 100.0, "time/sampling": 90.0},
            {"iteration": 2, "time/iteration": 10.0, "time/sampling": 4.0, "time/training": 5.0},
            {"iteration": 3, "time/iteration": 12.0, "time/sampling": 6.0, "time/training": 5.0},
            {"iteration": 4, "time/iteration": 11.0, "time/sampling": 5.0, "time/training": 5.0}]
    med = R.phase_medians(recs)
    assert med["total"] == 11.0 and med["sampling"] == 5.0 and med["training"] == 5.0
    assert med["other"] == 1.0 and med["judging"] == 0.0
    with pytest.raises(ValueError, match="iteration >= 2"):
        R.phase_medians(recs[:1])


def test_mean_spread_uses_sample_sd():
    s = R.mean_spread([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["sd"] == pytest.approx(1.0) and (s["min"], s["max"], s["n"]) == (1.0, 3.0, 3)


def test_failed_stage_keeps_previous_figures(tmp_path, monkeypatch):
    out = tmp_path / "figs"
    (out / "bandit").mkdir(parents=True)
    (out / "bandit" / "old.png").write_text("previous figure")
    fail = [sys.executable, "-c", "import sys; open(sys.argv[1] + '/half.png', 'w'); sys.exit(3)"]
    monkeypatch.setattr(reproduce_all, "_commands", lambda stage, tmp, work, size: ([fail + [tmp]], []))
    with pytest.raises(RuntimeError, match="stage 'bandit' failed"):
        reproduce_all.run_stage("bandit", str(out), str(tmp_path / "work"), "tiny", log=lambda *_: None)
    assert sorted(os.listdir(out / "bandit")) == ["old.png"]
    assert (out / "bandit.failed.log").exists()
    assert not [d for d in os.listdir(out) if d.startswith(".")]  # no temporary directory left behind

    ok = [sys.executable, "-c", "import sys; open(sys.argv[1] + '/new.png', 'w').write('x')"]
    monkeypatch.setattr(reproduce_all, "_commands", lambda stage, tmp, work, size: ([ok + [tmp]], []))
    reproduce_all.run_stage("bandit", str(out), str(tmp_path / "work"), "tiny", log=lambda *_: None)
    assert sorted(os.listdir(out / "bandit")) == ["log.txt", "new.png"]


@pytest.mark.slow
def test_tiny_table_counts_what_it_plans(tmp_path):
    from benchmarks import llm_table
    table = llm_table.run_table(str(tmp_path), "tiny", seeds=(0,), methods=("wind_sq", "sppo"),
                                budgets=("queries",), wind_sweep=((0.05, 3.0),), sweep_method="wind_sq",
                                log=lambda *_: None)
    for m in ("wind_sq", "sppo"):
        row = table["rows"][f"queries/{m}"]
        samples, queries = R.per_prompt_cost(m)
        assert row["queries_per_iter"]["mean"] == queries * row["prompts_per_iter"] <= 32
        assert row["samples_per_iter"]["mean"] == samples * row["prompts_per_iter"]
    swept = table["rows"]["queries/wind_sq b=0.05 e=3"]
    assert swept["loop_overrides"] == {"beta": 0.05, "eta": 3.0}
    assert swept["kl"]["mean"] != table["rows"]["queries/wind_sq"]["kl"]["mean"]  # beta reached the loss
    assert os.path.exists(tmp_path / "tiny" / "table.png") and os.path.exists(tmp_path / "tiny" / "frontier.png")
    with pytest.raises(ValueError, match="eta \\* beta"):
        llm_table.run_table(str(tmp_path), "tiny", seeds=(0,), methods=(), budgets=(), wind_sweep=((0.5, 3.0),))


# ------------------------------------------------------------------ benchmarks.llm_frontier (issue 13)
def _line_frontier():
    # a frontier dict of the shape self_frontier returns: win = 0.5 + 0.1 * KL on [0, 3], SE 0.005
    kl = [0.0, 1.0, 2.0, 3.0]
    f = {"kl": kl, "win_rate": [0.5 + 0.1 * k for k in kl], "win_rate_se": [0.005] * 4}
    return {"upper": f, "lower": {**f, "win_rate": [w - 0.01 for w in f["win_rate"]]}}


def _records(traj, se=0.01):
    return [{"iteration": i, "counts/queries": q, "counts/samples": 2 * q, "eval/kl_to_ref": k,
             "eval/win_rate_vs_ref": w, "eval/win_rate_vs_ref_stderr": se, "eval/kl_to_ref_stderr": 0.01,
             "time/iteration": 1.0} for i, q, k, w in traj]


def test_frontier_gaps_interpolate_and_flag_points_above():
    from benchmarks import llm_frontier as LF
    fr = _line_frontier()
    below = LF.point(_records([(0, 0, 0.0, 0.5), (1, 64, 1.0, 0.55)]), fr)
    assert below["gap_upper"] == pytest.approx(0.05) and below["gap_lower"] == pytest.approx(0.04)
    assert not below["above_frontier"] and below["queries"] == 64
    assert math.isnan(below["sec_per_iter"])  # no warm iteration (>= 2) among the records
    above = LF.point(_records([(0, 0, 0.0, 0.5), (1, 64, 1.0, 0.7)]), fr)
    assert above["above_frontier"]  # 0.1 over the frontier, margin about 2 * sqrt(0.01^2 + 0.005^2 + 0.001^2)
    close = LF.point(_records([(0, 0, 0.0, 0.5), (1, 64, 1.0, 0.61)]), fr)
    assert not close["above_frontier"]  # within the combined error
    # a curve of two points at KL 0.5 and 1.5 (win 0.52, 0.62) reaches the targets 1.0 only
    pts = [LF.point(_records([(1, 64, 0.5, 0.52)]), fr), LF.point(_records([(1, 64, 1.5, 0.62)]), fr)]
    gaps = LF.curve_gaps(pts, fr, targets=(0.25, 1.0, 2.0))
    assert list(gaps) == ["1.0"]
    assert gaps["1.0"]["win_rate"] == pytest.approx(0.57) and gaps["1.0"]["gap_upper"] == pytest.approx(0.03)


def test_cost_to_reach_and_hyperparameter_choice():
    from benchmarks import llm_frontier as LF
    fr = _line_frontier()
    slow = LF.point(_records([(0, 0, 0.0, 0.5), (1, 64, 0.3, 0.52), (2, 128, 0.8, 0.57)]), fr)
    greedy = LF.point(_records([(0, 0, 0.0, 0.5), (1, 64, 1.5, 0.58), (2, 128, 2.5, 0.62)]), fr)
    assert LF.cost_to_reach([slow, greedy], 0.56, kl_budget=1.0) == 128   # greedy is over the KL budget
    assert LF.cost_to_reach([slow, greedy], 0.56, kl_budget=2.0) == 64
    assert LF.cost_to_reach([slow, greedy], 0.56, kl_budget=1.0, resource="samples") == 256   # 2 per query
    assert LF.cost_to_reach([slow, greedy], 0.56, 1.0, "seconds", sec_per_iter=1.5) == 3.0    # 2 iterations
    assert LF.cost_to_reach([slow], 0.7, kl_budget=3.0) == float("inf")
    with pytest.raises(ValueError, match="resource"):
        LF.cost_to_reach([slow], 0.5, 1.0, "flops")
    # equal budgets: a run is cut after its last iteration within the budget (iteration 0 = pi_ref)
    assert LF.at_budget(greedy, "samples", 200) == {"iteration": 1, "kl": 1.5, "win_rate": 0.58}
    assert LF.at_budget(greedy, "queries", 63)["iteration"] == 0
    assert LF.at_budget(greedy, "seconds", 3.0, sec_per_iter=1.5)["iteration"] == 2
    still = LF.point(_records([(1, 64, 0.01, 0.5)]), fr)   # gap 0.001 but it does not move
    assert LF.choose_hp({(1e-3, 8): still, (3e-3, 8): slow, (3e-3, 16): greedy}) == (3e-3, 8)  # 0.001 / 0.010 / 0.130
    assert LF.choose_hp({(1e-3, 8): still}) == (1e-3, 8)
    far = LF.point(_records([(1, 64, 5.0, 0.79)]), fr)   # beyond the frontier's last KL (3, win 0.8)
    assert math.isnan(far["gap_upper"]) and far["gap_floor"] == pytest.approx(0.01)
    assert LF.choose_hp({(1e-3, 8): greedy, (3e-3, 8): far}) == (3e-3, 8)   # its gap is at least 0.01 < 0.13


def test_every_method_has_an_equal_sweep_and_exploitability_interpolates():
    from benchmarks import llm_frontier as LF
    from benchmarks.llm_results import METHODS
    assert set(LF.SWEEPS) == set(METHODS) == set(LF.CENTER)   # every method of the loop is compared
    assert {len(v) for v in LF.SWEEPS.values()} == {4}        # the same search budget per method
    for m in LF.SWEEPS:
        assert LF.middle(m)[0] == LF.CENTER[m]
    pts = [{"kl": 1.0, "exploitability": {"upper": 0.6}}, {"kl": 0.2, "exploitability": {"upper": 0.52}}]
    at = LF.exploitability_at(pts, targets=(0.1, 0.6, 2.0))
    assert list(at) == ["0.6"] and at["0.6"] == pytest.approx(0.56)


def test_gold_matrix_matches_pairwise_gold_calls():
    import jax
    import numpy as np

    from benchmarks import llm_frontier as LF
    from wind_jax.train.synthetic import SyntheticLanguage
    lang = SyntheticLanguage()
    x = np.asarray(lang.sample_prompts(jax.random.key(0), 3))
    draws = [lang.sample_reference_responses(jax.random.key(k), np.repeat(x, n, 0)) for k, n in ((1, 4), (2, 5))]
    (a, ma), (b, mb) = [(np.asarray(t).reshape(3, n, -1), np.asarray(m).reshape(3, n, -1))
                        for (t, m), n in zip(draws, (4, 5))]
    P = LF.gold_matrix(lang, x, a, ma, b, mb, chunk_pairs=40)  # 2 prompts per chunk: the last one padded
    assert P.shape == (3, 4, 5)
    for i in range(3):
        for j in range(4):
            ref = np.asarray(lang.gold_preference(np.repeat(x[i:i + 1], 5, 0), np.repeat(a[i, j:j + 1], 5, 0),
                                                  np.repeat(ma[i, j:j + 1], 5, 0), b[i], mb[i]))
            np.testing.assert_allclose(P[i, j], ref, rtol=1e-6)


@pytest.mark.slow
def test_quick_comparison_runs_end_to_end(tmp_path):
    import dataclasses

    from benchmarks import llm_frontier as LF
    plan = dataclasses.replace(LF.Plan(), size="quick", seeds=(0,), heldout_seed=1, methods=("wind_sq", "dpo"),
                               lrs=(1e-3, 3e-3), steps=(2, 4), nontransitive_sweep_seeds=(0,), ref_samples=16,
                               ref_opponents=8, exploit_samples=8, nontransitive_seeds=(0,), tournament_samples=2)
    res = LF.run_comparison(str(tmp_path), plan, log=lambda *_: None)
    fr = res["frontiers"]["0"]
    assert fr["upper"]["kl"][0] == 0.0 and abs(fr["upper"]["win_rate"][0] - 0.5) < 4 * fr["upper"]["win_rate_se"][0]
    assert set(res["sweep"]) == {"wind_sq", "dpo"} and len(res["sweep"]["dpo"]) == len(LF.SWEEPS["dpo"])
    assert len(res["lr_search"]["dpo"]["points"]) == 4   # 2 lrs x 2 steps per iteration
    assert len(res["hp_curves"]["dpo"]) == 4             # and each configuration's whole sweep on the held-out seed
    # a recheck at another configuration reuses the held-out-seed machinery on the evaluation seeds
    rc = LF.recheck(str(tmp_path), {"dpo": (1e-3, 4)}, plan, log=lambda *_: None)
    assert rc["dpo"]["hp"] == "lr=0.001 k=4" and os.path.exists(tmp_path / "quick" / "recheck.json")
    T = res["nontransitive"]["seeds"]["0"]["tournament"]
    assert T["names"] == ["pi_ref", "wind_sq", "dpo"]
    assert len(res["nontransitive"]["sweep"]["0"]["dpo"]["points"]) == len(LF.SWEEPS["dpo"])
    assert all(res["timing"][m] > 0 for m in ("wind_sq", "dpo"))   # warm seconds of the one-process timing pass
    # WIND and DPO draw 2 samples and ask 1 query per prompt: their equal-samples runs are their equal-query runs
    assert res["sweep_samples"]["dpo"] == res["sweep"]["dpo"]
    for f in ("comparison.json", "comparison.md", "curves.png", "nontransitive.png"):
        assert os.path.exists(tmp_path / "quick" / f)

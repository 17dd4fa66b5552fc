"""benchmarks.llm_frontier (issue 13): gaps below the frontier bracket, above-frontier flags, resources to reach
a win rate, the hyperparameter choice, exact gold matrices, the command line. The quick end-to-end comparison
is slow-marked."""
import math
import os

import pytest

from benchmarks import llm_frontier as LF
from benchmarks import llm_results as R
from benchmarks.llm_frontier.__main__ import main, parse_plan


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
    assert set(LF.SWEEPS) == set(R.METHODS) == set(LF.CENTER)   # every method of the loop is compared
    assert {len(v) for v in LF.SWEEPS.values()} == {4}        # the same search budget per method
    for m in LF.SWEEPS:
        assert LF.middle(m)[0] == LF.CENTER[m]
    pts = [{"kl": 1.0, "exploitability": {"upper": 0.6}}, {"kl": 0.2, "exploitability": {"upper": 0.52}}]
    at = LF.exploitability_at(pts, targets=(0.1, 0.6, 2.0))
    assert list(at) == ["0.6"] and at["0.6"] == pytest.approx(0.56)


def test_gold_matrix_matches_pairwise_gold_calls():
    import jax
    import numpy as np

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
    _, plan = parse_plan(["--quick", "--methods=wind_sq,dpo"])
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
    # the measured counts are the planned ones: T iterations x prompts for the query budget x queries per prompt
    size = LF.SIZES["quick"]
    for m, by_label in res["sweep"].items():
        samples, queries = R.per_prompt_cost(m)
        prompts = R.prompts_for_budget(m, "queries", size.base_prompts)
        for p in by_label.values():
            assert (p["0"]["queries"], p["0"]["samples"]) == (size.num_iterations * prompts * queries,
                                                              size.num_iterations * prompts * samples)
    assert len({p["0"]["kl"] for p in res["sweep"]["dpo"].values()}) == 4   # beta reached the loss
    for f in ("comparison.json", "comparison.md", "curves.png", "nontransitive.png"):
        assert os.path.exists(tmp_path / "quick" / f)


def test_command_line_plans():
    a, plan = parse_plan(["--quick", "--methods=dpo, sppo", "--out_dir=/tmp/x"])
    assert plan.size == "quick" and plan.methods == ("dpo", "sppo") and plan.seeds == (0,) and a.out_dir == "/tmp/x"
    _, full = parse_plan(["--seeds=3,4", "--stage=runs", "--reuse_only"])
    assert full.size == "compare" and full.seeds == (3, 4) and full.stage == "runs" and full.reuse_only
    with pytest.raises(SystemExit):
        parse_plan(["--seeds="])
    with pytest.raises(SystemExit):
        parse_plan(["--stage=tables"])
    with pytest.raises(SystemExit, match="recheck"):
        main(["--recheck=dpo:0.001"])
    with pytest.raises(ValueError, match="no sweep"):
        LF.run_comparison("/nonexistent", LF.Plan(methods=("rlhf",)))


def _concave_frontier():
    # F(k) = 0.5 + 0.1 sqrt(k) on a fine grid (concave), SE 0.001; lower curve 0.01 below
    kl = [i / 100 for i in range(0, 401)]
    f = {"kl": kl, "win_rate": [0.5 + 0.1 * k ** 0.5 for k in kl], "win_rate_se": [0.001] * len(kl)}
    return {"upper": f, "lower": {**f, "win_rate": [w - 0.01 for w in f["win_rate"]]}}


def test_chord_gap_on_a_concave_frontier():
    from benchmarks.llm_frontier.matched import chord_gap, chord_gaps
    fr = _concave_frontier()
    # two points exactly ON the frontier at KL 0.25 and 4 (win 0.55, 0.70): the chord rule gives gap 0 at KL 1
    pts = [{"kl": 0.25, "win_rate": 0.55, "win_rate_se": 0.01}, {"kl": 4.0, "win_rate": 0.70, "win_rate_se": 0.01}]
    g = chord_gap(pts, fr, 1.0)
    assert g["gap"] == pytest.approx(0.0, abs=1e-9)
    # the linear rule compares the chord (0.55 + 0.15 * 0.75 / 3.75 = 0.58) with F(1) = 0.6: a spurious 0.02
    assert g["win_rate"] == pytest.approx(0.58) and g["linear_gap"] == pytest.approx(0.02)
    assert g["spacing"] == pytest.approx(16.0) and not g["clamped"]
    assert g["gap_se"] == pytest.approx(math.hypot(0.8 * 0.01, 0.2 * 0.01))
    # points 0.01 and 0.03 below the frontier: the gap is their interpolation, 0.8 * 0.01 + 0.2 * 0.03 = 0.014
    below = [{"kl": 0.25, "win_rate": 0.54}, {"kl": 4.0, "win_rate": 0.67}]
    gs = chord_gaps(below, fr, targets=(0.1, 1.0, 5.0))
    assert list(gs) == ["1.0"] and gs["1.0"]["gap"] == pytest.approx(0.014)
    assert gs["1.0"]["gap_lower"] == pytest.approx(0.004)
    # a point exactly at the target: its own gap; beyond the frontier's KL range: its last value, flagged
    assert chord_gap([{"kl": 1.0, "win_rate": 0.59}], fr, 1.0)["gap"] == pytest.approx(0.01)
    far = chord_gap([{"kl": 1.0, "win_rate": 0.59}, {"kl": 9.0, "win_rate": 0.69}], fr, 2.0)
    assert far["clamped"] and far["gap"] == pytest.approx(7 / 8 * 0.01 + 1 / 8 * 0.01)


def test_matched_kl_choice_on_hand_made_curves():
    from benchmarks.llm_frontier.matched import select_matched
    curves = {"a": {0.5: 0.02},                            # best gap, but reaches one target only
              "b": {0.5: 0.05, 1.0: 0.05, 2.0: 0.06},      # mean 0.0533
              "c": {1.0: 0.03, 2.0: 0.05, 0.25: 0.04},     # mean 0.04 over its own, but compared on {1, 2}: 0.04
              "d": {0.5: 0.04, 1.0: 0.04, 2.0: 0.08}}      # mean 0.0533
    best, rep = select_matched(curves)
    # candidates reach 3 targets (b, c, d); compared on what all of them reach, {1, 2}: b 0.055, c 0.04, d 0.06
    assert best == "c" and rep["targets"] == [1.0, 2.0] and rep["means"]["c"] == pytest.approx(0.04)
    assert "a" not in rep["means"] and rep["reached"]["a"] == 1
    assert select_matched({"x": {}, "y": {}}, fallback="x")[0] == "x"   # nothing reached: the fallback


def test_paired_bootstrap_verdicts():
    from benchmarks.llm_frontier.matched import paired_bootstrap
    ahead = paired_bootstrap([-0.03, -0.02, -0.025], [0.002] * 3)
    assert ahead["verdict"] == "ahead" and ahead["hi"] < 0 and ahead["mean"] == pytest.approx(-0.025)
    assert -0.032 < ahead["lo"] < -0.028   # about the smallest difference: 3 seeds give about their range
    assert paired_bootstrap([0.02, 0.03, 0.01], [0.001] * 3)["verdict"] == "behind"
    assert paired_bootstrap([-0.02, 0.01, 0.005], [0.001] * 3)["verdict"] == "tied"   # signs disagree
    assert paired_bootstrap([-0.02, -0.02, -0.02], [0.05] * 3)["verdict"] == "tied"  # within evaluation noise
    assert paired_bootstrap([-0.03, -0.03], [0.0] * 2)["verdict"] == "too few seeds"
    assert paired_bootstrap([], [])["n"] == 0


def test_epochs_count_passes_over_own_rows():
    from benchmarks.llm_frontier.matched import epochs, rows_per_prompt
    assert rows_per_prompt("wind_sq") == 2 and rows_per_prompt("wind_kl") == 1 and rows_per_prompt("sppo") == 1
    assert epochs("wind_sq", 64, 8, 64)["epochs"] == 4.0       # 128 rows, minibatches of 64
    assert epochs("sppo", 6, 16, 64) == {"rows": 6, "minibatch": 6, "steps": 16, "epochs": 16.0}


def test_pipeline_takes_the_matched_kl_choice():
    from benchmarks.llm_frontier.search import matched_chosen
    curves = {"dpo": {"lr=0.001 k=8": {"gaps": {"0.5": 0.03, "1.0": 0.05}},
                      "lr=0.001 k=16": {"gaps": {"0.5": 0.02, "1.0": 0.04}},
                      "lr=0.003 k=8": {"gaps": {"1.0": 0.01}}},
              "sppo": {"lr=0.001 k=8": {"gaps": {}}}}
    chosen = matched_chosen(curves, {"dpo": (1e-3, 8), "sppo": (3e-3, 16)})
    assert chosen == {"dpo": (1e-3, 16), "sppo": (3e-3, 16)}   # sppo: no curve reaches a target, kept

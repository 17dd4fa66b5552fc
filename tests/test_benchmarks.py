"""The result scripts' bookkeeping: budgets, warm-iteration medians, and the all-or-nothing publishing of
benchmarks.reproduce_all. The end-to-end table at tiny size is slow-marked."""
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

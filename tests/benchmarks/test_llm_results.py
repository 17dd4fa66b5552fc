"""benchmarks.llm_results: per-method budgets read from the method records, warm-iteration medians, spreads."""
import math

import pytest

from benchmarks import llm_results as R


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
    # the same median without the phases; NaN (not an error) when only the compiling iteration ran
    assert R.warm_seconds(recs) == 11.0 and R.warm_seconds(recs[:3]) == 11.0   # median of 10 and 12
    assert math.isnan(R.warm_seconds(recs[:1]))


def test_mean_spread_uses_sample_sd():
    s = R.mean_spread([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["sd"] == pytest.approx(1.0) and (s["min"], s["max"], s["n"]) == (1.0, 3.0, 3)

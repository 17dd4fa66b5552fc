"""benchmarks.trl_online_dpo: the verifier as a pairwise judge and as TRL's reward function (fast);
benchmarks.trl_side_by_side: the --quick side-by-side run of TRL's online DPO, the loop's dpo and wind_sq end
to end (slow). Both need TRL (interop extra)."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("trl")

from benchmarks import trl_online_dpo as trl_dpo  # noqa: E402
from benchmarks import trl_side_by_side as tsbs  # noqa: E402
from benchmarks.real_frontier.analysis import frontier  # noqa: E402
from wind_jax.train import verifiable as v  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPT = ("<|im_start|>user\nWhich number is larger, 37 or 34? Reply with just the number.<|im_end|>\n"
          "<|im_start|>assistant\n37<|im_end|>\n<|im_start|>user\nWhich number is larger, 85 or 67? Reply with "
          "just the number.<|im_end|>\n<|im_start|>assistant\n")
PARITY = "Is 47 even or odd? Reply with one word."


@pytest.mark.interop
def test_judge_follows_the_verifier():
    judge = trl_dpo.VerifierPairwiseJudge(seed=0)
    pairs = [("85", "67"), ("67", "85"), ("The answer is 85.", "I think 67"), ("85.0", "85")]
    picks = judge.judge([PROMPT] * len(pairs), [list(p) for p in pairs])
    for (a, b), k in zip(pairs, picks):
        assert v.correct_from_text(PROMPT, (a, b)[k]) and not v.correct_from_text(PROMPT, (a, b)[1 - k])
    assert picks == [0, 1, 0, 1] and judge.num_queries == 4
    assert judge.judge([PARITY], [["odd", "Odd."]]) in ([0], [1])  # both correct: a coin
    assert judge.num_queries == 5


@pytest.mark.interop
def test_judge_ties_are_a_fair_coin():
    judge = trl_dpo.VerifierPairwiseJudge(seed=1)
    n = 2000
    picks = judge.judge([PROMPT] * n, [["12", "no idea"]] * n)  # neither correct
    assert abs(sum(picks) / n - 0.5) < 4 * 0.5 / math.sqrt(n)
    assert judge.num_queries == n


@pytest.mark.interop
def test_reward_function_makes_the_judges_pick_chosen():
    """TRL 1.16 takes chosen = first half iff reward(first) >= reward(second); one query per pair."""
    judge = trl_dpo.VerifierPairwiseJudge(seed=0)
    timings = {"judging": 0.0}
    render = lambda msgs: PROMPT if msgs == "larger" else PARITY  # noqa: E731
    reward = trl_dpo.judge_reward(judge, render, timings)
    prompts = ["larger", "parity"] * 2
    completions = [[{"role": "assistant", "content": c}] for c in ("67", "odd", "85", "even")]
    r = reward(prompts=prompts, completions=completions)
    assert r == [0.0, 1.0, 1.0, 0.0] and judge.num_queries == 2 and timings["judging"] > 0


@pytest.mark.interop
@pytest.mark.slow
def test_quick_side_by_side(smollm2_gguf, tmp_path):
    out = tmp_path / "quick.json"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
               TRL_EXPERIMENTAL_SILENCE="1")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.trl_side_by_side", "--quick", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    duels = report["duels_per_method"]
    assert duels == report["args"]["iterations"] * report["args"]["prompts"]
    assert set(report["methods"]) == set(tsbs.METHODS)
    for name, r in report["methods"].items():
        assert r["queries"] == duels, name
        assert r["optimizer_steps"] == report["args"]["iterations"] * report["args"]["steps"], name
        assert len(r["per_iteration"]) == report["args"]["iterations"], name
        e = r["eval"]
        numbers = [*r["mean_seconds_per_iteration"].values(),
                   *(x for k, x in e.items() if k not in ("frontier_at_kl", "gap_below_frontier"))]
        assert all(math.isfinite(x) for x in numbers), (name, r["mean_seconds_per_iteration"], e)
        # the frontier is read only where pi_ref's samples reach the policy's KL (NaN beyond)
        f_kl, f_win = frontier(np.asarray(report["reference"]["correct"], np.float64))["mc"]
        if e["kl"] <= f_kl[-1]:
            assert e["gap_below_frontier"] == pytest.approx(np.interp(e["kl"], f_kl, f_win) - e["win_rate"])
        else:
            assert math.isnan(e["gap_below_frontier"])
        assert 0 <= r["eval"]["accuracy"] <= 1 and 0 <= r["eval"]["win_rate"] <= 1
        assert r["eval"]["win_rate"] == pytest.approx(
            0.5 + (r["eval"]["accuracy"] - report["reference"]["accuracy"]) / 2)
    assert report["methods"]["dpo"]["oracle_queries"] == duels  # the loop's verifier counts one per duel
    assert report["methods"]["trl_online_dpo"]["samples"] == 2 * duels

"""The redesign keeps every number: each loop method (reduced size, 8 fake devices) and each bandit method
reproduces the history recorded before it (bandit: bit for bit; loop: up to the float rounding of the
CPU, see RTOL) (tests/train/golden_record.py -> tests/train/golden.json).
Default suite: the methods of the bandit study's --quick
table (wind_sq_offset, sppo_beta); the slow suite: every method."""
import json
import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import golden_record  # noqa: E402

with open(os.path.join(HERE, "golden.json")) as f:
    GOLDEN = json.load(f)

FAST_LOOP = ()  # the loop histories take 15-45 s each: slow suite (the default suite keeps the comparison's own test)
FAST_BANDIT = ("wind_sq_offset",)  # sppo_beta and the rest: the slow test_every_bandit_method_is_unchanged


def _params(names, fast):
    return [n if n in fast else pytest.param(n, marks=pytest.mark.slow) for n in names]


def _expected_counts(method, P):
    """Per-iteration (samples, queries) for P prompts, by hand from each method's documented protocol (not
    from the method table): round robins query each unordered pair once."""
    pairs = lambda k: k * (k - 1) // 2  # noqa: E731
    return {"wind_sq": (2 * P, P), "wind_sq_offset": (2 * P, P), "wind_kl": (2 * P, P), "wind_nce": (2 * P, P),
            "sppo": (5 * P, pairs(5) * P), "sppo_beta": (5 * P, pairs(5) * P),
            "jbond": (3 * P, 3 * P),                 # 1 policy + 2 anchor samples; y-a1, y-a2, a1-a2
            "bonbon": (8 * P, pairs(8) * P),         # n = 8 samples of pi_ref
            "dpo": (2 * P, P),                       # n = 2 samples of pi_t
            "bon_distill": (4 * P, pairs(4) * P),    # n = 4 samples of pi_t
            "bon_knockout": (4 * P, 3 * P),          # n = 4, a knockout: n - 1 duels
            }[method]


# XLA:CPU's float rounding depends on the CPU's vector units (the history recorded on one machine differs on
# an AVX-512 EPYC by ~1e-6 relative in every float, while every sample, count and win rate is the same), so
# the loop's floats compare to these tolerances; a change of the computation moves them by far more.
RTOL, ATOL = 1e-4, 1e-5
# step statistics that count signs of margins: at iteration 1 the margins are rounding noise (~1e-7), so
# their signs, and these shares, are not reproducible across CPUs
SIGN_COUNTS = ("train/rewards/accuracies",)


def assert_same_history(history: list[dict], golden: list[dict]):
    """Same records, keys, kinds, counts and strings exactly; floats within RTOL / ATOL (SIGN_COUNTS left out)."""
    assert len(history) == len(golden)
    for i, (rec, ref) in enumerate(zip(history, golden)):
        assert set(rec) == set(ref), (i, set(rec) ^ set(ref))
        for k, v in rec.items():
            if isinstance(v, float) and isinstance(ref[k], float):
                if k not in SIGN_COUNTS:
                    assert v == pytest.approx(ref[k], rel=RTOL, abs=ATOL), (i, k, v, ref[k])
            else:
                assert v == ref[k], (i, k, v, ref[k])


def test_history_comparison_catches_a_changed_value():
    golden = GOLDEN["loop"]["wind_sq"]
    assert_same_history(golden, golden)
    moved = [dict(r) for r in golden]
    step = next(r for r in moved if r["kind"] == "step")
    step["train/loss"] *= 1.001
    with pytest.raises(AssertionError):
        assert_same_history(moved, golden)
    counted = [dict(r) for r in golden]
    counted[-1]["counts/queries"] += 1
    with pytest.raises(AssertionError):
        assert_same_history(counted, golden)


@pytest.mark.parametrize("method", _params(sorted(GOLDEN["loop"]), FAST_LOOP))
def test_loop_history_is_unchanged(tmp_path, method):
    """The recorded history (2 iterations x 16 prompts) up to float rounding, and the exact sample / query
    counts."""
    history = golden_record.loop_history(tmp_path, method)
    assert_same_history(history, GOLDEN["loop"][method])
    samples, queries = _expected_counts(method, 16)
    last = [r for r in history if r["kind"] == "iteration"][-1]
    assert (last["counts/samples"], last["counts/queries"]) == (2 * samples, 2 * queries)


@pytest.mark.slow
def test_a_knockout_method_runs_through_the_loop(tmp_path):
    """bon_knockout (adaptive schedule, the oracle asked round by round) at the same reduced size."""
    history = golden_record.loop_history(tmp_path, "bon_knockout", oracle_mode="sample")
    samples, queries = _expected_counts("bon_knockout", 16)
    last = [r for r in history if r["kind"] == "iteration"][-1]
    assert (last["counts/samples"], last["counts/queries"]) == (2 * samples, 2 * queries)
    assert 0.0 <= last["eval/win_rate_vs_ref"] <= 1.0 and np.isfinite(last["eval/kl_to_ref"])
    assert all(np.isfinite(r["train/loss"]) for r in history if r["kind"] == "step")


@pytest.fixture(scope="module")
def bandit_runs():
    return golden_record.bandit_runs()


@pytest.mark.slow
def test_every_bandit_method_is_unchanged(bandit_runs):
    assert set(bandit_runs) == set(GOLDEN["bandit"])
    for name, run in bandit_runs.items():
        assert run == GOLDEN["bandit"][name], name


def test_bandit_quick_methods_are_unchanged():
    runs = golden_record.bandit_runs(only=FAST_BANDIT)
    for name in FAST_BANDIT:
        assert runs[name] == GOLDEN["bandit"][name], name

"""The redesign keeps every number: each loop method (reduced size, 8 fake devices) and each bandit method
reproduces, bit for bit, the history recorded before it (tests/golden_record.py -> tests/data/golden.json).
Default suite: the methods of the default synthetic run (wind_sq, sppo) and of the bandit study's --quick
table (wind_sq_offset, sppo_beta); the slow suite: every method."""
import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import golden_record  # noqa: E402

with open(os.path.join(os.path.dirname(HERE), "data", "golden.json")) as f:
    GOLDEN = json.load(f)

FAST_LOOP = ("wind_sq", "sppo")
FAST_BANDIT = ("wind_sq_offset", "sppo_beta")


def _params(names, fast):
    return [n if n in fast else pytest.param(n, marks=pytest.mark.slow) for n in names]


@pytest.mark.parametrize("method", _params(sorted(GOLDEN["loop"]), FAST_LOOP))
def test_loop_history_is_unchanged(tmp_path, method):
    assert golden_record.loop_history(tmp_path, method) == GOLDEN["loop"][method]


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

"""benchmarks.bandit_study (issue 14): first query counts to reach eps, bootstrap CIs over games, table cells
("at start", unreached runs counted). The --quick run end to end is slow-marked."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import bandit_study


def test_study_table_cells_say_at_start_and_handle_unreached_runs():
    """A method that meets the threshold at initialisation shows "at start", not "0 queries"; runs that never
    reach it are counted, and the bootstrap CI of the median stays finite where it should."""
    q = np.array([0, 240, 480, 720])
    assert bandit_study.first_reach(np.array([0.3, 0.2, 0.05, 0.01]), q, 0.1) == 480
    assert bandit_study.first_reach(np.array([0.05, 0.2, 0.05, 0.01]), q, 0.1) == 0
    assert bandit_study.first_reach(np.array([0.3, 0.2, 0.15, 0.11]), q, 0.1) == np.inf
    assert bandit_study._cell({"at_start": True, "median": 0.0, "ci90": [0, 0], "reached": 25, "runs": 25}) == "at start"
    vals = np.array([[240.0, 480.0], [480.0, np.inf], [240.0, 240.0]])
    med, lo, hi = bandit_study.median_ci(vals, np.random.default_rng(0), reps=200)
    assert med == 360.0 and lo <= med <= hi
    cell = bandit_study._cell({"at_start": False, "median": med, "ci90": [lo, hi], "reached": 5, "runs": 6})
    assert cell.startswith("360 [") and cell.endswith("(5/6)")
    partly = bandit_study._cell({"at_start": False, "median": 0.0, "ci90": [0.0, 480.0], "reached": 6, "runs": 6})
    assert partly == "at start [at start, 480] (6/6)"
    none = bandit_study._cell({"at_start": False, "median": np.inf, "ci90": [np.inf, np.inf], "reached": 0, "runs": 6})
    assert none == "not reached (0/6)"


def test_unknown_settings_and_methods_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # main() adds cheap-codegen flags: undo them
    with pytest.raises(ValueError, match="--settings: unknown"):
        bandit_study.main(["--settings=bradley_terry/mlp", f"--out_dir={tmp_path}"])
    with pytest.raises(ValueError, match="--methods: unknown"):
        bandit_study.main(["--quick", "--methods=rlhf", f"--out_dir={tmp_path}"])


@pytest.mark.slow
def test_bandit_study_quick_run_end_to_end(tmp_path):
    """benchmarks.bandit_study --quick in a subprocess (it sets XLA flags): results, table and figure written;
    every method's chosen configuration comes from the grid and its reach cells cover every eps."""
    subprocess.run([sys.executable, "-m", "benchmarks.bandit_study", "--quick", f"--out_dir={tmp_path}"], check=True,
                   capture_output=True, timeout=900)
    res = json.loads((tmp_path / "study_results.json").read_text())
    s = res["settings"]["nontransitive/realizable"]
    assert set(s["methods"]) == {"wind_sq_offset", "sppo_beta"}
    for r in s["methods"].values():
        assert [r["chosen"]["learning_rate"], r["chosen"]["num_inner"]] in res["grid"]
        assert set(r["reach"]) == {str(e) for e in res["eps"]}
        assert r["queries"][0] == 0 and len(r["queries"]) == res["config"]["num_outer"] + 1
    assert "| wind_sq_offset |" in (tmp_path / "study_tables.md").read_text()
    assert (tmp_path / "study_nontransitive_realizable.png").exists()

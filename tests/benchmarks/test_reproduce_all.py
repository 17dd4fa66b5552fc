"""benchmarks.reproduce_all: a failed stage leaves the previous figures in place; a successful one replaces them."""
import importlib.util
import os
import sys

import pytest

from benchmarks import reproduce_all


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


def test_every_stage_runs_a_module_that_exists_and_unknown_stages_are_refused(tmp_path):
    for stage in reproduce_all.STAGES:
        cmds, _ = reproduce_all._commands(stage, str(tmp_path), str(tmp_path / "work"), "small")
        assert cmds
        for c in cmds:
            assert c[1] == "-m" and importlib.util.find_spec(c[2]) is not None, c
    with pytest.raises(ValueError, match="stage must be one of"):
        reproduce_all._commands("llm_table", str(tmp_path), str(tmp_path / "work"), "small")

"""notebooks/wind_quickstart.ipynb: stored without outputs, the Colab install cell, and a full top-to-bottom
execution with nbclient (kernel = this interpreter) whose printed numbers are checked for sanity."""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import types

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "wind_quickstart.ipynb"
NUM = r"([-+0-9.eE]+)"


def _read():
    return nbformat.read(NOTEBOOK, as_version=4)


def _install_cell():
    return next(c for c in _read().cells if c.cell_type == "code").source


# --------------------------------------------------------------------------------------------- fast tests


def test_notebook_is_valid_and_stored_without_outputs():
    nb = _read()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for i, c in enumerate(code):
        assert c.outputs == [], f"code cell {i} has stored outputs; clear them before committing"
        assert c.execution_count is None, f"code cell {i} has an execution count; clear outputs"


def test_install_cell_does_nothing_outside_colab(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    ns: dict = {}
    exec(compile(_install_cell(), "install_cell", "exec"), ns)
    assert "REPO_URL" in ns
    assert calls == []


def test_install_cell_pip_installs_repo_url_in_colab(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: calls.append((cmd, k)))
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    source = _install_cell()
    # The placeholder URL is refused with a message naming REPO_URL.
    with pytest.raises(ValueError, match="REPO_URL"):
        exec(compile(source, "install_cell", "exec"), {})
    assert calls == []
    # A user-set URL is pip-installed with the running interpreter.
    url = "https://example.org/someone/wind_jax.git"
    source = re.sub(r'^REPO_URL = .*$', f"REPO_URL = {url!r}", source, count=1, flags=re.M)
    exec(compile(source, "install_cell", "exec"), {})
    assert len(calls) == 1
    cmd, kwargs = calls[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"]
    assert f"git+{url}" in cmd
    assert kwargs.get("check") is True


# ------------------------------------------------------------------------------------------ execution


def _kernel_manager(tmp_path):
    """A KernelManager whose only kernel spec runs ipykernel with THIS interpreter (the venv's)."""
    pytest.importorskip("ipykernel")
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    spec_dir = tmp_path / "kernels" / "wind_jax_test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "wind_jax test", "language": "python"}))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")], ensure_native_kernel=False)
    return KernelManager(kernel_name="wind_jax_test", kernel_spec_manager=ksm)


def _kernel_env():
    """The test's environment with the repository importable and a single CPU device (as in Colab)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["JAX_PLATFORMS"] = "cpu"
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def _stdout(nb) -> str:
    parts = []
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        for out in c.outputs:
            if out.output_type == "error":
                raise AssertionError(f"cell error: {out.ename}: {out.evalue}")
            if out.output_type == "stream" and out.name == "stdout":
                parts.append(out.text)
    return "".join(parts)


def _find(pattern, text, what):
    m = re.findall(pattern, text)
    assert m, f"notebook output has no line with {what} (pattern {pattern!r}); output:\n{text}"
    return m


@pytest.mark.slow
def test_notebook_executes_top_to_bottom(tmp_path):
    nbclient = pytest.importorskip("nbclient")
    nb = _read()
    client = nbclient.NotebookClient(nb, km=_kernel_manager(tmp_path), timeout=600,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=_kernel_env())  # raises CellExecutionError on the first failing cell
    text = _stdout(nb)

    # 1. exact WIND never exceeds the (1 - eta beta)^t rate bound and, at eta = 1, reaches pi*_beta (solved
    # independently by Newton) to KL < 1e-6.
    runs = {float(eta): (float(kl), float(ratio)) for eta, kl, ratio in _find(
        rf"exact WIND eta=([0-9.]+): final KL\(pi\*_beta \|\| pi_T\) = {NUM}\s+max KL / bound = {NUM}", text,
        "exact WIND's final KL")}
    for eta, (_, ratio) in runs.items():
        assert ratio <= 1.0 + 1e-6, f"eta={eta}: KL exceeds (1 - eta beta)^t KL_0 by a factor {ratio}"
    assert runs[1.0][0] < 1e-6, f"exact WIND (eta=1): final KL {runs[1.0][0]}"

    # Iterative BoN without mixing collapses (support ~1, high exploitability); WIND reaches pi*_beta's.
    bon = _find(rf"iterative BoN n=\d \(alpha=0\)\s+final exploitability = {NUM}\s+mean support size = {NUM}",
                text, "iterative BoN's exploitability")
    wind = _find(rf"exact WIND beta=[0-9.]+\s+final exploitability = {NUM}", text, "WIND's exploitability")
    star = _find(rf"pi\*_beta \(beta=[0-9.]+\)\s+exploitability = {NUM}", text, "pi*_beta's exploitability")
    assert abs(float(wind[0]) - float(star[0])) < 5e-3
    for expl, support in bon:
        assert float(expl) > float(wind[0]) + 0.1
        assert float(support) < 1.5

    # 2. bandit: equal query budgets; WIND ends closer to pi*_beta than SPPO and at least halves its KL.
    runs = {name: (float(a), float(b), int(q)) for name, a, b, q in _find(
        rf"(\w+)\s+\d+ prompts/iter,\s+\d+ queries/prompt: KL\(pi\*_beta \|\| pi\) {NUM} -> {NUM} after (\d+) "
        r"queries", text, "the bandit comparison")}
    assert {"wind_sq_offset", "sppo_beta"} <= set(runs)
    assert runs["wind_sq_offset"][2] == runs["sppo_beta"][2]
    assert runs["wind_sq_offset"][1] < runs["sppo_beta"][1]
    assert runs["wind_sq_offset"][1] < 0.5 * runs["wind_sq_offset"][0]

    # 3. tiny transformer: pre-training lowers the NLL, each WIND fit lowers its loss, the win rate rises.
    nll = [float(x) for x in _find(rf"pre-training step\s+\d+: NLL per response = {NUM}", text, "the NLL")]
    assert nll[-1] < nll[0]
    fits = _find(rf"wind_sq_offset loss {NUM} -> {NUM}", text, "the WIND loss")
    assert all(float(b) < float(a) for a, b in fits)
    win = [float(x) for x in _find(rf"iteration \d+:[^\n]*win rate vs pi_ref = {NUM}", text,
                                       "the win rate per iteration")]
    assert abs(win[0] - 0.5) < 0.05  # pi_0 = pi_ref (512 prompts, sampling noise only)
    assert win[-1] > win[0] + 0.02

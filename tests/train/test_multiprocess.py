"""Two jax.distributed CPU processes on localhost: (1) policy steps on a global batch split across processes
(2 fake devices each, a (2, 2, 1) mesh) end with identical params, equal to one process on 4 devices; (2) the
outer loop, each process sampling and judging its own prompts (4 fake devices each), ends where one process
on 8 devices ends."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import multiprocess_worker as worker
from wind_jax import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_processes(script: str, extra_args, *, n: int = 2, timeout: int):
    """Run tests/<script> PROCESS_ID N PORT *extra_args(i) as n jax.distributed processes; assert they succeed."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "train", script), str(i), str(n), str(port),
                               *extra_args(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(n)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0].decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]


@pytest.mark.slow
def test_two_processes_end_with_identical_params(tmp_path):
    outs = [str(tmp_path / f"p{i}.npz") for i in range(2)]
    run_processes("multiprocess_worker.py", lambda i: [outs[i]], timeout=400)
    a, b = (dict(np.load(o)) for o in outs)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert int(a["compiles"]) == 1

    # Single-process reference: same global batches on 4 of this process's fake devices.
    mesh = sharding.make_mesh(worker.MESH, devices=jax.devices()[:4])
    batches = [worker.make_global_batch(seed=s) for s in range(worker.NUM_STEPS)]
    state, losses, _ = worker.run_steps(mesh, batches)
    ref = worker.gathered_params(state)
    np.testing.assert_allclose(a["losses"], losses, rtol=1e-5)
    for k, v in ref.items():
        np.testing.assert_allclose(a[k], v, atol=1e-5, rtol=1e-5, err_msg=k)


@pytest.mark.slow
def test_loop_two_processes_equals_one(tmp_path):
    """The outer loop (sppo, 2 iterations, a checkpoint every step) in 2 jax.distributed processes of 4 fake
    devices, each sampling and judging its own half of the prompts, ends with the params and win rates of one
    process on 8 devices."""
    import multiprocess_loop_worker as loop_worker
    result = str(tmp_path / "result.npz")
    run_processes("multiprocess_loop_worker.py", lambda i: [str(tmp_path / "two"), result], timeout=900)
    got = dict(np.load(result))
    loop = loop_worker.make_loop(str(tmp_path / "one"), sharding.make_mesh((8, 1, 1)))
    res = loop.run()
    loop.close()
    wins = [r["eval/win_rate_vs_ref"] for r in res.history if r["kind"] == "iteration"]
    np.testing.assert_allclose(got["wins"], wins, atol=1e-5)
    for i, leaf in enumerate(jax.tree.leaves(loop.state)):
        np.testing.assert_allclose(got[f"p{i}"], np.asarray(leaf), atol=1e-5, rtol=1e-5)

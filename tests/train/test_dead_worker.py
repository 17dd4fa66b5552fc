"""A dead worker: wind_jax.sharding.initialize sets the distributed runtime's heartbeat timeout, so when one
process of a 2-process CPU run is SIGKILLed the other ends within a bounded time, saying a task died
(slow: real jax.distributed processes), instead of hanging in a collective or at exit."""
import os
import signal
import time

import jax
import pytest

from wind_jax import sharding
from test_preemption import Workers


def test_initialize_sets_the_heartbeat_timeout(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.delenv("WIND_JAX_HEARTBEAT_TIMEOUT", raising=False)
    assert sharding.initialize("localhost:1", 2, 0)
    assert calls[-1]["heartbeat_timeout_seconds"] == 30
    monkeypatch.setenv("WIND_JAX_HEARTBEAT_TIMEOUT", "12")
    assert sharding.initialize("localhost:1", 2, 0)
    assert calls[-1]["heartbeat_timeout_seconds"] == 12
    assert sharding.initialize("localhost:1", 2, 0, heartbeat_timeout_seconds=5)
    assert calls[-1]["heartbeat_timeout_seconds"] == 5
    monkeypatch.setenv("WIND_JAX_HEARTBEAT_TIMEOUT", "0")
    with pytest.raises(ValueError, match="WIND_JAX_HEARTBEAT_TIMEOUT"):
        sharding.initialize("localhost:1", 2, 0)
    assert len(calls) == 3


@pytest.mark.slow
@pytest.mark.parametrize("victim,collective", [(1, 1), (1, 0), (0, 1)])
def test_survivor_ends_within_the_heartbeat_bound(monkeypatch, victim, collective):
    """victim 1: the coordinator (process 0) notices the missing heartbeats after the timeout (10 s here) and
    every process is told; victim 0: the coordination service itself is gone, noticed at once."""
    monkeypatch.setenv("WIND_JAX_HEARTBEAT_TIMEOUT", "10")
    w = Workers(2, max_steps=100000, step_seconds=0.05, collective=collective)
    w.wait_for_step(1, 5)
    start = time.time()
    os.kill(w.procs[victim].pid, signal.SIGKILL)
    survivor = w.procs[1 - victim]
    try:
        survivor.wait(timeout=60)
    finally:
        w.finish(timeout=5)
    elapsed = time.time() - start
    log = "\n".join(w.lines[1 - victim])
    assert survivor.returncode not in (0, None), log[-3000:]
    assert elapsed < (25 if victim == 1 else 10), (elapsed, log[-3000:])
    assert "another task died" in log, log[-3000:]
    if victim == 1:
        assert elapsed > 5, "the heartbeat timeout, not a connection error, ends the survivor"
        assert "Task 1 heartbeat timeout" in log or "stopped sending heartbeats" in log, log[-3000:]
    print(f"victim {victim}, collective {collective}: survivor exited after {elapsed:.1f} s, "
          f"status {survivor.returncode}")

"""Preemption: stop at a step every process agrees on, so that the final save is collective.

TPU VMs (spot, queued resources) and most schedulers send SIGTERM some time before they take a machine
away. The loop calls `should_stop(step)` after every policy step; when it returns True the loop saves a
checkpoint and exits, saying where it stopped:

    guard = PreemptionGuard().install()          # after wind_jax.sharding.initialize()
    for step in ...:
        ...one policy step...
        if guard.should_stop(step):
            save(); print(guard.message()); break

Multi-process (jax.distributed initialized, JAX's preemption service on -- its default,
`jax_enable_preemption_service`): the JAX runtime installs its own SIGTERM notifier at
jax.distributed.initialize; a notice on any process starts the coordination service's sync protocol, which
takes the largest call count reached on any process plus one as the sync point, and
`jax.experimental.multihost_utils.reached_preemption_sync_point` returns True on every process at that
call. This guard therefore installs no Python handler there (it would replace the runtime's) and passes the
runtime a private counter that grows by one per should_stop() call: the protocol needs consecutive
counters, whatever numbering the loop uses for its steps. Every process must call should_stop() once per
step, for the same sequence of steps (an SPMD loop does; the processes need not be in lockstep, a slower one
keeps stepping until it reaches the agreed step). Orbax's CheckpointManager would also call the sync point
from save() with checkpoint ids; wind_jax.train.checkpoint turns that off.

One process without jax.distributed: a Python SIGTERM handler records the request and should_stop()
returns True at the first call after it. Several processes with the preemption service turned off: the same
handler on each, and should_stop() allgathers the flags (one small collective per call) so that all stop at
the same call. A second SIGTERM restores the previous handler and re-delivers the signal (by default:
terminate at once).
"""
from __future__ import annotations

import os
import signal
import threading
import time

import jax


def _sync_manager_active() -> bool:
    """True when JAX's distributed runtime is up with its preemption sync manager."""
    from jax._src import distributed
    state = distributed.global_state
    return state.client is not None and state.preemption_sync_manager is not None


class PreemptionGuard:
    """SIGTERM -> an agreed stop step; see the module docstring."""

    def __init__(self, sig: int = signal.SIGTERM):
        self.sig = sig
        self.requested_at: float | None = None   # time.time() of the first signal (Python-handler mode only)
        self.stop_step: int | None = None        # the step should_stop() returned True at
        self.calls = 0                           # should_stop() calls so far (the counter given to JAX)
        self._previous = None
        self._installed = False

    @property
    def mode(self) -> str:
        """"sync_point" (JAX's preemption service), "allgather" (several processes without it) or "local"."""
        if _sync_manager_active():
            return "sync_point"
        return "allgather" if jax.process_count() > 1 else "local"

    @property
    def multiprocess(self) -> bool:
        return self.mode != "local"

    def install(self) -> PreemptionGuard:
        """Install the SIGTERM handler (main thread only); a no-op where JAX's runtime owns SIGTERM."""
        if self._installed or self.mode == "sync_point":
            return self
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionGuard.install() must be called from the main thread (Python delivers "
                               "signals there)")
        self._previous = signal.signal(self.sig, self._handle)
        self._installed = True
        return self

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(self.sig, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def _handle(self, signum, frame) -> None:
        if self.requested_at is None:
            self.requested_at = time.time()
            return
        self.uninstall()               # a second signal: stop waiting for the step to finish
        os.kill(os.getpid(), signum)

    @property
    def requested(self) -> bool:
        """A stop was requested on this process (Python-handler mode) or agreed (both modes)."""
        return self.requested_at is not None or self.stop_step is not None

    def should_stop(self, step: int) -> bool:
        """Call after every step, on every process: True at the step to save and stop at (the same step on
        every process of a multi-process run)."""
        if self.stop_step is not None:
            return True
        counter, self.calls = self.calls, self.calls + 1
        mode = self.mode
        if mode == "sync_point":
            from jax.experimental import multihost_utils
            stop = bool(multihost_utils.reached_preemption_sync_point(counter))
        elif mode == "allgather":
            import numpy as np
            from jax.experimental import multihost_utils
            stop = bool(np.any(multihost_utils.process_allgather(np.int32(self.requested_at is not None))))
        else:
            stop = self.requested_at is not None
        if stop:
            self.stop_step = int(step)
        return stop

    def message(self) -> str:
        procs = jax.process_count() if self.multiprocess else 1
        who = "this process" if procs == 1 else f"one of the {procs} processes (all agreed on the step)"
        return f"preemption: SIGTERM received by {who}; stopping after step {self.stop_step}"

    def __enter__(self) -> PreemptionGuard:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

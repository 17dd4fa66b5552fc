"""Worker for tests/train/test_preemption.py: steps until PreemptionGuard.should_stop agrees, printing
"step K" after each step and "STOP K <message>" at the agreed step.

Usage: python tests/train/preemption_worker.py PROCESS_ID NUM_PROCESSES PORT MAX_STEPS STEP_SECONDS COLLECTIVE
(NUM_PROCESSES 1: no jax.distributed). Process i's steps take (1 + i) * STEP_SECONDS. COLLECTIVE 1: each step
allgathers a number across processes, as a loop's collectives would (lockstep); 0: the processes drift apart.
Optional CHECKPOINT_DIR: also save a checkpoint after every step, under ids numbered unlike the steps
(1000 + 3 * step), as the loop's checkpoint ids are.
"""
import os
import sys
import time


def main(process_id, num_processes, port, max_steps, step_seconds, collective, checkpoint_dir=None):
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.pop("XLA_FLAGS", None)
    import jax
    import numpy as np

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from wind_jax import sharding
    from wind_jax.train.preemption import PreemptionGuard

    if num_processes > 1:
        assert sharding.initialize(f"localhost:{port}", num_processes, process_id)
    from jax.experimental import multihost_utils

    ck = None
    if checkpoint_dir:
        from wind_jax.train.checkpoint import Checkpointer
        ck = Checkpointer(checkpoint_dir, max_to_keep=2)
    guard = PreemptionGuard().install()
    print("ready", flush=True)
    for step in range(1, max_steps + 1):
        time.sleep(step_seconds * (1 + process_id))
        if num_processes > 1 and collective:
            total = multihost_utils.process_allgather(np.int32(step)).sum()
            assert total == step * num_processes
        if ck is not None:
            ck.save(1000 + 3 * step, {"step": np.full((4,), step, np.int32)}, {"step": step})
        print(f"step {step}", flush=True)
        if guard.should_stop(step):
            print(f"STOP {step} {guard.message()}", flush=True)
            break
    else:
        print("END no stop", flush=True)
    if ck is not None:
        ck.close()
    if num_processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    main(*(int(a) for a in sys.argv[1:5]), float(sys.argv[5]), bool(int(sys.argv[6])), *sys.argv[7:8])

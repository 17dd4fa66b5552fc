"""Worker for tests/train/test_checkpoint_faults.py: one of 2 jax.distributed CPU processes (2 fake devices
each) saving sharded checkpoints 1-3 into one shared folder, then -- after process 0 damaged checkpoint 3 --
restoring onto the mesh; writes {"step": restored iteration, "moved": ..., "steps": ...} to OUT.json.

Usage: python tests/train/checkpoint_worker.py PROCESS_ID NUM_PROCESSES PORT DIR DAMAGE OUT.json
(DAMAGE: delete | truncate | none).
"""
import glob
import json
import os
import sys


def main(process_id, num_processes, port, directory, damage, out):
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from wind_jax import sharding
    from wind_jax.train.checkpoint import Checkpointer

    assert sharding.initialize(f"localhost:{port}", num_processes, process_id)
    mesh = jax.make_mesh((4,), ("data",))
    spec = NamedSharding(mesh, P("data"))

    def state(step):
        full = np.arange(32, dtype=np.float32).reshape(8, 4) + 100 * step
        return {"w": jax.make_array_from_callback((8, 4), spec, lambda idx: full[idx]),
                "n": np.int32(step)}

    with Checkpointer(directory, max_to_keep=5) as ck:
        for step in (1, 2, 3):
            ck.save(step, state(step), {"iteration": step})
    multihost_utils.sync_global_devices("saved")
    if process_id == 0 and damage != "none":
        victim = sorted(glob.glob(os.path.join(directory, "3", "state", "**", "d", "*"), recursive=True))[0]
        if damage == "delete":
            os.remove(victim)
        else:
            with open(victim, "r+b") as f:
                f.truncate(1)
    multihost_utils.sync_global_devices("damaged")
    target = {"w": jax.ShapeDtypeStruct((8, 4), np.float32, sharding=spec),
              "n": jax.ShapeDtypeStruct((), np.int32)}
    with Checkpointer(directory, max_to_keep=5) as ck:
        restored, meta, _ = ck.restore(target=target)
        full = multihost_utils.process_allgather(restored["w"], tiled=True)
        expect = np.arange(32, dtype=np.float32).reshape(8, 4) + 100 * meta["iteration"]
        result = {"step": meta["iteration"], "n": int(restored["n"]), "moved": ck.moved_aside,
                  "steps": ck.all_steps(), "equal": bool(np.array_equal(np.asarray(full), expect)),
                  "sharding_ok": restored["w"].sharding == spec}
    with open(out, "w") as f:
        json.dump(result, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6])

"""Worker for tests/train/test_multiprocess.py: one of N jax.distributed CPU processes running policy steps.

Usage: python tests/train/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npz  (sets its own XLA_FLAGS).
Also imported by the test for the single-process reference (same model, batch and step).
"""
import os
import sys

NUM_STEPS, LOCAL_DEVICES, MESH = 3, 2, (2, 2, 1)


def make_global_batch(batch_size=8, length=10, prompt=4, vocab=64, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    batch = {"tokens": {}, "response_mask": {}, "attention_mask": {}}
    for name in ("chosen", "rejected"):
        lengths = rng.integers(prompt + 2, length + 1, batch_size)
        pos = np.arange(length)[None]
        batch["tokens"][name] = rng.integers(1, vocab, (batch_size, length)).astype(np.int32)
        batch["attention_mask"][name] = pos < lengths[:, None]
        batch["response_mask"][name] = (pos >= prompt) & (pos < lengths[:, None])
    for key in ("ref_chosen", "ref_rejected"):
        batch[key] = (rng.normal(size=batch_size) - 20.0).astype(np.float32)
    batch["weight"] = rng.uniform(0.5, 2.0, size=batch_size).astype(np.float32)
    return batch


def run_steps(mesh, local_batches):
    """NUM_STEPS adamw DPO steps; local_batches[i] is this process's rows of step i's global batch."""
    from flax import nnx

    from wind_jax import sharding, train
    from wind_jax.models import LlamaConfig, Transformer

    cfg = LlamaConfig.tiny(num_layers=1, hidden_size=32, intermediate_size=64, vocab_size=64)
    graphdef, state = sharding.create_sharded_state(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
    tx = train.make_optimizer(train.OptimizerConfig(learning_rate=1e-2, eps=1e-6))
    opt_state = train.init_optimizer_state(tx, state, mesh)
    step, losses = None, []
    for local in local_batches:
        batch = sharding.shard_host_batch(local, mesh)
        if step is None:
            step = train.jit_policy_step(graphdef, state, opt_state, batch, mesh, loss_name="dpo", optimizer=tx)
        state, opt_state, metrics = step(state, opt_state, batch)
        losses.append(float(metrics["loss"]))
    return state, losses, step.jitted._cache_size()


def gathered_params(state):
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    leaves = jax.tree_util.tree_leaves_with_path(state)
    full = multihost_utils.process_allgather([v for _, v in leaves], tiled=True)
    return {jax.tree_util.keystr(k): np.asarray(v) for (k, _), v in zip(leaves, full)}


def rows(batch, lo, hi):
    import jax

    return jax.tree.map(lambda x: x[lo:hi], batch)


def main(process_id, num_processes, port, out):
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import numpy as np

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from wind_jax import sharding

    assert sharding.initialize(f"localhost:{port}", num_processes, process_id)
    assert jax.process_count() == num_processes and len(jax.devices()) == LOCAL_DEVICES * num_processes
    mesh = sharding.make_mesh(MESH)
    per = 8 // num_processes
    local = [rows(make_global_batch(seed=s), process_id * per, (process_id + 1) * per) for s in range(NUM_STEPS)]
    state, losses, compiles = run_steps(mesh, local)
    np.savez(out, losses=np.array(losses), compiles=compiles, **gathered_params(state))
    jax.distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])

"""A frozen model's forward on the loop's mesh (the oracles' judge / reward model; DESIGN.md "Scale").

    fwd = FrozenForward(model, fn, mesh)      # parameters placed by their logical axes, once
    out = fwd(tokens, mask, ...)              # this process's rows in, this process's rows of fn out

`fn(module, *arrays) -> [B, ...]` is jitted once per input shape with explicit shardings: parameters by
`FROZEN_AXIS_RULES`, every input and the output split over the "batch" mesh axes. Multi-host, each process
passes its own rows (equal counts on every process, as the loop's judging does); rows are padded to a
multiple of the batch shards with copies of the last row and the padding is dropped from the output.

`FROZEN_AXIS_RULES` is `wind_jax.sharding.LOGICAL_AXIS_RULES` with "embed" split over ("data", "fsdp")
instead of "fsdp" alone: a frozen model has no gradients or optimizer state to keep data-parallel, so
nothing of it is replicated over "data" (on the loop's default all-"data" mesh the judge would otherwise be
a full replica on every device).
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from wind_jax import sharding

FROZEN_AXIS_RULES = tuple((name, ("data", "fsdp") if name == "embed" else axes)
                          for name, axes in sharding.LOGICAL_AXIS_RULES)


def frozen_shardings(state, mesh: Mesh, rules=FROZEN_AXIS_RULES):
    """NamedShardings of a frozen model's nnx state (or its ShapeDtypeStructs) on `mesh`."""
    return sharding.state_shardings(state, mesh, rules)


def row_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Rows [B, ...] split over the "batch" mesh axes (B must be a multiple of `batch_shards(mesh)`)."""
    return NamedSharding(mesh, sharding.batch_spec(ndim, mesh))


def batch_shards(mesh: Mesh) -> int:
    return sharding.batch_axis_size(mesh)


def jit_frozen(graphdef, state, fn: Callable, mesh: Mesh, *, num_inputs: int, rules=FROZEN_AXIS_RULES,
               out_ndim: int = 1):
    """jax.jit of (state, *inputs) -> fn(nnx.merge(graphdef, state), *inputs) with the frozen state's
    shardings, 2-D [B, T] inputs and a [B, ...] output (rank `out_ndim`) split over the batch axes.
    `state` may hold ShapeDtypeStructs (ahead-of-time plans lower the returned function)."""
    from flax import nnx

    rows = row_sharding(mesh, 2)
    return jax.jit(lambda s, *xs: fn(nnx.merge(graphdef, s), *xs),
                   in_shardings=(frozen_shardings(state, mesh, rules),) + (rows,) * num_inputs,
                   out_shardings=row_sharding(mesh, out_ndim))


class FrozenForward:
    """`fn` of a frozen nnx module on `mesh` (module docstring). The placed parameters may share buffers
    with `model`'s arrays when they already have the target layout: do not donate those."""

    def __init__(self, model, fn: Callable, mesh: Mesh, *, num_inputs: int, rules=FROZEN_AXIS_RULES,
                 out_ndim: int = 1):
        from flax import nnx

        if not isinstance(model, nnx.Module):
            raise ValueError(f"mesh= needs a Flax NNX module (e.g. a wind_jax Transformer or RewardHead), got "
                             f"{type(model).__name__}")
        if not isinstance(mesh, Mesh):
            raise ValueError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
        graphdef, state = nnx.split(model)
        self.mesh = mesh
        self.state = jax.device_put(state, frozen_shardings(state, mesh, rules))
        self.jitted = jit_frozen(graphdef, state, fn, mesh, num_inputs=num_inputs, rules=rules, out_ndim=out_ndim)
        self.num_inputs = num_inputs

    def __call__(self, *local_rows) -> np.ndarray:
        if len(local_rows) != self.num_inputs:
            raise ValueError(f"FrozenForward: expected {self.num_inputs} inputs, got {len(local_rows)}")
        xs = [np.asarray(x) for x in local_rows]
        b = xs[0].shape[0]
        if b == 0 or any(x.shape[0] != b for x in xs):
            raise ValueError(f"FrozenForward: inputs need the same positive row count, got "
                             f"{[x.shape[0] for x in xs]}")
        per_process = max(1, batch_shards(self.mesh) // jax.process_count())
        pad = -b % per_process
        if pad:
            xs = [np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) for x in xs]
        g = sharding.shard_host_batch(tuple(xs), self.mesh)
        with jax.set_mesh(self.mesh):
            out = self.jitted(self.state, *g)
        return sharding.local_rows(out)[:b]

"""wind_jax.sharding: mesh shapes, the rules table, state and batch shardings (8 fake CPU devices)."""
import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from wind_jax import sharding


@pytest.mark.parametrize(
    "shape,expected",
    [((-1, 1, 1), (8, 1, 1)), ((2, -1, 1), (2, 4, 1)), ((2, 2, -1), (2, 2, 2)), ((1, 1, 8), (1, 1, 8))],
)
def test_resolve_mesh_shape(shape, expected):
    assert sharding.resolve_mesh_shape(shape, 8) == expected
    mesh = sharding.make_mesh(shape)
    assert tuple(mesh.shape.values()) == expected
    assert mesh.axis_names == sharding.MESH_AXES


@pytest.mark.parametrize("shape", [(-1, -1, 1), (3, -1, 1), (2, 2, 1), (0, 8, 1), (8, 1)])
def test_bad_mesh_shape_raises(shape):
    with pytest.raises(ValueError, match="mesh shape"):
        sharding.resolve_mesh_shape(shape, 8)


def test_logical_to_spec_rules_and_divisibility():
    mesh = sharding.make_mesh((2, 2, 2))
    assert sharding.logical_to_spec(("embed", "mlp"), (8, 16), mesh) == P("fsdp", "tensor")
    assert sharding.logical_to_spec(("vocab", "embed"), (10, 8), mesh) == P("tensor", "fsdp")
    # 7 is not divisible by tensor=2: replicated rather than an error.
    assert sharding.logical_to_spec(("vocab", "embed"), (7, 8), mesh) == P(None, "fsdp")
    # A mesh axis is used once: heads and mlp both want "tensor".
    assert sharding.logical_to_spec(("heads", "mlp"), (4, 4), mesh) == P("tensor", None)
    assert sharding.logical_to_spec(("batch", "length"), (8, 3), mesh) == P(("data", "fsdp"), None)
    # Size-1 mesh axes are dropped.
    mesh81 = sharding.make_mesh((8, 1, 1))
    assert sharding.logical_to_spec(("embed", "mlp"), (8, 16), mesh81) == P(None, None)
    with pytest.raises(ValueError, match="not in the rules table"):
        sharding.logical_to_spec(("nonsense",), (8,), mesh)


class _Tiny(nnx.Module):
    def __init__(self, rngs):
        init = nnx.initializers.normal(0.02)
        self.w = nnx.Param(init(rngs.params(), (8, 16)), out_sharding=("embed", "mlp"))
        self.e = nnx.Param(init(rngs.params(), (12, 8)), out_sharding=("vocab", "embed"))
        self.b = nnx.Param(np.zeros((16,), np.float32))


def test_state_shardings_and_sharded_init():
    mesh = sharding.make_mesh((2, 2, 2))
    graphdef, state = sharding.create_sharded_state(lambda: _Tiny(nnx.Rngs(0)), mesh)
    assert state["w"].value.sharding.spec == P("fsdp", "tensor")
    assert state["e"].value.sharding.spec == P("tensor", "fsdp")
    assert state["b"].value.sharding.spec == P()
    # Values equal an unsharded init with the same seed.
    with nnx.use_eager_sharding(False):
        ref = nnx.split(_Tiny(nnx.Rngs(0)))[1]
    np.testing.assert_allclose(np.asarray(state["w"].value), np.asarray(ref["w"].value), rtol=1e-6)
    moved = sharding.shard_state(ref, mesh)
    assert moved["w"].value.sharding.spec == P("fsdp", "tensor")


def test_shard_host_batch_single_process():
    mesh = sharding.make_mesh((2, 4, 1))
    local = {"tokens": np.arange(48, dtype=np.int32).reshape(8, 6), "weight": np.ones(8, np.float32)}
    out = sharding.shard_host_batch(local, mesh)
    assert out["tokens"].shape == (8, 6)
    assert out["tokens"].sharding.spec == P(("data", "fsdp"), None)
    assert len(out["tokens"].addressable_shards) == 8
    assert out["tokens"].addressable_shards[3].data.shape == (1, 6)
    np.testing.assert_array_equal(np.asarray(out["tokens"]), local["tokens"])
    assert sharding.batch_axis_size(mesh) == 8


def test_initialize_single_process_is_noop(monkeypatch):
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID",
              "OMPI_COMM_WORLD_SIZE", "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    assert sharding.initialize() is False
    assert sharding.initialize(num_processes=1) is False
    with pytest.raises(ValueError, match="num_processes"):
        sharding.initialize(num_processes=0)
    assert jax.process_count() == 1


def test_batch_not_divisible_by_the_shards_is_replicated():
    mesh = sharding.make_mesh((4, 2, 1))
    assert sharding.batch_spec(2, mesh, size=16) == P(("data", "fsdp"), None)
    assert sharding.batch_spec(2, mesh, size=3) == P(None, None)
    batch = {"a": np.zeros((3, 5), np.float32), "b": np.zeros((16,), np.int32)}
    sh = sharding.batch_shardings(batch, mesh)
    assert sh["a"].spec == P(None, None) and sh["b"].spec == P(("data", "fsdp"))
    g = sharding.shard_host_batch(batch, mesh)
    np.testing.assert_array_equal(np.asarray(g["a"]), batch["a"])

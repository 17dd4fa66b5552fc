"""wind_jax.train.checkpoint: round trip, keep-last-N, config refusal, other-mesh restore, atomicity."""
import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from wind_jax.train.checkpoint import (RESUME_NEUTRAL_FIELDS, CheckpointConfigError, Checkpointer,
                                       check_compatible, flatten_config)


def _state(seed=0):
    rng = np.random.default_rng(seed)
    return {"params": {"w": jnp.asarray(rng.standard_normal((8, 4)), jnp.float32),
                       "b": jnp.asarray(rng.standard_normal(4), jnp.float32)},
            "opt": (jnp.zeros(4), jnp.asarray(3, jnp.int32)),
            "rng": jax.random.key_data(jax.random.key(seed))}


def _assert_tree_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_keep_last_n_and_meta(tmp_path):
    cfg = {"method": "wind_sq", "model": {"hidden": 16}}
    with Checkpointer(tmp_path, config=cfg, max_to_keep=2) as ck:
        for step in (10, 20, 30):
            ck.save(step, _state(step), {"iteration": step // 10, "history": [{"a": 1.5}]},
                    extra={"batch": np.arange(step)} if step == 30 else None)
        ck.wait()
        assert ck.all_steps() == [20, 30]
        state, meta, extra = ck.restore()
        _assert_tree_equal(state, _state(30))
        assert meta["iteration"] == 3 and meta["history"] == [{"a": 1.5}]
        assert meta["config"] == flatten_config(cfg)
        np.testing.assert_array_equal(extra["batch"], np.arange(30))
        state20, meta20, extra20 = ck.restore(20, target=_state(0))
        _assert_tree_equal(state20, _state(20))
        assert extra20 is None and meta20["iteration"] == 2
        with pytest.raises(FileNotFoundError, match="10"):
            ck.restore(10)


def test_incompatible_config_names_field(tmp_path):
    with Checkpointer(tmp_path, config={"method": "wind_sq", "model": {"hidden": 16}}) as ck:
        ck.save(1, _state(), {"iteration": 0})
    # num_iterations may change on resume (ignored); model.hidden may not
    with Checkpointer(tmp_path, config={"method": "wind_sq", "model": {"hidden": 16},
                                         "num_iterations": 9}) as ck:
        ck.restore()
    with Checkpointer(tmp_path, config={"method": "wind_sq", "model": {"hidden": 32}}) as ck:
        with pytest.raises(CheckpointConfigError, match=r"'model\.hidden'.*16.*32"):
            ck.restore()
    with pytest.raises(ValueError, match="'method'"):
        check_compatible({"method": "sppo"}, {"method": "dpo"})
    with pytest.raises(ValueError, match="'extra_field'"):
        check_compatible({"a": 1}, {"a": 1, "extra_field": 2})


def test_restore_onto_different_mesh(tmp_path):
    devices = jax.devices()
    assert len(devices) >= 8, "conftest provides 8 fake CPU devices"
    mesh_a = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    mesh_b = jax.make_mesh((2, 4), ("fsdp", "tensor"), axis_types=(AxisType.Auto,) * 2)
    state = _state(7)
    state["params"]["w"] = jax.device_put(state["params"]["w"], NamedSharding(mesh_a, P("data", None)))
    with Checkpointer(tmp_path) as ck:
        ck.save(5, state, {"iteration": 1})
        ck.wait()
        repl = NamedSharding(mesh_b, P())
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), state)
        w_sharding = NamedSharding(mesh_b, P("tensor", "fsdp"))
        target["params"]["w"] = jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=w_sharding)
        restored, _, _ = ck.restore(target=target)
    assert restored["params"]["w"].sharding == w_sharding
    assert restored["params"]["b"].sharding == repl
    _assert_tree_equal(restored, _state(7))


def test_half_written_checkpoint_is_never_loaded(tmp_path):
    with Checkpointer(tmp_path, async_save=False) as ck:
        ck.save(1, _state(1), {"iteration": 1})
        ck.save(2, _state(2), {"iteration": 2})
    # Simulate a crash during an (atomic) Orbax save: a temporary directory for step 3 that was never
    # renamed, missing files -- and an unfinalized copy of a complete one.
    shutil.copytree(tmp_path / "2", tmp_path / "3.orbax-checkpoint-tmp-1700000000")
    os.remove(next((tmp_path / "3.orbax-checkpoint-tmp-1700000000" / "meta").iterdir()))
    shutil.copytree(tmp_path / "2", tmp_path / "4.orbax-checkpoint-tmp-1700000001")
    with Checkpointer(tmp_path) as ck:
        assert ck.latest_step() == 2
        state, meta, _ = ck.restore()
        assert meta["iteration"] == 2
        _assert_tree_equal(state, _state(2))
    assert not any("tmp" in p.name for p in tmp_path.iterdir()), "tmp dirs are cleaned up on open"


def test_async_save_becomes_visible_only_when_finished(tmp_path):
    big = {"w": jnp.ones((512, 512))}
    ck = Checkpointer(tmp_path, async_save=True)
    ck.save(1, big, {"iteration": 0})
    # whatever the timing, a listed step must be fully restorable
    for step in ck.all_steps():
        ck.restore(step)
    ck.wait()
    assert ck.all_steps() == [1]
    restored, _, _ = ck.restore(1)
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.ones((512, 512)))
    ck.close()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="max_to_keep"):
        Checkpointer(tmp_path, max_to_keep=0)
    with Checkpointer(tmp_path) as ck, pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        ck.restore()


# ------------------------------------------------------------------------ fields a resume may change
def _run_config() -> dict:
    """The run config the loop stores: {"loop": LoopConfig, "experiment": llm_alignment's get_config()}."""
    from experiments.configs.llm_alignment import get_config
    from wind_jax.train import LoopConfig

    return flatten_config({"loop": dataclasses.asdict(LoopConfig()), "experiment": get_config().to_dict()})


def _changed(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v * 2 + 1
    if isinstance(v, str):
        return v + "_changed"
    return "changed"


@pytest.mark.parametrize("field", sorted(RESUME_NEUTRAL_FIELDS))
def test_each_resume_neutral_field_exists_and_may_change(field):
    saved = _run_config()
    keys = [k for k in saved if k == field or k.endswith("." + field)]
    assert keys, f"RESUME_NEUTRAL_FIELDS names {field!r}, which is no field of the run config"
    current = {**saved, **{k: _changed(saved[k]) for k in keys}}
    check_compatible(saved, current)


def test_loop_checkpoint_cadence_is_the_configs_field_name():
    keys = _run_config()
    assert "loop.checkpoint_every_steps" in keys and "experiment.loop.checkpoint_every_steps" in keys


@pytest.mark.parametrize("key", ["loop.learning_rate", "experiment.loop.learning_rate", "loop.beta",
                                 "loop.method", "experiment.model.hidden_size", "experiment.seed"])
def test_a_field_that_changes_the_numbers_is_still_refused(key):
    saved = _run_config()
    assert key in saved
    with pytest.raises(CheckpointConfigError, match=rf"field '{key}'"):
        check_compatible(saved, {**saved, key: _changed(saved[key])})

"""wind_jax.train.steps on 8 fake CPU devices: mesh invariance, shardings, accumulation, one compile."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from wind_jax import sharding, train
from wind_jax.models import LlamaConfig, RewardHead, Transformer, sequence_logprobs

CFG = LlamaConfig.tiny(num_layers=1, hidden_size=32, intermediate_size=64, vocab_size=64)
B, T, PROMPT = 8, 10, 4


def make_model(offset=False):
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    return train.PolicyWithOffset(model, rngs=nnx.Rngs(1)) if offset else model


def make_batch(seed=0, names=("chosen", "rejected"), ragged=True):
    rng = np.random.default_rng(seed)
    batch = {"tokens": {}, "response_mask": {}, "attention_mask": {}}
    for name in names:
        lengths = rng.integers(PROMPT + 2, T + 1, B) if ragged else np.full(B, T)
        pos = np.arange(T)[None]
        batch["tokens"][name] = rng.integers(1, CFG.vocab_size, (B, T)).astype(np.int32)
        batch["attention_mask"][name] = pos < lengths[:, None]
        batch["response_mask"][name] = (pos >= PROMPT) & (pos < lengths[:, None])
    for key in ("ref_chosen", "ref_rejected", "prev_y", "ref_y"):
        batch[key] = (rng.normal(size=B) - 20.0).astype(np.float32)
    batch["target"] = rng.uniform(size=B).astype(np.float32)
    batch["weight"] = rng.uniform(0.5, 2.0, size=B).astype(np.float32)
    return batch


def run_one_step(mesh, loss_name="dpo", optimizer=None, num_micro_batches=1, weighting="example", offset=False,
                 batch=None, hparams=None):
    graphdef, state = sharding.create_sharded_state(lambda: make_model(offset), mesh)
    optimizer = optimizer or train.make_optimizer(train.OptimizerConfig(learning_rate=1e-2, eps=1e-6))
    opt_state = train.init_optimizer_state(optimizer, state, mesh)
    batch = sharding.shard_host_batch(batch if batch is not None else make_batch(), mesh)
    step = train.jit_policy_step(graphdef, state, opt_state, batch, mesh, loss_name=loss_name, optimizer=optimizer,
                                 num_micro_batches=num_micro_batches, weighting=weighting, hparams=hparams)
    state, opt_state, metrics = step(state, opt_state, batch)
    return graphdef, state, opt_state, metrics, step


def flat(tree):
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def single_device():
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    _, state, _, metrics, _ = run_one_step(mesh)
    return flat(state), {k: float(v) for k, v in metrics.items()}


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_one_step_matches_single_device_and_shardings(shape, single_device):
    ref_state, ref_metrics = single_device
    mesh = sharding.make_mesh(shape)
    _, state, opt_state, metrics, step = run_one_step(mesh)
    for k, v in flat(state).items():
        np.testing.assert_allclose(v, ref_state[k], atol=1e-5, rtol=1e-5, err_msg=k)
    for k, v in metrics.items():
        np.testing.assert_allclose(float(v), ref_metrics[k], atol=1e-5, rtol=1e-5, err_msg=k)
    fsdp = "fsdp" if mesh.shape["fsdp"] > 1 else None
    tensor = "tensor" if mesh.shape["tensor"] > 1 else None
    up = state["layers"]["mlp"]["up_proj"]["kernel"]       # stacked [L, D, F]: "layers" is replicated
    down = state["layers"]["mlp"]["down_proj"]["kernel"]
    assert up.value.sharding.spec == P(None, fsdp, tensor)
    assert down.value.sharding.spec == P(None, tensor, fsdp)
    assert state["embed"]["embedding"].value.sharding.spec == P(tensor, fsdp)
    adam = opt_state[1][0]
    for moments in (adam.mu, adam.nu):
        assert moments["layers"]["mlp"]["up_proj"]["kernel"].value.sharding.spec == P(None, fsdp, tensor)
        assert moments["embed"]["embedding"].value.sharding.spec == P(tensor, fsdp)
    # A second step reuses the compiled executable (outputs carry the input shardings) and donates its inputs.
    old = state["embed"]["embedding"].value
    state, opt_state, metrics = step(state, opt_state, sharding.shard_host_batch(make_batch(5), mesh))
    assert step.jitted._cache_size() == 1
    assert old.is_deleted()
    assert np.isfinite(float(metrics["loss"]))


@pytest.fixture(scope="module")
def dpo_reference():
    """Independent reference: jax.grad of a separately written weighted DPO objective built on
    models.sequence_logprobs (no wind_jax.train / wind_jax.losses code)."""
    beta, batch = 0.1, make_batch(1)
    graphdef, params = nnx.split(make_model())
    ntok = sum(batch["response_mask"][n][:, 1:].sum(1) for n in ("chosen", "rejected")).astype(np.float32)
    out = {}
    for weighting, w in (("example", batch["weight"]), ("tokens", batch["weight"] * ntok)):
        def objective(p, w=w):
            m = nnx.merge(graphdef, p)
            lp = {n: sequence_logprobs(m, batch["tokens"][n], batch["response_mask"][n], batch["attention_mask"][n])
                  for n in ("chosen", "rejected")}
            margin = (lp["chosen"] - batch["ref_chosen"]) - (lp["rejected"] - batch["ref_rejected"])
            return jnp.sum(w * -jax.nn.log_sigmoid(beta * margin)) / jnp.sum(w)

        out[weighting] = jax.jit(jax.value_and_grad(objective))(params)
    return batch, params, out


@pytest.mark.parametrize("num_micro_batches,weighting",
                         [(1, "example"), (4, "tokens"), pytest.param(2, "example", marks=pytest.mark.slow)])
def test_sgd_step_and_accumulation_equal_reference_gradient(dpo_reference, num_micro_batches, weighting):
    """One SGD step (lr 0.5) with k micro-batches equals params - lr * full-batch reference gradient."""
    batch, params, ref = dpo_reference
    lr = 0.5
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    _, state, _, metrics, _ = run_one_step(mesh, optimizer=optax.sgd(lr), batch=batch, hparams={"beta": 0.1},
                                           num_micro_batches=num_micro_batches, weighting=weighting)
    loss, grads = ref[weighting]
    expected = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    got, want = flat(state), flat(expected)
    assert got.keys() == want.keys()
    assert max(np.abs(want[k] - flat(params)[k]).max() for k in want) > 1e-3  # the step moves the params
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-5, rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(optax.global_norm(grads)), rtol=1e-4)


@pytest.mark.slow
def test_offset_loss_trains_offset_head_and_needs_wrapper():
    mesh = sharding.make_mesh((2, 1, 1), devices=jax.devices()[:2])
    batch = make_batch(3, names=("y",))
    _, state, _, metrics, _ = run_one_step(mesh, loss_name="wind_sq_offset", batch=batch, offset=True,
                                           optimizer=train.make_optimizer(train.OptimizerConfig(
                                               name="rmsprop", learning_rate=1e-3)))
    assert np.abs(np.asarray(state["offset_head"]["bias"].value)).max() > 0  # b(x) received a gradient
    assert np.isfinite(float(metrics["loss"]))
    with pytest.raises(ValueError, match="PolicyWithOffset"):
        run_one_step(mesh, loss_name="wind_sq_offset", batch=batch, offset=False)


def test_logprob_step_matches_sequence_logprobs():
    mesh = sharding.make_mesh((2, 2, 2))
    graphdef, state = sharding.create_sharded_state(make_model, mesh)
    batch = make_batch(4)
    out = train.jit_logprob_step(graphdef, state, batch, mesh)(state, sharding.shard_host_batch(batch, mesh))
    model = make_model()
    for n in ("chosen", "rejected"):
        ref = sequence_logprobs(model, batch["tokens"][n], batch["response_mask"][n], batch["attention_mask"][n])
        np.testing.assert_allclose(np.asarray(out[n]), np.asarray(ref), rtol=1e-5, atol=1e-4)


def _bt_reward():
    return RewardHead(make_model(), rngs=nnx.Rngs(2))


@pytest.mark.slow
def test_reward_step_bradley_terry_loss_and_learning():
    mesh = sharding.make_mesh((2, 2, 2))
    graphdef, state = sharding.create_sharded_state(_bt_reward, mesh)
    tx = train.make_optimizer(train.OptimizerConfig(learning_rate=3e-3))
    opt_state = train.init_optimizer_state(tx, state, mesh)
    batch = make_batch(6)
    del batch["target"]  # hard labels: chosen wins
    z0 = np.asarray(train.pair_logits(nnx.merge(graphdef, state), batch))
    step = train.jit_reward_step(graphdef, state, opt_state, batch, mesh, optimizer=tx)
    sb = sharding.shard_host_batch(batch, mesh)
    state, opt_state, m0 = step(state, opt_state, sb)
    w = batch["weight"].astype(np.float64)
    np.testing.assert_allclose(float(m0["loss"]), np.sum(w * np.logaddexp(0, -z0)) / w.sum(), rtol=1e-5)
    for _ in range(15):
        state, opt_state, m = step(state, opt_state, sb)
    assert float(m["loss"]) < 0.5 * float(m0["loss"]) and float(m["accuracy"]) == 1.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="optimizer name"):
        train.make_optimizer(train.OptimizerConfig(name="sgdx"))
    mesh = sharding.make_mesh((8, 1, 1))
    with pytest.raises(ValueError, match="ref_rejected"):
        b = make_batch()
        del b["ref_rejected"]
        run_one_step(mesh, batch=b)
    with pytest.raises(ValueError, match="num_micro_batches"):
        run_one_step(mesh, num_micro_batches=3)

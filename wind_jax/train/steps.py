"""Pure training steps over (graphdef, state) with explicit shardings and donation.

    graphdef, state = sharding.create_sharded_state(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
    tx = make_optimizer(OptimizerConfig(name="adamw", learning_rate=1e-5, max_grad_norm=1.0))
    opt_state = init_optimizer_state(tx, state, mesh)           # sharded like the params, before any step
    step = jit_policy_step(graphdef, state, opt_state, batch, mesh, loss_name="dpo", optimizer=tx)
    state, opt_state, metrics = step(state, opt_state, batch)   # state and opt_state are donated

LLM batch layout (wind_jax.api): {"tokens": {resp: [B, T]}, "response_mask": {resp: [B, T]},
"attention_mask": {resp: [B, T]}, <LossSpec.batch_keys>: [B], "weight": [B] (optional, default 1)}.
Summed response log-probs follow MATH.md ("log pi(y|x) is a SUM over response tokens", float32).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from wind_jax import losses, sharding
from wind_jax.models import Transformer, token_logprobs

Array = jax.Array
Batch = Mapping[str, Any]


# ------------------------------------------------------------------------------------------ optimizer


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW or RMSprop with optional global-norm clipping and linear warmup (+ cosine decay if decay_steps)."""

    name: str = "adamw"
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    decay: float = 0.9  # RMSprop second-moment decay
    momentum: float = 0.0  # RMSprop momentum
    max_grad_norm: float | None = 1.0
    warmup_steps: int = 0
    decay_steps: int = 0
    # Keep the learning rate in the optimizer state (optax.inject_hyperparams): an outer loop sets
    # opt_state.hyperparams["learning_rate"] per iteration without recompiling. Excludes warmup/decay.
    injectable_learning_rate: bool = False


@functools.lru_cache(maxsize=None)
def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """optax chain: clip_by_global_norm(max_grad_norm) -> AdamW / RMSprop with the learning-rate schedule.

    Cached per config, so equal configs give the same object and jitted steps taking it as a static
    argument compile once."""
    if config.learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {config.learning_rate}")
    if config.max_grad_norm is not None and config.max_grad_norm <= 0:
        raise ValueError(f"max_grad_norm must be > 0 or None, got {config.max_grad_norm}")
    if config.name not in ("adamw", "rmsprop"):
        raise ValueError(f'optimizer name must be "adamw" or "rmsprop", got {config.name!r}')
    if config.injectable_learning_rate:
        if config.warmup_steps or config.decay_steps:
            raise ValueError("injectable_learning_rate excludes warmup_steps / decay_steps (the caller sets it)")
        factory = functools.partial(_optimizer_chain, config)
        return optax.inject_hyperparams(factory)(learning_rate=config.learning_rate)
    lr: Any = config.learning_rate
    if config.decay_steps:
        lr = optax.warmup_cosine_decay_schedule(0.0, lr, config.warmup_steps, config.decay_steps)
    elif config.warmup_steps:
        lr = optax.join_schedules([optax.linear_schedule(0.0, lr, config.warmup_steps), optax.constant_schedule(lr)],
                                  [config.warmup_steps])
    return _optimizer_chain(config, lr)


def _optimizer_chain(config: OptimizerConfig, learning_rate) -> optax.GradientTransformation:
    if config.name == "adamw":
        opt = optax.adamw(learning_rate, b1=config.b1, b2=config.b2, eps=config.eps,
                          weight_decay=config.weight_decay)
    else:
        opt = optax.rmsprop(learning_rate, decay=config.decay, eps=config.eps, momentum=config.momentum or None)
        if config.weight_decay:
            opt = optax.chain(optax.add_decayed_weights(config.weight_decay), opt)
    if config.max_grad_norm is None:
        return opt
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), opt)


def _params(state):
    """(trainable nnx.Param state, everything else)."""
    return nnx.split_state(state, nnx.Param, ...)


def init_optimizer_state(optimizer: optax.GradientTransformation, state, mesh: Mesh):
    """Optimizer state created directly with the params' shardings (moments inherit each Param's metadata)."""
    params, _ = _params(state)
    abstract = jax.eval_shape(optimizer.init, params)
    return jax.jit(optimizer.init, out_shardings=sharding.state_shardings(abstract, mesh))(params)


# ------------------------------------------------------------------------------- policy outputs (log-probs)


class PolicyWithOffset(nnx.Module):
    """A policy plus the learned per-prompt offset b(x) of wind_sq_offset / wind_nce (MATH.md, Alg. 3).

    b(x) is a linear scalar head on the final hidden state of the last prompt token (zero-initialized).
    """

    def __init__(self, policy: Transformer, *, rngs: nnx.Rngs):
        self.policy = policy
        d = policy.config.hidden_size
        self.offset_head = nnx.Linear(d, 1, kernel_init=nnx.initializers.zeros, rngs=rngs,
                                      kernel_metadata={"out_sharding": ("embed", None), "eager_sharding": False},
                                      bias_metadata={"eager_sharding": False})

    def offset(self, hidden: Array, response_mask: Array) -> Array:
        """b(x) [B] float32 from hidden [B, T, D] at the position just before the first response token."""
        last_prompt = jnp.maximum(jnp.argmax(response_mask.astype(jnp.int32), axis=1) - 1, 0)
        h = jnp.take_along_axis(hidden, last_prompt[:, None, None], axis=1)[:, 0]
        return self.offset_head(h.astype(jnp.float32))[:, 0].astype(jnp.float32)


def _split_module(module) -> tuple[Transformer, PolicyWithOffset | None]:
    if isinstance(module, PolicyWithOffset):
        return module.policy, module
    return module, None


def response_logprobs(module, tokens: Array, response_mask: Array, attention_mask: Array | None = None
                      ) -> tuple[Array, Array]:
    """(summed response log-probs [B] float32, final hidden states [B, T, D]) in ONE forward pass.

    Same quantity as wind_jax.models.sequence_logprobs: sum_t response_mask[t] log p(tokens[t] | tokens[<t]).
    """
    policy, _ = _split_module(module)
    hidden = policy.hidden(tokens, attention_mask=attention_mask)
    lp = token_logprobs(policy.logits_from_hidden(hidden), tokens)
    return jnp.sum(jnp.where(response_mask[:, 1:].astype(bool), lp, 0.0), axis=-1), hidden


def policy_outputs(module, batch: Batch, keys: tuple[str, ...]) -> dict[str, Array]:
    """The LossSpec ``policy_keys``: summed log-probs per response name, and "offset" b(x) if asked."""
    out, hiddens = {}, {}
    for name in keys:
        if name == "offset":
            continue
        if name not in batch["tokens"]:
            raise ValueError(f'batch["tokens"] has no response {name!r}; the loss needs {list(keys)}')
        attn = batch.get("attention_mask", {}).get(name)
        out[name], hiddens[name] = response_logprobs(module, batch["tokens"][name], batch["response_mask"][name],
                                                     attn)
    if "offset" in keys:
        _, head = _split_module(module)
        if head is None:
            raise ValueError('the loss needs the policy output "offset": wrap the model in PolicyWithOffset')
        first = next(k for k in keys if k != "offset")
        out["offset"] = head.offset(hiddens[first], batch["response_mask"][first])
    return out


# ----------------------------------------------------------------------------------------- policy step


def _example_weights(batch: Batch, policy_keys, weighting: str) -> Array:
    first = next(k for k in policy_keys if k != "offset")
    b = batch["tokens"][first].shape[0]
    w = jnp.asarray(batch["weight"], jnp.float32) if "weight" in batch else jnp.ones((b,), jnp.float32)
    if weighting == "tokens":
        ntok = sum(jnp.sum(batch["response_mask"][k][:, 1:], axis=1) for k in policy_keys if k != "offset")
        w = w * ntok.astype(jnp.float32)
    elif weighting != "example":
        raise ValueError(f'weighting must be "example" or "tokens", got {weighting!r}')
    return w


def _micro_batches(tree, k: int):
    """[B, ...] -> [k, B/k, ...] with micro-batch j = rows j, j+k, ... (keeps every shard in every micro-batch)."""

    def split(x):
        if x.shape[0] % k:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by num_micro_batches={k}")
        return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)

    return jax.tree.map(split, tree)


def _select(batch: Batch, spec: losses.LossSpec) -> dict:
    """Only the arrays the step uses (policy responses, frozen batch keys, "weight")."""
    names = [k for k in spec.policy_keys if k != "offset"]
    out = {field: {n: batch[field][n] for n in names if n in batch.get(field, {})}
           for field in ("tokens", "response_mask", "attention_mask")}
    for k in spec.batch_keys:
        if k not in batch:
            raise ValueError(f"loss {spec.name!r}: batch is missing key {k!r}; it needs {list(spec.batch_keys)}")
        out[k] = batch[k]
    if "weight" in batch:
        out["weight"] = batch["weight"]
    return out


def policy_step(graphdef, state, opt_state, batch: Batch, loss_name: str, hparams: Mapping[str, float] | None = None,
                *, optimizer: optax.GradientTransformation, num_micro_batches: int = 1, weighting: str = "example"):
    """One optimizer update of the trainable policy on ``batch`` with loss ``loss_name`` (pure; jit it).

    Objective: sum_i w_i l_i / sum_i w_i over the WHOLE batch (w = batch["weight"], times the number of
    response tokens when weighting="tokens"); gradients are accumulated over ``num_micro_batches`` with
    lax.scan, each micro-batch contributing sum_{i in mb} w_i l_i / sum_all w, so the update equals the
    full-batch one. Returns (state, opt_state, metrics): metrics hold the loss's own metrics (averaged
    over micro-batches), "loss" (weighted), "grad_norm" (before clipping), "weight_sum".
    """
    spec = losses.get_loss(loss_name)
    hparams = dict(hparams or {})
    batch = _select(batch, spec)
    params, rest = _params(state)
    weights = _example_weights(batch, spec.policy_keys, weighting)
    total_weight = jnp.sum(weights)

    def weighted_loss(p, mb, w):
        module = nnx.merge(graphdef, p, rest)
        logps = policy_outputs(module, mb, spec.policy_keys)
        frozen = {k: mb[k] for k in spec.batch_keys}
        per_example, metrics = losses.compute_loss(spec, logps, frozen, hparams)
        return jnp.sum(w * per_example.astype(jnp.float32)) / total_weight, metrics

    grad_fn = jax.value_and_grad(weighted_loss, has_aux=True)
    if num_micro_batches == 1:
        (loss, metrics), grads = grad_fn(params, batch, weights)
    else:
        mbs, mws = _micro_batches(batch, num_micro_batches), _micro_batches(weights, num_micro_batches)

        def body(carry, xs):
            g_acc, l_acc = carry
            (l, m), g = grad_fn(params, *xs)
            return (jax.tree.map(jnp.add, g_acc, g), l_acc + l), m

        zeros = jax.tree.map(jnp.zeros_like, params)
        (grads, loss), metrics = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32)), (mbs, mws))
        metrics = jax.tree.map(lambda x: jnp.mean(x, axis=0), metrics)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {**metrics, "loss": loss, "grad_norm": grad_norm, "weight_sum": total_weight}
    return nnx.merge_state(params, rest), opt_state, metrics


# ---------------------------------------------------------------------------------------- log-prob step


def logprob_step(graphdef, state, batch: Batch) -> dict[str, Array]:
    """Frozen-model summed response log-probs {resp: [B] float32} for every response in batch["tokens"]."""
    module = nnx.merge(graphdef, state)
    out = {}
    for name in batch["tokens"]:
        attn = batch.get("attention_mask", {}).get(name)
        out[name] = jax.lax.stop_gradient(
            response_logprobs(module, batch["tokens"][name], batch["response_mask"][name], attn)[0])
    return out


# ----------------------------------------------------------------------------------------- reward step


def pair_logits(module, batch: Batch) -> Array:
    """logit of P(chosen beats rejected) [B] float32 from a reward or pairwise preference model.

    The module provides ``pair_logit(tokens_a, mask_a, tokens_b, mask_b)``: wind_jax.models.RewardHead
    (Bradley-Terry, r(a) - r(b)) and PreferenceHead (antisymmetric, so P(a, b) + P(b, a) = 1) both do.
    """
    tc, tr = batch["tokens"]["chosen"], batch["tokens"]["rejected"]
    mc, mr = batch["attention_mask"]["chosen"], batch["attention_mask"]["rejected"]
    if not hasattr(module, "pair_logit"):
        raise ValueError(f"reward_step: {type(module).__name__} has no pair_logit(tokens_a, mask_a, tokens_b, "
                         "mask_b) method (use wind_jax.models.RewardHead or PreferenceHead)")
    return module.pair_logit(tc, mc, tr, mr).astype(jnp.float32)


def reward_step(graphdef, state, opt_state, batch: Batch, *, optimizer: optax.GradientTransformation,
                label_smoothing: float = 0.0):
    """One update of a reward / preference model on preference pairs: weighted mean of
    -[(1-s) log sigmoid(z) + s log sigmoid(-z)], z = pair_logits (Bradley-Terry: z = r_c - r_r).
    A batch "target" [B] in [0, 1] (soft P(chosen beats rejected)) replaces 1 - s when given.
    Metrics: loss, accuracy (z > 0), rewards/margins (mean z), grad_norm."""
    params, rest = _params(state)
    b = batch["tokens"]["chosen"].shape[0]
    w = jnp.asarray(batch["weight"], jnp.float32) if "weight" in batch else jnp.ones((b,), jnp.float32)
    target = (jnp.asarray(batch["target"], jnp.float32) if "target" in batch
              else jnp.full((b,), 1.0 - label_smoothing, jnp.float32))

    def loss_fn(p):
        z = pair_logits(nnx.merge(graphdef, p, rest), batch)
        per = -(target * jax.nn.log_sigmoid(z) + (1.0 - target) * jax.nn.log_sigmoid(-z))
        return jnp.sum(w * per) / jnp.sum(w), z

    (loss, z), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {"loss": loss, "accuracy": jnp.sum(w * (z > 0)) / jnp.sum(w), "rewards/margins": jnp.mean(z),
               "grad_norm": grad_norm}
    return nnx.merge_state(params, rest), opt_state, metrics


# ------------------------------------------------------------------------------------ jitted, sharded


def _replicated_tree(tree, mesh: Mesh):
    return jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), tree)


def jit_policy_step(graphdef, state, opt_state, batch: Batch, mesh: Mesh, *, loss_name: str,
                    optimizer: optax.GradientTransformation, hparams: Mapping[str, float] | None = None,
                    num_micro_batches: int = 1, weighting: str = "example", donate: bool = True) -> Callable:
    """``policy_step`` jitted with explicit in/out shardings (params and optimizer state by their logical
    axes, batch split over the "batch" mesh axes, metrics replicated) and donation of state/opt_state.

    ``state``, ``opt_state``, ``batch`` may be arrays or ShapeDtypeStructs: only shapes are read here.
    hparams are static (the loss validators need concrete values); a new value compiles a new step.
    Returns fn(state, opt_state, batch) -> (state, opt_state, metrics).
    """
    spec = losses.get_loss(loss_name)
    state_sh = sharding.state_shardings(state, mesh)
    opt_sh = sharding.state_shardings(opt_state, mesh)
    batch = _select(batch, spec)
    batch_sh = sharding.batch_shardings(batch, mesh)
    fn = lambda s, o, b: policy_step(graphdef, s, o, _select(b, spec), loss_name, hparams, optimizer=optimizer,
                                     num_micro_batches=num_micro_batches, weighting=weighting)
    metrics_shape = jax.eval_shape(fn, state, opt_state, batch)[2]
    jitted = jax.jit(fn, in_shardings=(state_sh, opt_sh, batch_sh),
                     out_shardings=(state_sh, opt_sh, _replicated_tree(metrics_shape, mesh)),
                     donate_argnums=(0, 1) if donate else ())

    def step(s, o, b):
        with jax.set_mesh(mesh):
            return jitted(s, o, _select(b, spec))

    step.jitted = jitted
    return step


def jit_logprob_step(graphdef, state, batch: Batch, mesh: Mesh) -> Callable:
    """``logprob_step`` jitted with the state's shardings and the batch split over the batch axes."""
    batch = {f: batch[f] for f in ("tokens", "response_mask", "attention_mask") if f in batch}
    state_sh = sharding.state_shardings(state, mesh)
    batch_sh = sharding.batch_shardings(batch, mesh)
    out_sh = {n: NamedSharding(mesh, sharding.batch_spec(1, mesh)) for n in batch["tokens"]}
    jitted = jax.jit(lambda s, b: logprob_step(graphdef, s, b), in_shardings=(state_sh, batch_sh),
                     out_shardings=out_sh)

    def step(s, b):
        with jax.set_mesh(mesh):
            return jitted(s, {f: b[f] for f in batch})

    step.jitted = jitted
    return step


def jit_reward_step(graphdef, state, opt_state, batch: Batch, mesh: Mesh, *,
                    optimizer: optax.GradientTransformation, label_smoothing: float = 0.0,
                    donate: bool = True) -> Callable:
    """``reward_step`` jitted with explicit shardings and donation (see jit_policy_step)."""
    state_sh = sharding.state_shardings(state, mesh)
    opt_sh = sharding.state_shardings(opt_state, mesh)
    batch_sh = sharding.batch_shardings(batch, mesh)
    fn = lambda s, o, b: reward_step(graphdef, s, o, b, optimizer=optimizer, label_smoothing=label_smoothing)
    metrics_shape = jax.eval_shape(fn, state, opt_state, batch)[2]
    jitted = jax.jit(fn, in_shardings=(state_sh, opt_sh, batch_sh),
                     out_shardings=(state_sh, opt_sh, _replicated_tree(metrics_shape, mesh)),
                     donate_argnums=(0, 1) if donate else ())

    def step(s, o, b):
        with jax.set_mesh(mesh):
            return jitted(s, o, b)

    step.jitted = jitted
    return step

"""Pure training steps over (graphdef, state) with explicit shardings and donation.

    graphdef, state = sharding.create_sharded_state(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
    tx = make_optimizer(OptimizerConfig(name="adamw", learning_rate=1e-5, max_grad_norm=1.0))
    opt_state = init_optimizer_state(tx, state, mesh)           # sharded like the params, before any step
    step = jit_policy_step(graphdef, state, opt_state, batch, mesh, loss_name="dpo", optimizer=tx)
    state, opt_state, metrics = step(state, opt_state, batch)   # state and opt_state are donated

LLM batch layout: {"tokens": {resp: [B, T]}, "response_mask": {resp: [B, T]},
"attention_mask": {resp: [B, T]}, <LossSpec.batch_keys>: [B], "weight": [B] (optional, default 1)}.
Summed response log-probs follow MATH.md ("log pi(y|x) is a SUM over response tokens", float32).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from wind_jax import losses, sharding
from wind_jax.models import Transformer
from wind_jax.models.heads import PolicyWithOffset
from wind_jax.train.programs import PROGRAMS, signature

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


TRAINABLE = ("all", "lora")


def _params(state, trainable: str = "all"):
    """(trainable state, everything else). trainable="all": every nnx.Param; "lora": the LoRA adapters
    (wind_jax.models.lora) and the offset head of PolicyWithOffset, the base weights frozen."""
    if trainable == "all":
        return nnx.split_state(state, nnx.Param, ...)
    if trainable == "lora":
        return nnx.split_state(state, nnx.Any(nnx.LoRAParam, nnx.All(nnx.Param, nnx.PathContains("offset_head"))),
                               ...)
    raise ValueError(f"trainable must be one of {TRAINABLE}, got {trainable!r}")


def init_optimizer_state(optimizer: optax.GradientTransformation, state, mesh: Mesh, *, trainable: str = "all"):
    """Optimizer state created directly with the params' shardings (moments inherit each Param's metadata).

    Every leaf is strongly typed (an injected learning rate included), so the state a step returns has the
    same types as the one it was given and one compiled step serves both. Equal arguments share one compile.
    trainable: which parameters the optimizer holds ("all", or "lora": adapters and offset head only)."""
    params, _ = _params(state, trainable)

    def init(p):
        return jax.tree.map(lambda x: jnp.asarray(x, x.dtype), optimizer.init(p))

    def build():
        abstract = jax.eval_shape(init, params)
        return jax.jit(init, out_shardings=sharding.state_shardings(abstract, mesh))

    return PROGRAMS.get(("init_optimizer_state", optimizer, mesh, trainable, signature(params)), build)(params)


# ------------------------------------------------------------------------------- policy outputs (log-probs)


def _split_module(module) -> tuple[Transformer, PolicyWithOffset | None]:
    if isinstance(module, PolicyWithOffset):
        return module.policy, module
    return module, None


def response_logprobs(module, tokens: Array, response_mask: Array, attention_mask: Array | None = None, *,
                      response_width: int | None = None) -> tuple[Array, Array]:
    """(summed response log-probs [B] float32, final hidden states [B, T, D]) in ONE forward pass.

    Same quantity as wind_jax.models.sequence_logprobs: sum_t response_mask[t] log p(tokens[t] | tokens[<t]),
    computed as logit[token] - logsumexp(logits). With ``response_width`` = R (every response token lies in
    the last R columns, as in the loop's [prompt | response] rows) the output projection runs only on the
    R positions that predict them.
    """
    policy, _ = _split_module(module)
    hidden = policy.hidden(tokens, attention_mask=attention_mask)
    start = 1 if response_width is None else tokens.shape[1] - response_width
    logits = policy.logits_from_hidden(hidden[:, start - 1:-1]).astype(jnp.float32)
    target = tokens[:, start:, None].astype(jnp.int32)
    lp = jnp.take_along_axis(logits, target, axis=-1)[..., 0] - jax.nn.logsumexp(logits, axis=-1)
    return jnp.sum(jnp.where(response_mask[:, start:].astype(bool), lp, 0.0), axis=-1), hidden


def policy_outputs(module, batch: Batch, keys: tuple[str, ...], *, response_width: int | None = None
                   ) -> dict[str, Array]:
    """The LossSpec ``policy_keys``: summed log-probs per response name, and "offset" b(x) if asked.

    Responses of equal length are concatenated along the batch and scored in ONE forward pass."""
    names = [k for k in keys if k != "offset"]
    for name in names:
        if name not in batch["tokens"]:
            raise ValueError(f'batch["tokens"] has no response {name!r}; the loss needs {list(keys)}')
    out, hiddens = {}, {}
    groups: dict[int, list[str]] = {}
    for name in names:
        groups.setdefault(batch["tokens"][name].shape[1], []).append(name)
    for group in groups.values():
        cat = lambda f: jnp.concatenate([batch[f][n] for n in group], axis=0)  # noqa: E731
        attn = cat("attention_mask") if all(n in batch.get("attention_mask", {}) for n in group) else None
        lp, hidden = response_logprobs(module, cat("tokens"), cat("response_mask"), attn,
                                       response_width=response_width)
        sizes = [batch["tokens"][n].shape[0] for n in group]
        splits = list(itertools.accumulate(sizes))[:-1]
        for n, lp_n, h_n in zip(group, jnp.split(lp, splits), jnp.split(hidden, splits)):
            out[n], hiddens[n] = lp_n, h_n
    if "offset" in keys:
        _, head = _split_module(module)
        if head is None:
            raise ValueError('the loss needs the policy output "offset": wrap the model in PolicyWithOffset')
        out["offset"] = head.offset(hiddens[names[0]], batch["response_mask"][names[0]])
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


def policy_step(graphdef, state, opt_state, batch: Batch, loss_name: str, hparams: Mapping[str, Any] | None = None,
                *, optimizer: optax.GradientTransformation, num_micro_batches: int = 1, weighting: str = "example",
                response_width: int | None = None, learning_rate: Array | None = None, rows: Array | None = None,
                trainable: str = "all"):
    """One optimizer update of the trainable policy on ``batch`` with loss ``loss_name`` (pure; jit it).

    Objective: sum_i w_i l_i / sum_i w_i over the WHOLE batch (w = batch["weight"], times the number of
    response tokens when weighting="tokens"); gradients are accumulated over ``num_micro_batches`` with
    lax.scan, each micro-batch contributing sum_{i in mb} w_i l_i / sum_all w, so the update equals the
    full-batch one. ``hparams`` values may be traced (a schedule does not recompile). ``learning_rate``
    (traced) replaces the injected rate of an optimizer built with injectable_learning_rate=True. ``rows``
    (int [b]) selects the minibatch inside the step; ``trainable`` which parameters are updated (see
    init_optimizer_state). Returns (state, opt_state, metrics): the loss's own
    metrics (averaged over micro-batches), "loss" (weighted), "grad_norm" (before clipping), "weight_sum".
    """
    spec = losses.get_loss(loss_name)
    hparams = dict(hparams or {})
    if rows is not None:
        batch = jax.tree.map(lambda x: jnp.take(x, rows, axis=0) if jnp.ndim(x) else x, batch)
    batch = _select(batch, spec)
    if learning_rate is not None:
        if not isinstance(getattr(opt_state, "hyperparams", None), dict):
            raise ValueError("learning_rate given but the optimizer has no injected learning rate "
                             "(build it with OptimizerConfig(injectable_learning_rate=True))")
        opt_state.hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
    params, rest = _params(state, trainable)
    weights = _example_weights(batch, spec.policy_keys, weighting)
    total_weight = jnp.sum(weights)

    def weighted_loss(p, mb, w):
        module = nnx.merge(graphdef, p, rest)
        logps = policy_outputs(module, mb, spec.policy_keys, response_width=response_width)
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


def logprob_step(graphdef, state, batch: Batch, *, response_width: int | None = None) -> dict[str, Array]:
    """Frozen-model summed response log-probs {resp: [B] float32} for every response in batch["tokens"]
    (equal-length responses in one forward pass)."""
    out = policy_outputs(nnx.merge(graphdef, state), batch, tuple(batch["tokens"]), response_width=response_width)
    return jax.tree.map(jax.lax.stop_gradient, out)


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
                    traced: tuple[str, ...] = (), num_micro_batches: int = 1, weighting: str = "example",
                    response_width: int | None = None, minibatch: bool = False, trainable: str = "all",
                    donate: bool = True) -> Callable:
    """``policy_step`` jitted with explicit in/out shardings (params and optimizer state by their logical
    axes, batch split over the "batch" mesh axes, metrics replicated) and donation of state/opt_state.

    ``state``, ``opt_state``, ``batch`` may be arrays or ShapeDtypeStructs: only shapes are read here.
    ``hparams`` are static (the loss validators check them); the names in ``traced`` (loss hparams such as
    beta / eta, and "learning_rate") are passed at call time, so a schedule never recompiles. With
    ``minibatch=True`` the step takes the whole iteration batch and an int32 row index [b]; the gather
    happens inside the step. Equal arguments return the same compiled step.
    Returns fn(state, opt_state, batch, dynamic=None, rows=None) -> (state, opt_state, metrics).
    """
    spec = losses.get_loss(loss_name)
    batch = _select(batch, spec)
    static = tuple(sorted((k, float(v)) for k, v in (hparams or {}).items()))
    traced = tuple(sorted(traced))
    bad = sorted(set(traced) - set(spec.defaults) - {"learning_rate"})
    if bad:
        raise ValueError(f"jit_policy_step: traced {bad} are not hparams of loss {loss_name!r} "
                         f"(it takes {sorted(spec.defaults)} and learning_rate)")
    key = ("policy_step", graphdef, loss_name, optimizer, static, traced, num_micro_batches, weighting,
           response_width, minibatch, trainable, donate, mesh, signature(state), signature(opt_state), signature(batch))

    def build():
        state_sh = sharding.state_shardings(state, mesh)
        opt_sh = sharding.state_shardings(opt_state, mesh)
        batch_sh = sharding.batch_shardings(batch, mesh)

        def fn(s, o, b, dyn, rows):
            hp = {**dict(static), **{k: v for k, v in dyn.items() if k != "learning_rate"}}
            return policy_step(graphdef, s, o, _select(b, spec), loss_name, hp, optimizer=optimizer,
                               num_micro_batches=num_micro_batches, weighting=weighting,
                               response_width=response_width, learning_rate=dyn.get("learning_rate"), rows=rows,
                               trainable=trainable)

        dyn0 = {k: jax.ShapeDtypeStruct((), jnp.float32) for k in traced}
        rows0 = jax.ShapeDtypeStruct((1,), jnp.int32) if minibatch else None
        metrics_shape = jax.eval_shape(fn, state, opt_state, batch, dyn0, rows0)[2]
        rep = NamedSharding(mesh, PartitionSpec())
        return jax.jit(fn, in_shardings=(state_sh, opt_sh, batch_sh, _replicated_tree(dyn0, mesh),
                                         None if rows0 is None else rep),
                       out_shardings=(state_sh, opt_sh, _replicated_tree(metrics_shape, mesh)),
                       donate_argnums=(0, 1) if donate else ())

    jitted = PROGRAMS.get(key, build)

    def step(s, o, b, dynamic=None, rows=None):
        dynamic = dict(dynamic or {})
        if set(dynamic) != set(traced):
            raise ValueError(f"policy step: dynamic hparams {sorted(dynamic)} != traced {list(traced)}")
        if minibatch != (rows is not None):
            raise ValueError("policy step: pass rows exactly when built with minibatch=True")
        dyn = {k: np.float32(v) for k, v in dynamic.items()}
        r = None if rows is None else np.asarray(rows, np.int32)
        with jax.set_mesh(mesh):
            return jitted(s, o, _select(b, spec), dyn, r)

    step.jitted = jitted
    return step


def jit_logprob_step(graphdef, state, batch: Batch, mesh: Mesh, *, response_width: int | None = None) -> Callable:
    """``logprob_step`` jitted with the state's shardings and the batch split over the batch axes."""
    batch = {f: batch[f] for f in ("tokens", "response_mask", "attention_mask") if f in batch}
    key = ("logprob_step", graphdef, mesh, response_width, signature(state), signature(batch))

    def build():
        state_sh = sharding.state_shardings(state, mesh)
        batch_sh = sharding.batch_shardings(batch, mesh)
        out_sh = {n: NamedSharding(mesh, sharding.batch_spec(1, mesh, size=batch["tokens"][n].shape[0]))
                  for n in batch["tokens"]}
        return jax.jit(lambda s, b: logprob_step(graphdef, s, b, response_width=response_width),
                       in_shardings=(state_sh, batch_sh), out_shardings=out_sh)

    jitted = PROGRAMS.get(key, build)

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

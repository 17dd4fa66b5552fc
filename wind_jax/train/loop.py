"""The Orbax-checkpointed outer loop on a device mesh, one for every method (MATH.md "Algorithm 3",
"Baselines"; the methods are records of wind_jax.train.methods).

Each outer iteration t:
  prompts (position-indexed stream; each process takes its own slice) -> one jitted rollout per draw
  source on the sharded params ([B, N, T] tokens, masks and summed log-probs log pi_t) -> ONE oracle call
  over every pair the method asks about (each process judges its own prompts) -> one jitted program that
  draws the duel outcomes, assembles the method's rows and adds the frozen log-probs (the rollout's own
  log-probs where a response was drawn from that model, a forward pass of pi_ref / the anchor otherwise)
  -> `steps_per_iteration` sharded policy steps (wind_jax.train.steps.jit_policy_step: beta, eta and the
  learning rate traced, the minibatch gathered inside the step) -> evaluation (gold win rate vs pi_ref,
  KL(pi_t || pi_ref) from samples, queries, samples, wall time split into sampling / judging / batch /
  training) -> checkpoint.

Determinism and crash safety: random keys are derived on the host from (seed, iteration, purpose) and
prompts come from position-indexed streams, so the global batch is the same whatever the number of
processes. A checkpoint holds named pytrees {"policy", "opt", "anchor", "offset"} (readable without the
module tree), the RNG key and counters; inside an iteration a checkpoint every `checkpoint_every_steps`
steps also stores the iteration's batch, so a resumed run continues from the exact step. On resume
metrics.jsonl is truncated to the checkpoint. Non-finite losses or gradients stop the run before any save,
and oracle answers are checked (shape, finite, in [0, 1]) before they are used.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from wind_jax import losses, sharding
from wind_jax.models import Transformer
from wind_jax.models.lora import apply_lora
from wind_jax.sampling import sample_state
from wind_jax.train import methods as methods_lib
from wind_jax.train.checkpoint import Checkpointer
from wind_jax.train.metrics import MetricsLogger, progress_bar, read_jsonl
from wind_jax.train.oracle import PreferenceOracle, Tokens
from wind_jax.train.steps import (OptimizerConfig, PolicyWithOffset, _avals, _cached_jit, init_optimizer_state,
                                  jit_policy_step, make_optimizer, policy_outputs)

METHODS = tuple(methods_lib.METHODS)
_SCHEDULED = ("beta", "eta")  # traced loss hparams (a schedule does not recompile the step)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Outer-loop settings. Schedules: value_t = start + (final - start) * f(t / (T - 1)), f from
    `schedule` ("constant", "linear", "cosine"); `*_final=None` keeps the value constant. `loss_hparams`
    holds static hparams of the loss or the method (e.g. (("mix", 0.5),) for jbond, (("alpha", 0.1),) for
    bon_distill's mixing)."""

    method: str = "wind_sq"
    num_iterations: int = 4
    prompts_per_iteration: int = 64
    steps_per_iteration: int = 8
    batch_size: int = 64               # rows per policy step (a deterministic permutation of the iteration)
    num_samples: int = 0               # K (sppo) / n (bonbon, dpo, bon_distill); 0 = method default
    beta: float = 0.1
    beta_final: float | None = None
    eta: float = 1.0
    eta_final: float | None = None
    learning_rate: float = 1e-3
    learning_rate_final: float | None = None
    schedule: str = "constant"
    loss_hparams: tuple[tuple[str, float], ...] = ()
    optimizer: str = "adamw"
    max_grad_norm: float = 1.0
    reset_optimizer: bool = True       # fresh optimizer state each iteration (theta_{t+1} fit from theta_t)
    anchor_ema: float = 0.1            # J-BOND: theta_a <- (1 - lam) theta_a + lam theta after every step
    oracle_mode: str = "sample"        # "sample": Bernoulli duel outcomes; "prob": P(a beats b)
    max_new_tokens: int = 8
    temperature: float = 1.0
    eos_token_id: int = 2
    pad_token_id: int = 0
    eval_prompts: int = 128
    eval_samples_per_prompt: int = 2
    checkpoint_every_steps: int = 0    # 0 = only at iteration ends
    max_to_keep: int = 2
    async_checkpoint: bool = True
    lora_rank: int = 0                 # > 0: train LoRA adapters (wind_jax.models.lora) instead of every weight
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    seed: int = 0

    def __post_init__(self):
        method = methods_lib.get_method(self.method)
        for name in ("num_iterations", "prompts_per_iteration", "steps_per_iteration", "batch_size",
                     "max_new_tokens", "eval_prompts", "eval_samples_per_prompt", "max_to_keep"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"LoopConfig.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.schedule not in ("constant", "linear", "cosine"):
            raise ValueError(f'LoopConfig.schedule must be "constant", "linear" or "cosine", got {self.schedule!r}')
        if self.oracle_mode not in ("sample", "prob"):
            raise ValueError(f'LoopConfig.oracle_mode must be "sample" or "prob", got {self.oracle_mode!r}')
        if self.optimizer not in ("adamw", "rmsprop"):
            raise ValueError(f'LoopConfig.optimizer must be "adamw" or "rmsprop", got {self.optimizer!r}')
        if self.num_samples == 1 or self.num_samples < 0:
            raise ValueError(f"LoopConfig.num_samples must be 0 (method default) or >= 2, got {self.num_samples}")
        method.n(self.num_samples)
        for name in ("learning_rate", "learning_rate_final", "temperature", "max_grad_norm"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"LoopConfig.{name} must be finite and > 0, got {v}")
        for name in ("beta", "beta_final", "eta", "eta_final"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"LoopConfig.{name} must be finite, got {v}")
        if not 0.0 < self.anchor_ema <= 1.0:
            raise ValueError(f"LoopConfig.anchor_ema must be in (0, 1], got {self.anchor_ema}")
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ValueError(f"LoopConfig.lora_rank must be an int >= 0 (0 = full fine-tuning), got {self.lora_rank!r}")
        if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise ValueError(f"LoopConfig.lora_alpha must be finite and > 0, got {self.lora_alpha}")
        if self.checkpoint_every_steps < 0:
            raise ValueError(f"LoopConfig.checkpoint_every_steps must be >= 0, got {self.checkpoint_every_steps}")
        # The loss's own validation at the first and last iteration's values (names the field).
        for t in sorted({0, self.num_iterations - 1}):
            static, dynamic = self.hparams(t)
            try:
                losses._check_hparams(method.spec, {k: v for k, v in {**static, **dynamic}.items()
                                                    if k in method.spec.defaults})
            except ValueError as e:
                raise ValueError(f"LoopConfig (iteration {t}): {e}") from None
        alpha = dict(self.loss_hparams).get("alpha")
        if alpha is not None and method.name == "bon_distill" and not 0.0 <= alpha < 1.0:
            raise ValueError(f"LoopConfig.loss_hparams alpha={alpha} must lie in [0, 1) (Alg. 1 mixing)")

    @property
    def method_record(self) -> methods_lib.Method:
        return methods_lib.get_method(self.method)

    @property
    def n(self) -> int:
        """n / K of the method (samples of its main draw)."""
        return self.method_record.n(self.num_samples)

    @property
    def samples_per_prompt(self) -> int:
        return self.method_record.total_samples(self.n)

    @property
    def queries_per_prompt(self) -> int:
        return self.method_record.queries(self.n)

    def value(self, name: str, t: int) -> float:
        """Scheduled value of beta / eta / learning_rate at outer iteration t."""
        start, final = getattr(self, name), getattr(self, f"{name}_final")
        if final is None or self.schedule == "constant" or self.num_iterations == 1:
            return float(start)
        u = t / (self.num_iterations - 1)
        f = u if self.schedule == "linear" else 0.5 * (1 - math.cos(math.pi * u))
        return float(start + (final - start) * f)

    def hparams(self, t: int) -> tuple[dict, dict]:
        """(static hparams, scheduled hparams) of the method's loss (and method) at iteration t."""
        method = self.method_record
        spec = method.spec
        static = {k: float(v) for k, v in self.loss_hparams}
        fixed, extra = dict(method.fixed_hparams), dict(method.extra_hparams)
        known = set(spec.defaults) | set(extra)
        unknown = sorted(set(static) - known)
        if unknown:
            raise ValueError(f"LoopConfig.loss_hparams {unknown} are not hparams of method {method.name!r} "
                             f"(it takes {sorted(known)})")
        for k, v in extra.items():
            static.setdefault(k, float(v))
        if "n" in spec.defaults or method.weight is not None:
            static.setdefault("n", float(self.n))
        static.update(fixed)
        dynamic = {k: self.value(k, t) for k in _SCHEDULED if k in spec.defaults and k not in fixed}
        return static, dynamic


class PromptStream(Protocol):
    """Position-indexed prompts: `get(position, count)` -> left-padded Tokens, same answer every call."""

    def get(self, position: int, count: int) -> Tokens: ...


class ArrayPrompts:
    """A PromptStream over a fixed array of left-padded prompts, cycling with a per-epoch permutation."""

    def __init__(self, tokens, mask, *, seed: int = 0):
        self.tokens, self.mask = np.asarray(tokens, np.int32), np.asarray(mask, bool)
        if self.tokens.ndim != 2 or self.tokens.shape != self.mask.shape or len(self.tokens) == 0:
            raise ValueError(f"prompts: tokens and mask must be equal non-empty [N, T], got "
                             f"{self.tokens.shape}, {self.mask.shape}")
        if not self.mask[:, -1].all():
            raise ValueError("prompts must be LEFT-padded (mask[:, -1] all True)")
        self.seed = seed

    def get(self, position, count):
        n = len(self.tokens)
        idx = [np.random.default_rng([self.seed, epoch]).permutation(n)[i]
               for epoch, i in (divmod(p, n) for p in range(position, position + count))]
        return Tokens(self.tokens[idx], self.mask[idx])


class FunctionPrompts:
    """A PromptStream from fn(key, count) -> [count, T] tokens (all real): prompt p uses fold_in(key, p),
    all prompts of a call in one vmapped, jitted program."""

    def __init__(self, fn: Callable[[jax.Array, int], jax.Array], seed: int = 0):
        self.key = jax.random.key(seed)
        self._get = jax.jit(lambda key, pos: jax.vmap(lambda p: fn(jax.random.fold_in(key, p), 1)[0])(pos))

    def get(self, position, count):
        tokens = np.asarray(self._get(self.key, np.arange(position, position + count, dtype=np.int32)))
        return Tokens(tokens, np.ones_like(tokens, bool))


# ------------------------------------------------------------------------------------------ helpers
def _host_key(seed: int, *path: int) -> jax.Array:
    """A threefry key derived on the host from (seed, *path): no device program per derivation."""
    data = np.random.default_rng([seed, *path]).integers(0, 2**32, size=2, dtype=np.uint32)
    return jax.random.wrap_key_data(data)


def _local_rows(x) -> np.ndarray:
    """This process's rows of a global array split over its leading axis (all rows with one process)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    shards = sorted({s.index[0].start or 0: s for s in x.addressable_shards}.items())
    return np.concatenate([np.asarray(s.data) for _, s in shards])


def _gathered(x) -> np.ndarray:
    """The whole global array on every process."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _path_name(path) -> str:
    parts = []
    for k in path:
        k = getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
        parts.append(str(k))
    if parts and parts[-1] == "value":
        parts = parts[:-1]
    return ".".join(parts)


def named(tree) -> dict[str, Any]:
    """{"layers.attn.q_proj.kernel": array, ...}: a pytree as a flat dict keyed by its paths."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[_path_name(path)] = leaf
    return out


def from_named(template, flat: Mapping[str, Any], what: str):
    """Inverse of `named` onto `template`'s structure; a ValueError names missing / unexpected entries."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    names = [_path_name(p) for p, _ in paths]
    missing, extra = sorted(set(names) - set(flat)), sorted(set(flat) - set(names))
    if missing or extra:
        raise ValueError(f"checkpoint {what!r} does not match the current model: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    return jax.tree.unflatten(treedef, [flat[n] for n in names])


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _copy_to(tree, shardings):
    """A copy of `tree` laid out by `shardings` (never aliasing the caller's buffers: steps donate)."""
    return jax.tree.map(lambda x, s: jax.device_put(x, s, may_alias=False), tree, shardings)


@jax.jit
def _ema(anchor, policy, lam):
    """theta_a <- (1 - lam) theta_a + lam theta (J-BOND's anchor; MATH.md Baselines)."""
    return jax.tree.map(lambda a, p: (1.0 - lam) * a + lam * p.astype(a.dtype), anchor, policy)


class NonFiniteError(FloatingPointError):
    """A loss, gradient or oracle answer was NaN or inf; nothing after it was saved."""


class _Timer:
    def __init__(self):
        self.t: dict[str, float] = {}

    def add(self, name, seconds):
        self.t[name] = self.t.get(name, 0.0) + seconds


# ------------------------------------------------------------------------------------ batch program
@dataclasses.dataclass(frozen=True)
class _Prep:
    """Static description of the batch program (hashable: a compile-cache key)."""

    method: str
    n: int
    sample_mode: bool
    hparams: tuple[tuple[str, float], ...]
    keys: tuple[str, ...]          # frozen batch keys to produce
    weighted: bool
    ref_graphdef: Any


def _prepare(prep: _Prep, ref_state, anchor_state, prompt, prompt_mask, resp, resp_mask, lp, pref, key):
    """Outcomes -> the method's rows -> the iteration batch with frozen log-probs (one jitted program).

    prompt [B, Tp]; resp / resp_mask / lp: one entry per draw, [B, N_d, Tp + Tn] rollouts and [B, N_d] each
    sample's log-prob under the model it was drawn from (concatenated here into the sample axis);
    pref [B, Q] P(pair[0] beats pair[1])."""
    method = methods_lib.get_method(prep.method)
    tp = prompt.shape[1]
    resp = jnp.concatenate([r[:, :, tp:] for r in resp], axis=1)
    resp_mask = jnp.concatenate([m[:, :, tp:] for m in resp_mask], axis=1)
    lp = jnp.concatenate(lp, axis=1)
    hp = dict(prep.hparams)
    if prep.sample_mode:
        pref = jax.random.bernoulli(key, pref).astype(jnp.float32)
    rows = method.assemble(pref, prep.n, hp)
    b = prompt.shape[0]
    tn = resp.shape[2]
    batch: dict[str, Any] = {"tokens": {}, "response_mask": {}, "attention_mask": {}}
    own = {}
    for name, idx in rows.index.items():
        r = idx.shape[1]
        pick = lambda x: jnp.take_along_axis(x, idx[:, :, None], axis=1)  # noqa: E731
        tok, msk = pick(resp), pick(resp_mask)
        ptok = jnp.broadcast_to(prompt[:, None], (b, r, tp))
        pmsk = jnp.broadcast_to(prompt_mask[:, None], (b, r, tp))
        flat = lambda x: x.reshape((b * r,) + x.shape[2:])  # noqa: E731
        batch["tokens"][name] = flat(jnp.concatenate([ptok, tok], axis=2))
        batch["response_mask"][name] = flat(jnp.concatenate([jnp.zeros_like(pmsk), msk], axis=2))
        batch["attention_mask"][name] = flat(jnp.concatenate([pmsk, msk], axis=2))
        own[name] = flat(jnp.take_along_axis(lp, idx, axis=1))
    models = {"ref": ("reference", ref_state), "anchor": ("anchor", anchor_state)}
    for key_name in prep.keys:
        role, _, resp_name = key_name.partition("_")
        if key_name in rows.values:
            batch[key_name] = rows.values[key_name].reshape(-1).astype(jnp.float32)
        elif role == "prev" and method.sources[resp_name] == "policy":
            batch[key_name] = own[resp_name]
        elif role in models and method.sources[resp_name] == models[role][0]:
            batch[key_name] = own[resp_name]
        elif role in models:
            sub = {f: {resp_name: batch[f][resp_name]} for f in ("tokens", "response_mask", "attention_mask")}
            model = nnx.merge(prep.ref_graphdef, models[role][1])
            batch[key_name] = jax.lax.stop_gradient(
                policy_outputs(model, sub, (resp_name,), response_width=tn)[resp_name])
        else:
            raise ValueError(f"method {prep.method!r}: cannot supply batch key {key_name!r}")
    if prep.weighted:
        batch["weight"] = method.weight(batch, hp)
    return batch


# ------------------------------------------------------------------------------------------ the loop
@dataclasses.dataclass
class LoopResult:
    policy: Any              # the trained wind_jax Transformer (pi_T)
    history: list[dict]      # every metric record (step and iteration)
    out_dir: str


class AlignmentLoop:
    """Build once, then `run()`. See the module docstring for the data flow.

    policy: the Transformer to align (pi_0), or a zero-argument function building it (initialized
    directly into sharded arrays); reference: pi_ref (default: a frozen copy of the policy); oracle: the
    training preference oracle; eval_oracle: the evaluator's gold oracle (None: no win rate); prompts /
    eval_prompts: PromptStreams; mesh: the device mesh (default: every device on "data"); run_config:
    extra config (e.g. the experiment's) stored with checkpoints and compared on resume.
    """

    def __init__(self, config: LoopConfig, *, policy, oracle: PreferenceOracle, prompts: PromptStream,
                 out_dir: str, reference=None, eval_oracle: PreferenceOracle | None = None,
                 eval_prompts: PromptStream | None = None, run_config: Mapping[str, Any] | None = None,
                 mesh: Mesh | None = None, tensorboard: bool = True, progress: bool | None = None,
                 verbose: bool = False):
        self.cfg = config
        self.method = config.method_record
        self.spec = self.method.spec
        self.out_dir = os.path.abspath(out_dir)
        self.mesh = mesh if mesh is not None else sharding.make_mesh(sharding.MeshConfig())
        self.oracle, self.eval_oracle = oracle, eval_oracle
        self.prompts, self.eval_prompts = prompts, (eval_prompts or prompts)
        self.is_main = jax.process_index() == 0
        self.verbose = verbose
        self._check_divisible()

        # Policy (+ LoRA adapters, + offset head), reference, anchor: sharded on the mesh by their logical axes.
        self.trainable = "lora" if config.lora_rank else "all"
        base = policy if isinstance(policy, nnx.Module) else nnx.eval_shape(policy)
        if not isinstance(base, Transformer):
            raise ValueError(f"policy must be a wind_jax Transformer (or a function building one), "
                             f"got {type(base).__name__}")
        self.policy_graphdef = nnx.split(base)[0]
        self.model_config = base.config

        def wrap(model):
            if config.lora_rank:
                model = apply_lora(model, config.lora_rank, config.lora_alpha, config.lora_targets,
                                   rngs=nnx.Rngs(config.seed))
            if self.method.needs_offset:
                model = PolicyWithOffset(model, rngs=nnx.Rngs(config.seed))
            return model

        if isinstance(policy, nnx.Module):
            self.graphdef, state = nnx.split(wrap(policy))
            self.state = _copy_to(state, sharding.state_shardings(state, self.mesh))
        else:
            self.graphdef, self.state = sharding.create_sharded_state(lambda: wrap(policy()), self.mesh)
        if reference is None or reference is policy:  # a copy of the sharded pi_0 (never of the caller's arrays: two device_puts of
            ref_state = self._sampling_state(self.state)  # one host array may share a buffer)
            self.ref_state = _copy_to(ref_state, jax.tree.map(lambda x: x.sharding, ref_state))
        else:
            ref_state = nnx.split(reference)[1]
            self.ref_state = _copy_to(ref_state, sharding.state_shardings(ref_state, self.mesh))
        self.anchor_state = (_copy_to(self.ref_state, jax.tree.map(lambda x: x.sharding, self.ref_state))
                             if self.method.uses("anchor") else None)
        self.tx = make_optimizer(OptimizerConfig(name=config.optimizer, learning_rate=float(config.learning_rate),
                                                 max_grad_norm=float(config.max_grad_norm),
                                                 injectable_learning_rate=True))
        self.opt_state = init_optimizer_state(self.tx, self.state, self.mesh, trainable=self.trainable)
        self.run_config = {"loop": dataclasses.asdict(config), **(dict(run_config or {}))}
        self.ckpt = Checkpointer(os.path.join(self.out_dir, "checkpoints"), config=self.run_config,
                                 max_to_keep=config.max_to_keep, async_save=config.async_checkpoint)
        self.logger = MetricsLogger(self.out_dir, tensorboard=tensorboard and self.is_main) if self.is_main else None
        self.progress = progress
        self.counters = {"queries": 0, "samples": 0, "global_step": 0}
        self._pending: list[tuple[dict, Any]] = []
        self._timer = _Timer()

    # ---------------------------------------------------------------------------- set-up helpers
    def _check_divisible(self):
        procs = jax.process_count()   # (a batch not divisible by the mesh's batch shards is replicated)
        for name in ("prompts_per_iteration", "eval_prompts"):
            v = getattr(self.cfg, name)
            if v % procs:
                raise ValueError(f"LoopConfig.{name}={v} must be divisible by the {procs} processes")

    def policy_model(self):
        """The current policy pi_t as a plain wind_jax Transformer (LoRA adapters merged in)."""
        return nnx.merge(self.policy_graphdef, self._sampling_state(self.state))

    def ref_model(self):
        """pi_ref as a wind_jax Transformer."""
        return nnx.merge(self.policy_graphdef, self.ref_state)

    def _sampling_state(self, state):
        """The plain Transformer state of the policy: the offset head left out, LoRA adapters merged in
        (one jitted program)."""
        if self.trainable == "lora":
            graphdef, mesh = self.graphdef, self.mesh

            def merged(s):
                module = nnx.merge(graphdef, s)
                module = module.policy if isinstance(module, PolicyWithOffset) else module
                return nnx.split(module.merged())[1]

            def build():
                out = jax.eval_shape(merged, state)
                return jax.jit(merged, out_shardings=sharding.state_shardings(out, mesh))
            return _cached_jit(("lora_merge", graphdef, mesh, _avals(state)), build)(state)
        return state["policy"] if self.method.needs_offset else state

    def _trained_parts(self, state) -> dict:
        """What a checkpoint holds of the trained module: {"policy": ..., "offset": ...} (LoRA: adapters only)."""
        policy = state["policy"] if self.method.needs_offset else state
        if self.trainable == "lora":
            policy = nnx.split_state(policy, nnx.LoRAParam, ...)[0]
        parts = {"policy": policy}
        if self.method.needs_offset:
            parts["offset"] = state["offset_head"]
        return parts

    def run_info(self) -> dict:
        """Mesh and parameter bytes held per device (written to <out_dir>/run.json)."""
        leaves = jax.tree.leaves(self.state)
        dev = self.mesh.devices.flat[0]
        per_device = sum(s.data.nbytes for x in leaves for s in x.addressable_shards if s.device == dev)
        return {"mesh": {k: int(v) for k, v in self.mesh.shape.items()}, "processes": jax.process_count(),
                "param_bytes_per_device": int(per_device), "param_bytes_total": int(sum(x.nbytes for x in leaves)),
                "method": self.cfg.method, "samples_per_prompt": self.cfg.samples_per_prompt,
                "queries_per_prompt": self.cfg.queries_per_prompt}

    def _say(self, msg: str):
        if self.is_main and self.verbose:
            print(msg, flush=True)

    # ---------------------------------------------------------------------------- rollout and judging
    def _global_prompts(self, stream: PromptStream, position: int, count: int) -> Tokens:
        per = count // jax.process_count()
        local = stream.get(position + jax.process_index() * per, per)
        g = sharding.shard_host_batch({"t": np.asarray(local.tokens, np.int32),
                                       "m": np.asarray(local.mask, bool)}, self.mesh)
        return Tokens(g["t"], g["m"])

    def _rollout(self, state, prompts: Tokens, n: int, key, temperature: float):
        out = sample_state(self.policy_graphdef, state, prompts.tokens, prompts.mask, key, num_samples=n,
                           max_new_tokens=self.cfg.max_new_tokens, temperature=temperature,
                           eos_token_id=self.cfg.eos_token_id, pad_token_id=self.cfg.pad_token_id, mesh=self.mesh)
        return out.tokens, out.response_mask, out.logprobs   # [B, N, Tp + Tn]: sliced inside jitted programs

    def _judge(self, oracle: PreferenceOracle, prompts_local: np.ndarray, pmask_local: np.ndarray,
               resp: np.ndarray, rmask: np.ndarray, pairs, *, where: str, count: bool = True) -> np.ndarray:
        """ONE oracle call over every (prompt, pair): -> P(pair[0] beats pair[1]) [B_local, Q], checked."""
        b, q = resp.shape[0], len(pairs)
        i = np.asarray([p[0] for p in pairs])
        j = np.asarray([p[1] for p in pairs])
        flat = lambda x: x.reshape((b * q,) + x.shape[2:])  # noqa: E731
        prompt = Tokens(np.repeat(prompts_local, q, axis=0), np.repeat(pmask_local, q, axis=0))
        a = Tokens(flat(resp[:, i]), flat(rmask[:, i]))
        c = Tokens(flat(resp[:, j]), flat(rmask[:, j]))
        p = np.asarray(oracle.probability(prompt, a, c, count=count))
        if p.shape != (b * q,):
            raise ValueError(f"oracle {oracle.name!r} ({where}) returned shape {p.shape} for {b * q} pairs")
        if not np.all(np.isfinite(p)):
            raise NonFiniteError(f"oracle {oracle.name!r} ({where}) returned {int(np.sum(~np.isfinite(p)))} "
                                 f"non-finite probabilities of {b * q}; nothing of this iteration was saved")
        if np.any((p < 0) | (p > 1)):
            raise ValueError(f"oracle {oracle.name!r} ({where}) returned probabilities outside [0, 1] "
                             f"(min {p.min():.4g}, max {p.max():.4g})")
        return p.reshape(b, q).astype(np.float32)

    def _prep(self, t: int) -> _Prep:
        static, _ = self.cfg.hparams(t)
        weighted = self.method.weight is not None and static.get("alpha", 0.0) > 0
        keys = tuple(self.spec.batch_keys)
        if weighted:
            keys = tuple(dict.fromkeys(keys + ("prev_y", "ref_y", "target")))
        return _Prep(self.cfg.method, self.cfg.n, self.cfg.oracle_mode == "sample",
                     tuple(sorted(static.items())), keys, weighted, self.policy_graphdef)

    def _prepare_fn(self, prep: _Prep, example):
        def build():
            out = jax.eval_shape(lambda *a: _prepare(prep, *a), *example)
            return jax.jit(lambda *a: _prepare(prep, *a),
                           out_shardings=sharding.batch_shardings(out, self.mesh))
        return _cached_jit(("prepare", prep, self.mesh), build)

    def build_batch(self, t: int) -> dict:
        """Sample, judge and assemble the iteration batch (MATH.md Alg. 3 / Baselines)."""
        cfg, timer, method = self.cfg, self._timer, self.method
        t0 = time.perf_counter()
        prompts = self._global_prompts(self.prompts, t * cfg.prompts_per_iteration, cfg.prompts_per_iteration)
        models = {"policy": self._sampling_state(self.state), "reference": self.ref_state,
                  "anchor": self.anchor_state}
        parts = []
        for d, (source, count) in enumerate(method.counts(cfg.n)):
            parts.append(self._rollout(models[source], prompts, count, _host_key(cfg.seed, t, 0, d),
                                       cfg.temperature))
        resp, rmask, lp = (tuple(p[i] for p in parts) for i in range(3))
        tp = prompts.tokens.shape[1]
        host_resp = np.concatenate([_local_rows(r)[:, :, tp:] for r in resp], axis=1)
        host_mask = np.concatenate([_local_rows(m)[:, :, tp:] for m in rmask], axis=1)
        self.counters["samples"] += cfg.samples_per_prompt * cfg.prompts_per_iteration
        jax.block_until_ready(lp)
        timer.add("time/sampling", time.perf_counter() - t0)

        t0 = time.perf_counter()
        pref_local = self._judge(self.oracle, _local_rows(prompts.tokens), _local_rows(prompts.mask),
                                 host_resp, host_mask, method.pairs(cfg.n),
                                 where=f"iteration {t}")
        self.counters["queries"] += cfg.queries_per_prompt * cfg.prompts_per_iteration
        pref = sharding.shard_host_batch(pref_local, self.mesh)
        timer.add("time/judging", time.perf_counter() - t0)

        t0 = time.perf_counter()
        args = (self.ref_state, self.anchor_state, prompts.tokens, prompts.mask, resp, rmask, lp, pref,
                _host_key(cfg.seed, t, 1))
        batch = self._prepare_fn(self._prep(t), args)(*args)
        jax.block_until_ready(batch)
        timer.add("time/logprobs", time.perf_counter() - t0)  # batch program: rows + frozen log-probs
        return batch

    # ---------------------------------------------------------------------------- evaluation
    def evaluate(self, t: int) -> dict:
        """Gold win rate of pi_t vs pi_ref and KL(pi_t || pi_ref) from samples (fixed eval prompts/keys)."""
        cfg = self.cfg
        n = cfg.eval_samples_per_prompt
        prompts = self._global_prompts(self.eval_prompts, 0, cfg.eval_prompts)
        pol, pol_mask, lp_pol = self._rollout(self._sampling_state(self.state), prompts, n,
                                              _host_key(cfg.seed, t, 2, 0), 1.0)
        ref, ref_mask, _ = self._rollout(self.ref_state, prompts, n, _host_key(cfg.seed, t, 2, 1), 1.0)
        lp_ref = self._eval_ref_logprobs(prompts, pol, pol_mask)
        kl = _gathered(lp_pol).reshape(-1) - _gathered(lp_ref).reshape(-1)
        tp = prompts.tokens.shape[1]
        out = {"eval/kl_to_ref": float(np.mean(kl)), "eval/kl_to_ref_stderr": float(np.std(kl) / np.sqrt(kl.size)),
               "eval/response_length": float(np.mean(_gathered(pol_mask)[:, :, tp:].sum(-1)))}
        if self.eval_oracle is not None:
            both = np.concatenate([_local_rows(pol)[:, :, tp:], _local_rows(ref)[:, :, tp:]], axis=1)
            both_mask = np.concatenate([_local_rows(pol_mask)[:, :, tp:], _local_rows(ref_mask)[:, :, tp:]], axis=1)
            p = self._judge(self.eval_oracle, _local_rows(prompts.tokens), _local_rows(prompts.mask), both,
                            both_mask, tuple((i, n + i) for i in range(n)), where=f"evaluation {t}", count=False)
            p = _gathered(sharding.shard_host_batch(p, self.mesh))
            out["eval/win_rate_vs_ref"] = float(np.mean(p))
            out["eval/win_rate_vs_ref_stderr"] = float(np.std(p.mean(1)) / np.sqrt(p.shape[0]))
        return out

    def _eval_ref_logprobs(self, prompts: Tokens, resp, resp_mask):
        """log pi_ref of the policy's eval samples [B, N] (one sharded forward)."""
        fn = self._eval_lp_fn(prompts, resp)
        return fn(self.ref_state, prompts.tokens, prompts.mask, resp, resp_mask)

    def _eval_lp_fn(self, prompts, resp):
        graphdef, mesh = self.policy_graphdef, self.mesh

        def lp(state, pt, pm, r, rm):
            b, n, t = r.shape
            tn = t - pt.shape[1]
            batch = {"tokens": {"y": r.reshape(b * n, t)}, "response_mask": {"y": rm.reshape(b * n, t)},
                     "attention_mask": {"y": jnp.concatenate([jnp.repeat(pm, n, axis=0), rm.reshape(b * n, t)[:, -tn:]],
                                                             axis=1)}}
            out = policy_outputs(nnx.merge(graphdef, state), batch, ("y",), response_width=tn)["y"]
            return jax.lax.stop_gradient(out).reshape(b, n)

        def build():
            return jax.jit(lp, out_shardings=NamedSharding(mesh, sharding.batch_spec(2, mesh, size=prompts.tokens.shape[0])))
        return _cached_jit(("eval_lp", graphdef, mesh, prompts.tokens.shape[0]), build)

    # ---------------------------------------------------------------------------- checkpoints
    def _ckpt_id(self, t: int, k: int) -> int:
        return t * (self.cfg.steps_per_iteration + 1) + k

    def _tree(self) -> dict:
        tree = {k: named(v) for k, v in self._trained_parts(self.state).items()}
        tree["opt"] = named(self.opt_state)
        if self.anchor_state is not None:
            tree["anchor"] = named(self.anchor_state)
        return tree

    def _save(self, t: int, k: int, batch=None):
        self._flush()
        meta = {"iteration": t, "step_in_iteration": k, "counters": dict(self.counters),
                "data_position": t * self.cfg.prompts_per_iteration, "oracle": self.oracle.state_dict()}
        try:
            self.ckpt.save(self._ckpt_id(t, k), self._tree(), meta, extra=batch)
        except (OSError, PermissionError) as e:
            raise OSError(f"cannot write checkpoint {self._ckpt_id(t, k)} under {self.ckpt.directory}: {e}") from e

    def _restore(self):
        """-> (iteration, step_in_iteration, batch or None), or None when there is no checkpoint."""
        step = self.ckpt.latest_step()
        if step is None:
            return None
        target = jax.tree.map(_abstract, self._tree())
        meta = self.ckpt.read_meta(step)
        extra_target = None
        if meta.get("has_extra"):
            extra_target = _abstract(self._batch_template)
        tree, meta, batch = self.ckpt.restore(step, target=target, extra_target=extra_target)
        parts = {k: from_named(v, tree[k], k) for k, v in self._trained_parts(self.state).items()}
        current = self.state["policy"] if self.method.needs_offset else self.state
        policy = nnx.merge_state(current, parts["policy"]) if self.trainable == "lora" else parts["policy"]
        if self.method.needs_offset:
            self.state["policy"], self.state["offset_head"] = policy, parts["offset"]
        else:
            self.state = policy
        self.opt_state = from_named(self.opt_state, tree["opt"], "opt")
        if self.anchor_state is not None:
            self.anchor_state = from_named(self.anchor_state, tree["anchor"], "anchor")
        self.counters = dict(meta["counters"])
        self.oracle.load_state_dict(meta["oracle"])
        if self.is_main:  # drop the records written after this checkpoint
            gs, t = self.counters["global_step"], int(meta["iteration"])
            keep = [r for r in (read_jsonl(self.logger.path) if os.path.exists(self.logger.path) else [])
                    if (r["kind"] == "step" and r["global_step"] <= gs)
                    or (r["kind"] == "iteration" and r["iteration"] <= t)]
            self.logger.reset(keep)
        return int(meta["iteration"]), int(meta["step_in_iteration"]), batch

    @property
    def _batch_template(self):
        """Shapes and shardings of an iteration batch (for restoring a mid-iteration checkpoint)."""
        cfg = self.cfg
        b, tn = cfg.prompts_per_iteration, cfg.max_new_tokens
        tp = self.prompts.get(0, 1).tokens.shape[1]
        sds = jax.ShapeDtypeStruct
        counts = [c for _, c in self.method.counts(cfg.n)]
        args = (self.ref_state, self.anchor_state, sds((b, tp), jnp.int32), sds((b, tp), bool),
                tuple(sds((b, c, tp + tn), jnp.int32) for c in counts), tuple(sds((b, c, tp + tn), bool) for c in counts),
                tuple(sds((b, c), jnp.float32) for c in counts),
                sds((b, cfg.queries_per_prompt), jnp.float32), jax.eval_shape(lambda: _host_key(0, 0)))
        prep = self._prep(0)
        shapes = jax.eval_shape(lambda *a: _prepare(prep, *a), *args)
        shard = sharding.batch_shardings(shapes, self.mesh)
        return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), shapes, shard)

    # ---------------------------------------------------------------------------- metrics
    def _log(self, rec: dict, kind: str):
        if self.logger is not None:
            self.logger.log(rec, kind=kind)

    def _flush(self):
        """Step metrics stay on the device until here (once per iteration and before each save)."""
        if not self._pending:
            return
        values = jax.device_get([m for _, m in self._pending])
        for (rec, _), m in zip(self._pending, values):
            bad = [k for k in ("loss", "grad_norm") if not np.isfinite(m[k])]
            if bad:
                raise NonFiniteError(f"non-finite {bad} at iteration {rec['iteration']}, step {rec['step']} "
                                     f"(oracle {self.oracle.name!r}); nothing after the last checkpoint was saved")
            self._log({**rec, **{f"train/{k}": v for k, v in m.items()}}, "step")
        self._pending = []

    # ---------------------------------------------------------------------------- run
    def run(self) -> LoopResult:
        cfg = self.cfg
        S = cfg.steps_per_iteration
        if self.is_main:
            os.makedirs(self.out_dir, exist_ok=True)
            with open(os.path.join(self.out_dir, "run.json"), "w") as f:
                json.dump(self.run_info(), f, indent=1)
        resumed = self._restore()
        if resumed is None:
            if self.logger is not None:
                self.logger.reset([])  # records of a run killed before its first checkpoint
            t0, k0, batch = 0, 0, None
            rec = {"iteration": 0, "global_step": 0, "counts/queries": 0, "counts/samples": 0, **self.evaluate(0)}
            self._log(rec, "iteration")
            self._report(rec)
        else:
            t0, k0, batch = resumed
            self._say(f"[{cfg.method}] resumed at iteration {t0}, step {k0} from {self.ckpt.directory}")
        bar = progress_bar(cfg.num_iterations * S, desc=cfg.method,
                           disable=None if self.progress is None else not self.progress)
        bar.update(t0 * S + k0)
        for t in range(t0, cfg.num_iterations):
            self._timer = _Timer()
            it_start = time.perf_counter()
            static, dynamic = cfg.hparams(t)
            lr = cfg.value("learning_rate", t)
            if k0 == 0 or batch is None:
                k0 = 0
                batch = self.build_batch(t)
                if cfg.reset_optimizer:
                    self.opt_state = init_optimizer_state(self.tx, self.state, self.mesh, trainable=self.trainable)
            n_rows = next(iter(batch["tokens"].values())).shape[0]
            bs = min(cfg.batch_size, n_rows)
            step = jit_policy_step(self.graphdef, self.state, self.opt_state, batch, self.mesh,
                                   loss_name=self.method.loss, optimizer=self.tx,
                                   hparams={k: v for k, v in static.items() if k in self.spec.defaults},
                                   traced=tuple(dynamic) + ("learning_rate",), response_width=cfg.max_new_tokens,
                                   minibatch=True, trainable=self.trainable)
            dyn = {**dynamic, "learning_rate": lr}
            t_train = time.perf_counter()
            for k in range(k0, S):
                self.state, self.opt_state, metrics = step(self.state, self.opt_state, batch, dyn,
                                                           self._minibatch_rows(t, k, n_rows, bs))
                if self.anchor_state is not None:
                    self.anchor_state = _ema(self.anchor_state, self._sampling_state(self.state),
                                             np.float32(cfg.anchor_ema))
                self.counters["global_step"] += 1
                self._pending.append(({"iteration": t, "step": k, "global_step": self.counters["global_step"],
                                       "hp/learning_rate": lr, **{f"hp/{n}": v for n, v in dynamic.items()}},
                                      metrics))
                bar.update(1)
                if cfg.checkpoint_every_steps and (k + 1) % cfg.checkpoint_every_steps == 0 and k + 1 < S:
                    self._save(t, k + 1, batch)
            self._flush()
            self._timer.add("time/training", time.perf_counter() - t_train)
            t_eval = time.perf_counter()
            ev = self.evaluate(t + 1)
            self._timer.add("time/eval", time.perf_counter() - t_eval)
            rec = {"iteration": t + 1, "global_step": self.counters["global_step"],
                   "counts/queries": self.counters["queries"], "counts/samples": self.counters["samples"],
                   "hp/learning_rate": lr, **{f"hp/{n}": v for n, v in dynamic.items()}, **ev,
                   **self._timer.t, "time/iteration": time.perf_counter() - it_start}
            self._log(rec, "iteration")
            self._report(rec)
            self._save(t + 1, 0)
            k0, batch = 0, None
        bar.close()
        self.ckpt.wait()
        if self.logger is not None:
            self.logger.close()
        history = self.logger.history if self.logger is not None else []
        return LoopResult(self.policy_model(), history, self.out_dir)

    def _report(self, rec: dict):
        win = rec.get("eval/win_rate_vs_ref")
        win = "" if win is None else f"win rate vs ref {win:.3f} ± {rec.get('eval/win_rate_vs_ref_stderr', 0):.3f}, "
        secs = rec.get("time/iteration")
        self._say(f"[{self.cfg.method}] iteration {rec['iteration']}/{self.cfg.num_iterations}: {win}"
                  f"KL {rec['eval/kl_to_ref']:.3f}, queries {rec['counts/queries']}"
                  + ("" if secs is None else f", {secs:.1f} s"))

    def _minibatch_rows(self, t: int, k: int, n_rows: int, bs: int) -> np.ndarray:
        """Rows of step k: a per-(iteration, epoch) permutation, cut into batch_size chunks."""
        per_epoch = max(n_rows // bs, 1)
        epoch, j = divmod(k, per_epoch)
        perm = np.random.default_rng([self.cfg.seed, t, epoch]).permutation(n_rows)
        return perm[j * bs:(j + 1) * bs].astype(np.int32)

    def close(self):
        self.ckpt.close()

    # ---------------------------------------------------------------------------- export
    def export(self, directory: str, *, tokenizer=None, tokenizer_dir=None, overwrite: bool = True) -> str | None:
        """Write the current policy as a Hugging Face directory (process 0; wind_jax.models.convert.export_hf)."""
        from wind_jax.models.convert import export_hf
        policy = self.policy_model()
        if not self.is_main:
            return None
        return export_hf(policy, self.model_config, directory, tokenizer_dir, tokenizer=tokenizer,
                         overwrite=overwrite)


__all__ = ["AlignmentLoop", "ArrayPrompts", "FunctionPrompts", "LoopConfig", "LoopResult", "METHODS",
           "NonFiniteError", "PromptStream", "from_named", "named"]

"""The Orbax-checkpointed outer loop, one for every method (MATH.md "Algorithm 3" and "Baselines").

Each outer iteration t: prompts (deterministic stream position) -> samples from pi_t (or pi_ref / the anchor)
-> preference oracle -> a batch with frozen log-probs (log pi_t, log pi_ref, log pi_anchor) and targets ->
`steps_per_iteration` policy steps with the method's loss (wind_jax.losses) -> evaluation (gold win rate vs
pi_ref, KL(pi_t || pi_ref) from samples, queries, samples, wall time split into sampling / judging /
training) -> checkpoint.

Methods (per prompt):
  wind_sq, wind_sq_offset, wind_nce  2 samples of pi_t, ONE duel; rows (y, ell) and (y', 1 - ell).
  wind_kl                            2 samples of pi_t, one duel; one row (y, y', ell).
  sppo                               K samples of pi_t, K (K-1)/2 queries; w_i = mean_j P_ij; best/worst.
  jbond                              1 sample of pi_t, 2 of the EMA anchor; duels y-a1, y-a2, a1-a2.
  bonbon                             n samples of pi_ref; round-robin winner / loser.
  dpo                                n samples of pi_t (online); round-robin winner / loser.
  bon_distill                        n samples of pi_t; NLL of the round-robin winner (iterative BoN).
Round robins use Bernoulli duel outcomes in oracle_mode="sample", probabilities in "prob".

Determinism and crash safety: every random draw uses a key folded from the run seed with (iteration, step),
prompts come from position-indexed streams, and a checkpoint holds params, optimizer state, anchor, base
key, data position, query/sample counters and the metric history. Inside an iteration a checkpoint every
`checkpoint_every_steps` steps also stores the iteration's frozen batch, so a resumed run continues from
the exact step. Resuming with the same command therefore reproduces the uninterrupted run's params and
metrics (timings aside).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from wind_jax import losses
from wind_jax.sampling import sample as _sample
from wind_jax.train.checkpoint import Checkpointer
from wind_jax.train.metrics import MetricsLogger, plot_summary, progress_bar
from wind_jax.train.oracle import PreferenceOracle, Tokens, pairwise_probabilities
from wind_jax.train.steps import OptimizerConfig, PolicyWithOffset, make_optimizer, policy_step, response_logprobs

METHODS = ("wind_sq", "wind_sq_offset", "wind_kl", "wind_nce", "sppo", "jbond", "bonbon", "dpo",
           "bon_distill")
_NEEDS_OFFSET = ("wind_sq_offset", "wind_nce")
_SCHEDULED = ("beta", "eta")  # traced hparams (a schedule does not recompile the step)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Outer-loop settings. Schedules: value_t = start + (final - start) * f(t / (T - 1)), f from
    `schedule` ("constant", "linear", "cosine"); `*_final=None` keeps the value constant."""

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
    loss_hparams: tuple[tuple[str, float], ...] = ()   # extra static hparams, e.g. (("mix", 0.5),)
    optimizer: str = "adamw"
    max_grad_norm: float = 1.0
    reset_optimizer: bool = True       # fresh optimizer state each iteration (theta_{t+1} fit from theta_t)
    anchor_ema: float = 0.1            # J-BOND: theta_a <- (1 - lam) theta_a + lam theta after each step
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
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        for name in ("num_iterations", "prompts_per_iteration", "steps_per_iteration", "batch_size",
                     "max_new_tokens", "eval_prompts", "eval_samples_per_prompt", "max_to_keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.schedule not in ("constant", "linear", "cosine"):
            raise ValueError(f'schedule must be "constant", "linear" or "cosine", got {self.schedule!r}')
        if self.oracle_mode not in ("sample", "prob"):
            raise ValueError(f'oracle_mode must be "sample" or "prob", got {self.oracle_mode!r}')
        if self.optimizer not in ("adamw", "rmsprop"):
            raise ValueError(f'optimizer must be "adamw" or "rmsprop", got {self.optimizer!r}')
        if self.num_samples == 1 or self.num_samples < 0:
            raise ValueError(f"num_samples must be 0 (method default) or >= 2, got {self.num_samples}")
        if not 0.0 < self.anchor_ema <= 1.0:
            raise ValueError(f"anchor_ema must be in (0, 1], got {self.anchor_ema}")
        if self.checkpoint_every_steps < 0:
            raise ValueError(f"checkpoint_every_steps must be >= 0, got {self.checkpoint_every_steps}")

    @property
    def loss_name(self) -> str:
        return self.method

    @property
    def samples_per_prompt(self) -> int:
        default = {"sppo": 5, "bonbon": 8, "dpo": 2, "bon_distill": 4}.get(self.method, 2)
        if self.method == "jbond":
            return 1
        if self.method.startswith("wind"):
            return 2
        return self.num_samples or default

    def value(self, name: str, t: int) -> float:
        """Scheduled value of beta / eta / learning_rate at outer iteration t."""
        start, final = getattr(self, name), getattr(self, f"{name}_final")
        if final is None or self.schedule == "constant" or self.num_iterations == 1:
            return float(start)
        u = t / (self.num_iterations - 1)
        f = u if self.schedule == "linear" else 0.5 * (1 - math.cos(math.pi * u))
        return float(start + (final - start) * f)

    def hparams(self, t: int) -> tuple[dict, dict]:
        """(static hparams, scheduled hparams) for the method's loss at iteration t."""
        spec = losses.get_loss(self.loss_name)
        static = {k: float(v) for k, v in self.loss_hparams}
        unknown = sorted(set(static) - set(spec.defaults))
        if unknown:
            raise ValueError(f"loss_hparams {unknown} are not hparams of loss {spec.name!r} "
                             f"(it takes {sorted(spec.defaults)})")
        if "n" in spec.defaults:
            static.setdefault("n", float(self.samples_per_prompt))
        dynamic = {k: self.value(k, t) for k in _SCHEDULED if k in spec.defaults}
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
        idx = []
        for p in range(position, position + count):
            epoch, i = divmod(p, n)
            idx.append(np.random.default_rng([self.seed, epoch]).permutation(n)[i])
        idx = np.asarray(idx)
        return Tokens(jnp.asarray(self.tokens[idx]), jnp.asarray(self.mask[idx]))


class FunctionPrompts:
    """A PromptStream from fn(key, count) -> [count, T] tokens (all real): prompt i uses fold_in(key, i)."""

    def __init__(self, fn: Callable[[jax.Array, int], jax.Array], seed: int = 0):
        self.fn, self.key = fn, jax.random.key(seed)

    def get(self, position, count):
        keys = [jax.random.fold_in(self.key, p) for p in range(position, position + count)]
        tokens = jnp.concatenate([self.fn(k, 1) for k in keys])
        return Tokens(tokens, jnp.ones_like(tokens, bool))


# ------------------------------------------------------------------------------------------ helpers
def _flat(tree) -> dict[str, Any]:
    return {f"{i:06d}": leaf for i, leaf in enumerate(jax.tree.leaves(tree))}


def _unflat(template, flat: Mapping[str, Any]):
    leaves, treedef = jax.tree.flatten(template)
    if len(flat) != len(leaves):
        raise ValueError(f"checkpoint holds {len(flat)} arrays, the current model needs {len(leaves)}")
    return jax.tree.unflatten(treedef, [flat[f"{i:06d}"] for i in range(len(leaves))])


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)


def _committed(tree):
    """Arrays committed to their current sharding (a jit cache key includes committedness)."""
    return jax.tree.map(lambda x: jax.device_put(x, jnp.asarray(x).sharding), tree)


def _owned(tree):
    """Copies of the arrays, committed to their current sharding. Restored checkpoints come back committed;
    starting committed too keeps one compiled step / sampler for a fresh and a resumed run."""
    return jax.tree.map(lambda x: jax.device_put(jnp.copy(x), x.sharding), tree)


def _rows(x: Tokens, idx) -> Tokens:
    return Tokens(x.tokens[idx], x.mask[idx])


def _seq(prompt: Tokens, resp: Tokens) -> dict:
    """[prompt | response] rows for policy_step / log-probs."""
    tokens = jnp.concatenate([prompt.tokens, resp.tokens], axis=1)
    rmask = jnp.concatenate([jnp.zeros_like(prompt.mask), resp.mask], axis=1)
    amask = jnp.concatenate([prompt.mask, resp.mask], axis=1)
    return {"tokens": tokens, "response_mask": rmask, "attention_mask": amask}


def _block(tree):
    return jax.block_until_ready(tree)


class _Timer:
    def __init__(self):
        self.t = {}

    def add(self, name, seconds):
        self.t[name] = self.t.get(name, 0.0) + seconds


def _make_optimizer(cfg: LoopConfig) -> optax.GradientTransformation:
    """clip -> AdamW / RMSprop with the learning rate in the optimizer state (per-iteration schedule)."""
    return make_optimizer(OptimizerConfig(name=cfg.optimizer, learning_rate=float(cfg.learning_rate),
                                          max_grad_norm=float(cfg.max_grad_norm), injectable_learning_rate=True))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 6), donate_argnums=(3, 4))
def _train_step(graphdef, loss_name, tx, state, opt_state, batch, static_items, dynamic, lr):
    """One policy step (wind_jax.train.steps.policy_step) with the injected learning rate `lr` and traced
    scheduled hparams `dynamic`. Module level with static (graphdef, loss, optimizer): loops of the same
    shapes in one process (seeds, a resumed run) reuse the compiled step."""
    opt_state.hyperparams["learning_rate"] = lr
    hp = {**dict(static_items), **dynamic}
    return policy_step(graphdef, state, opt_state, batch, loss_name, hp, optimizer=tx)


@functools.partial(jax.jit, static_argnums=0)
def _frozen_logprobs(graphdef, state, tokens, response_mask, attention_mask):
    """Summed response log-probs [B] of a frozen model (no gradient)."""
    return response_logprobs(nnx.merge(graphdef, state), tokens, response_mask, attention_mask)[0]


# ------------------------------------------------------------------------------------------ the loop
@dataclasses.dataclass
class LoopResult:
    policy: Any              # the trained wind_jax Transformer (pi_T)
    history: list[dict]      # every metric record (step and iteration)
    out_dir: str


class AlignmentLoop:
    """Build once, then `run()`. See the module docstring for the per-method data flow.

    policy: the Transformer to align (pi_0); reference: pi_ref (defaults to a frozen copy of `policy`);
    oracle: the training preference oracle; eval_oracle: the evaluator's gold oracle (None: no win rate);
    prompts / eval_prompts: PromptStreams; run_config: extra config (e.g. the experiment's) stored with
    checkpoints and compared on resume.
    """

    def __init__(self, config: LoopConfig, *, policy, oracle: PreferenceOracle, prompts: PromptStream,
                 out_dir: str, reference=None, eval_oracle: PreferenceOracle | None = None,
                 eval_prompts: PromptStream | None = None, run_config: Mapping[str, Any] | None = None,
                 tensorboard: bool = True, progress: bool | None = None):
        self.cfg = config
        self.out_dir = os.path.abspath(out_dir)
        self.oracle, self.eval_oracle = oracle, eval_oracle
        self.prompts, self.eval_prompts = prompts, (eval_prompts or prompts)
        self.spec = losses.get_loss(config.loss_name)
        self.model_config = policy.config
        ref_model = reference if reference is not None else policy
        self.ref_graphdef, self.ref_state = nnx.split(ref_model)
        self.ref_state = _owned(self.ref_state)
        module = PolicyWithOffset(policy, rngs=nnx.Rngs(config.seed)) if config.method in _NEEDS_OFFSET \
            else policy
        self.graphdef, self.state = nnx.split(module)
        self.state = _owned(self.state)  # steps donate it: keep the caller's model intact
        self.tx = _make_optimizer(config)
        self.opt_state = self._init_opt_state()
        self.anchor_state = (_owned(self.ref_state) if config.method == "jbond" else None)
        self.key = jax.random.key(config.seed)
        self.run_config = {"loop": dataclasses.asdict(config), **(dict(run_config or {}))}
        self.ckpt = Checkpointer(os.path.join(self.out_dir, "checkpoints"), config=self.run_config,
                                 max_to_keep=config.max_to_keep, async_save=config.async_checkpoint)
        self.logger = MetricsLogger(self.out_dir, tensorboard=tensorboard)
        self.progress = progress
        self.counters = {"queries": 0, "samples": 0, "global_step": 0}

    # ---------------------------------------------------------------------------- jitted pieces
    def _train_step(self, state, opt_state, batch, dynamic, static_items, lr):
        return _train_step(self.graphdef, self.cfg.loss_name, self.tx, state, opt_state, batch, static_items,
                           dynamic, lr)

    def _logprob(self, state, tokens, response_mask, attention_mask):
        return _frozen_logprobs(self.ref_graphdef, state, tokens, response_mask, attention_mask)

    def _init_opt_state(self):
        """Fresh optimizer state; the injected learning rate is stored as a strong float32 (the step returns
        it so), so the first and later steps share one compiled train step."""
        opt_state = self.tx.init(nnx.split_state(self.state, nnx.Param, ...)[0])
        opt_state.hyperparams["learning_rate"] = jnp.float32(self.cfg.learning_rate)
        return _committed(opt_state)

    def _policy_model(self, state=None):
        module = nnx.merge(self.graphdef, self.state if state is None else state)
        return module.policy if isinstance(module, PolicyWithOffset) else module

    def _ref_model(self, state=None):
        return nnx.merge(self.ref_graphdef, self.ref_state if state is None else state)

    def _sample(self, model, prompts: Tokens, n: int, key, *, temperature=None):
        out = _sample(model, prompts.tokens, prompts.mask, key, num_samples=n,
                      max_new_tokens=self.cfg.max_new_tokens,
                      temperature=self.cfg.temperature if temperature is None else temperature,
                      eos_token_id=self.cfg.eos_token_id, pad_token_id=self.cfg.pad_token_id)
        tp = prompts.tokens.shape[1]
        resp = [Tokens(out.tokens[:, i, tp:], out.response_mask[:, i, tp:]) for i in range(n)]
        self.counters["samples"] += n * prompts.tokens.shape[0]
        return resp, out.logprobs

    def _logprobs(self, state, prompt: Tokens, resp: Tokens, *, policy_state=False):
        """Frozen summed log-probs [B] (policy states are mapped onto the plain Transformer)."""
        if policy_state:
            s = nnx.split(self._policy_model(state))[1]
        else:
            s = state
        seq = _seq(prompt, resp)
        return self._logprob(s, seq["tokens"], seq["response_mask"], seq["attention_mask"])

    def _duel(self, prompt, a, b, key):
        pref = self.oracle.prefer(prompt, a, b, key)
        self.counters["queries"] += int(a.tokens.shape[0])
        return pref.outcome if self.cfg.oracle_mode == "sample" else pref.prob

    def _round_robin(self, prompt, resp, key):
        """Row-wise win rates w_i = mean_j M_ij (diag 1/2); M = outcomes or probabilities."""
        K = len(resp)
        P = pairwise_probabilities(self.oracle, prompt, resp)
        self.counters["queries"] += prompt.tokens.shape[0] * K * (K - 1) // 2
        if self.cfg.oracle_mode == "sample":
            upper = jax.random.bernoulli(key, P).astype(jnp.float32)
            iu = jnp.triu(jnp.ones((K, K), bool), 1)
            M = jnp.where(iu, upper, jnp.where(iu.T, 1.0 - jnp.swapaxes(upper, 1, 2), 0.5))
        else:
            M = P
        return M.mean(axis=2)

    # ---------------------------------------------------------------------------- batch building
    def build_batch(self, t: int, prompts: Tokens, key) -> dict:
        """Sample, judge and assemble the frozen iteration batch (host side; MATH.md Alg. 3 / Baselines)."""
        cfg, timer = self.cfg, self._timer
        k_sample, k_anchor, k_judge = jax.random.split(key, 3)
        m = cfg.method
        t0 = time.perf_counter()
        policy = self._policy_model()
        if m == "bonbon":
            resp, _ = self._sample(self._ref_model(), prompts, cfg.samples_per_prompt, k_sample)
        else:
            resp, _ = self._sample(policy, prompts, cfg.samples_per_prompt, k_sample)
        if m == "jbond":
            anchors, _ = self._sample(self._ref_model(self.anchor_state), prompts, 2, k_anchor)
        _block(resp)
        timer.add("time/sampling", time.perf_counter() - t0)

        t0 = time.perf_counter()
        rows: dict[str, Any] = {}
        if m.startswith("wind"):
            ell = self._duel(prompts, resp[0], resp[1], k_judge)
            if m == "wind_kl":
                rows = {"prompt": prompts, "resp": {"y": resp[0], "y_prime": resp[1]}, "target": ell}
            else:
                both = lambda a, b: Tokens(jnp.concatenate([a.tokens, b.tokens]),  # noqa: E731
                                           jnp.concatenate([a.mask, b.mask]))
                rows = {"prompt": both(prompts, prompts), "resp": {"y": both(resp[0], resp[1])},
                        "target": jnp.concatenate([ell, 1.0 - ell])}
        elif m == "jbond":
            o1 = self._duel(prompts, resp[0], anchors[0], jax.random.fold_in(k_judge, 1))
            o2 = self._duel(prompts, resp[0], anchors[1], jax.random.fold_in(k_judge, 2))
            o12 = self._duel(prompts, anchors[0], anchors[1], jax.random.fold_in(k_judge, 3))
            first_better = o12 >= 0.5
            best = Tokens(jnp.where(first_better[:, None], anchors[0].tokens, anchors[1].tokens),
                          jnp.where(first_better[:, None], anchors[0].mask, anchors[1].mask))
            rows = {"prompt": prompts, "resp": {"y": resp[0], "best": best},
                    "lost_to_both": (1.0 - o1) * (1.0 - o2)}
        else:
            w = self._round_robin(prompts, resp, k_judge)
            hi, lo = jnp.argmax(w, axis=1), jnp.argmin(w, axis=1)
            stack_t = jnp.stack([r.tokens for r in resp], 1)
            stack_m = jnp.stack([r.mask for r in resp], 1)
            pick = lambda i: Tokens(jnp.take_along_axis(stack_t, i[:, None, None], 1)[:, 0],  # noqa: E731
                                    jnp.take_along_axis(stack_m, i[:, None, None], 1)[:, 0])
            if m == "bon_distill":
                rows = {"prompt": prompts, "resp": {"y": pick(hi)}}
            else:
                rows = {"prompt": prompts, "resp": {"chosen": pick(hi), "rejected": pick(lo)}}
                if m == "sppo":
                    rows["target_chosen"] = jnp.take_along_axis(w, hi[:, None], 1)[:, 0]
                    rows["target_rejected"] = jnp.take_along_axis(w, lo[:, None], 1)[:, 0]
        _block(rows)
        timer.add("time/judging", time.perf_counter() - t0)

        t0 = time.perf_counter()
        batch = {"tokens": {}, "response_mask": {}, "attention_mask": {}}
        prompt = rows["prompt"]
        for name, r in rows["resp"].items():
            seq = _seq(prompt, r)
            for f in ("tokens", "response_mask", "attention_mask"):
                batch[f][name] = seq[f]
        for key_name in self.spec.batch_keys:
            role, _, resp_name = key_name.partition("_")
            if role in ("prev", "ref", "anchor") and resp_name in rows["resp"]:
                if role == "prev":
                    lp = self._logprobs(self.state, prompt, rows["resp"][resp_name], policy_state=True)
                elif role == "ref":
                    lp = self._logprobs(self.ref_state, prompt, rows["resp"][resp_name])
                else:
                    lp = self._logprobs(self.anchor_state, prompt, rows["resp"][resp_name])
                batch[key_name] = lp
            elif key_name in rows:
                batch[key_name] = jnp.asarray(rows[key_name], jnp.float32)
            else:
                raise ValueError(f"loop: cannot supply batch key {key_name!r} of loss {self.spec.name!r}")
        _block(batch)
        timer.add("time/logprobs", time.perf_counter() - t0)
        return batch

    # ---------------------------------------------------------------------------- evaluation
    def evaluate(self, t: int) -> dict:
        """Gold win rate of pi_t vs pi_ref and KL(pi_t || pi_ref) from samples (fixed eval prompts/keys)."""
        cfg = self.cfg
        key = jax.random.fold_in(jax.random.fold_in(self.key, 1_000_003), t)
        prompts = self.eval_prompts.get(0, cfg.eval_prompts)
        n = cfg.eval_samples_per_prompt
        saved = dict(self.counters)
        pol, lp_pol = self._sample(self._policy_model(), prompts, n, jax.random.fold_in(key, 0),
                                   temperature=1.0)
        ref, _ = self._sample(self._ref_model(), prompts, n, jax.random.fold_in(key, 1), temperature=1.0)
        self.counters = saved  # evaluation does not count toward the method's samples
        out = {}
        kl = []
        for i in range(n):
            kl.append(lp_pol[:, i] - self._logprobs(self.ref_state, prompts, pol[i]))
        kl = jnp.stack(kl, 1)
        out["eval/kl_to_ref"] = float(jnp.mean(kl))
        out["eval/kl_to_ref_stderr"] = float(jnp.std(kl) / np.sqrt(kl.size))
        out["eval/response_length"] = float(np.mean([np.asarray(p.mask.sum(1)) for p in pol]))
        if self.eval_oracle is not None:
            ps = [self.eval_oracle.probability(prompts, pol[i], ref[i], count=False) for i in range(n)]
            ps = jnp.stack(ps, 1)
            out["eval/win_rate_vs_ref"] = float(jnp.mean(ps))
            out["eval/win_rate_vs_ref_stderr"] = float(jnp.std(ps.mean(1)) / np.sqrt(ps.shape[0]))
        return out

    # ---------------------------------------------------------------------------- checkpoints
    def _ckpt_id(self, t: int, k: int) -> int:
        return t * (self.cfg.steps_per_iteration + 1) + k

    def _save(self, t: int, k: int, batch=None):
        state = {"policy": _flat(self.state), "opt": _flat(self.opt_state),
                 "key": jax.random.key_data(self.key)}
        if self.anchor_state is not None:
            state["anchor"] = _flat(self.anchor_state)
        meta = {"iteration": t, "step_in_iteration": k, "counters": dict(self.counters),
                "data_position": t * self.cfg.prompts_per_iteration,
                "oracle": self.oracle.state_dict(), "history": list(self.logger.history)}
        self.ckpt.save(self._ckpt_id(t, k), state, meta, extra=batch)

    def _restore(self):
        """-> (iteration, step_in_iteration, batch or None), or None when there is no checkpoint."""
        if self.ckpt.latest_step() is None:
            return None
        target = {"policy": _flat(_abstract(self.state)), "opt": _flat(_abstract(self.opt_state)),
                  "key": _abstract(jax.random.key_data(self.key))}
        if self.anchor_state is not None:
            target["anchor"] = _flat(_abstract(self.anchor_state))
        state, meta, batch = self.ckpt.restore(target=target)
        self.state = _unflat(self.state, state["policy"])
        self.opt_state = _unflat(self.opt_state, state["opt"])
        if self.anchor_state is not None:
            self.anchor_state = _unflat(self.anchor_state, state["anchor"])
        if not np.array_equal(np.asarray(state["key"]), np.asarray(jax.random.key_data(self.key))):
            raise ValueError("checkpoint RNG key differs from the one derived from config seed")
        self.counters = dict(meta["counters"])
        self.oracle.load_state_dict(meta["oracle"])
        self.logger.reset(meta["history"])
        return int(meta["iteration"]), int(meta["step_in_iteration"]), batch

    # ---------------------------------------------------------------------------- run
    def run(self) -> LoopResult:
        cfg = self.cfg
        S = cfg.steps_per_iteration
        resumed = self._restore()
        if resumed is None:
            self.logger.reset([])  # a run killed before its first checkpoint left records of nothing saved
            t0, k0, batch = 0, 0, None
            rec = {"iteration": 0, "global_step": 0, "counts/queries": 0, "counts/samples": 0,
                   **self.evaluate(0)}
            self.logger.log(rec, kind="iteration")
        else:
            t0, k0, batch = resumed
        bar = progress_bar(cfg.num_iterations * S, desc=cfg.method,
                           disable=None if self.progress is None else not self.progress)
        bar.update(t0 * S + k0)
        for t in range(t0, cfg.num_iterations):
            self._timer = _Timer()
            it_start = time.perf_counter()
            static, dynamic = cfg.hparams(t)
            lr = cfg.value("learning_rate", t)
            it_key = jax.random.fold_in(self.key, t)
            if k0 == 0 or batch is None:
                k0 = 0
                prompts = self.prompts.get(t * cfg.prompts_per_iteration, cfg.prompts_per_iteration)
                batch = self.build_batch(t, prompts, jax.random.fold_in(it_key, 0))
                if cfg.reset_optimizer:
                    self.opt_state = self._init_opt_state()
            batch = _committed(batch)
            n_rows = next(iter(batch["tokens"].values())).shape[0]
            static_items = tuple(sorted(static.items()))
            dyn = {k: jnp.float32(v) for k, v in dynamic.items()}
            t_train = time.perf_counter()
            for k in range(k0, S):
                rows = self._minibatch_rows(t, k, n_rows)
                mb = jax.tree.map(lambda x: x[rows], batch)
                self.state, self.opt_state, metrics = self._train_step(
                    self.state, self.opt_state, mb, dyn, static_items, jnp.float32(lr))
                if self.anchor_state is not None:
                    lam = cfg.anchor_ema
                    pol = nnx.split(self._policy_model())[1]
                    self.anchor_state = jax.tree.map(lambda a, p: (1 - lam) * a + lam * p,
                                                     self.anchor_state, pol)
                self.counters["global_step"] += 1
                rec = {"iteration": t, "step": k, "global_step": self.counters["global_step"],
                       "hp/learning_rate": lr, **{f"hp/{n}": v for n, v in dynamic.items()},
                       **{f"train/{n}": v for n, v in metrics.items()}}
                self.logger.log(rec, kind="step")
                bar.update(1)
                if cfg.checkpoint_every_steps and (k + 1) % cfg.checkpoint_every_steps == 0 and k + 1 < S:
                    self._save(t, k + 1, batch)
            _block(self.state)
            self._timer.add("time/training", time.perf_counter() - t_train)
            t_eval = time.perf_counter()
            ev = self.evaluate(t + 1)
            self._timer.add("time/eval", time.perf_counter() - t_eval)
            rec = {"iteration": t + 1, "global_step": self.counters["global_step"],
                   "counts/queries": self.counters["queries"], "counts/samples": self.counters["samples"],
                   "hp/learning_rate": lr, **{f"hp/{n}": v for n, v in dynamic.items()}, **ev,
                   **self._timer.t, "time/iteration": time.perf_counter() - it_start}
            self.logger.log(rec, kind="iteration")
            self._save(t + 1, 0)
            k0, batch = 0, None
        bar.close()
        self.ckpt.wait()
        self.logger.close()
        return LoopResult(self._policy_model(), self.logger.history, self.out_dir)

    def _minibatch_rows(self, t: int, k: int, n_rows: int):
        """Rows of step k: a per-(iteration, epoch) permutation, cut into batch_size chunks."""
        bs = min(self.cfg.batch_size, n_rows)
        per_epoch = max(n_rows // bs, 1)
        epoch, j = divmod(k, per_epoch)
        perm = np.random.default_rng([self.cfg.seed, t, epoch]).permutation(n_rows)
        return jnp.asarray(perm[j * bs:(j + 1) * bs])

    def close(self):
        self.ckpt.close()

    # ---------------------------------------------------------------------------- export
    def export(self, directory: str, *, tokenizer=None, tokenizer_dir=None, overwrite: bool = True) -> str:
        """Write the current policy as a Hugging Face directory (wind_jax.models.convert.export_hf)."""
        from wind_jax.models.convert import export_hf
        return export_hf(self._policy_model(), self.model_config, directory, tokenizer_dir,
                         tokenizer=tokenizer, overwrite=overwrite)


def plot_methods(histories: Mapping[str, list], path: str) -> str:
    """Summary PNG (win rate vs pi_ref, KL, queries) over methods; see metrics.plot_summary."""
    return plot_summary(histories, path)

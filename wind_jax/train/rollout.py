"""The rollout side of one outer iteration: prompts -> samples -> the oracle -> the iteration's batch.

  prompts (position-indexed stream; each process takes its own slice) -> one jitted rollout per draw source
  on the sharded params ([B, N, T] tokens, masks and summed log-probs log pi_t) -> the method's duels (a fixed
  schedule: ONE oracle call over every pair, each process judging its own prompts; a tournament: one call
  per round) -> one jitted program that draws the outcomes, assembles the method's rows (wind_jax.methods)
  and adds the frozen log-probs (the rollout's own log-probs where a response was drawn from that model, a
  forward pass of pi_ref / the anchor otherwise).
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from wind_jax import methods as methods_lib
from wind_jax import sharding
from wind_jax.sampling import sample_state
from wind_jax.train.config import LoopConfig
from wind_jax.train.oracle import PreferenceOracle, Tokens
from wind_jax.train.programs import PROGRAMS
from wind_jax.train.steps import policy_outputs


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


class NonFiniteError(FloatingPointError):
    """A loss, gradient or oracle answer was NaN or inf; nothing after it was saved."""


class OracleError(RuntimeError):
    """An oracle raised; the message names the oracle and where (the cause is chained)."""


class Timer:
    """Seconds per phase of an iteration ("time/sampling", ...)."""

    def __init__(self):
        self.t: dict[str, float] = {}

    def add(self, name, seconds):
        self.t[name] = self.t.get(name, 0.0) + seconds


# ------------------------------------------------------------------------------------ batch program
@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """Static description of the batch program (hashable: a compile-cache key)."""

    method: str
    n: int
    sample_mode: bool              # draw Bernoulli outcomes from the fixed schedule's probabilities
    hparams: tuple[tuple[str, float], ...]
    keys: tuple[str, ...]          # frozen batch keys to produce
    weighted: bool
    ref_graphdef: Any


def prepare_batch(spec: BatchSpec, ref_state, anchor_state, prompt, prompt_mask, resp, resp_mask, lp,
                  tournament: methods_lib.Tournament, key):
    """Outcomes -> the method's rows -> the iteration batch with frozen log-probs (one jitted program).

    prompt [B, Tp]; resp / resp_mask / lp: one entry per draw, [B, N_d, Tp + Tn] rollouts and [B, N_d] each
    sample's log-prob under the model it was drawn from (concatenated here into the sample axis);
    tournament.outcome [B, Q]: P(pair[0] beats pair[1]) of a fixed schedule (or the tournament's results)."""
    method = methods_lib.get_method(spec.method)
    tp = prompt.shape[1]
    resp = jnp.concatenate([r[:, :, tp:] for r in resp], axis=1)
    resp_mask = jnp.concatenate([m[:, :, tp:] for m in resp_mask], axis=1)
    lp = jnp.concatenate(lp, axis=1)
    hp = dict(spec.hparams)
    if spec.sample_mode:
        tournament = dataclasses.replace(
            tournament, outcome=jax.random.bernoulli(key, tournament.outcome).astype(jnp.float32))
    rows = method.assemble(tournament, spec.n, hp)
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
    for key_name in spec.keys:
        role, _, resp_name = key_name.partition("_")
        if key_name in rows.values:
            batch[key_name] = rows.values[key_name].reshape(-1).astype(jnp.float32)
        elif role == "prev" and method.sources[resp_name] == "policy":
            batch[key_name] = own[resp_name]
        elif role in models and method.sources[resp_name] == models[role][0]:
            batch[key_name] = own[resp_name]
        elif role in models:
            sub = {f: {resp_name: batch[f][resp_name]} for f in ("tokens", "response_mask", "attention_mask")}
            model = nnx.merge(spec.ref_graphdef, models[role][1])
            batch[key_name] = jax.lax.stop_gradient(
                policy_outputs(model, sub, (resp_name,), response_width=tn)[resp_name])
        else:
            raise ValueError(f"method {spec.method!r}: cannot supply batch key {key_name!r}")
    if spec.weighted:
        batch["weight"] = method.weight(batch, hp)
    return batch


# ------------------------------------------------------------------------------------ the collector
class Collector:
    """Samples, judges and assembles an iteration's batch (see the module docstring)."""

    def __init__(self, cfg: LoopConfig, *, policy_graphdef, mesh: Mesh, prompts: PromptStream,
                 oracle: PreferenceOracle):
        self.cfg, self.method = cfg, cfg.method_record
        self.policy_graphdef, self.mesh = policy_graphdef, mesh
        self.prompts, self.oracle = prompts, oracle

    def global_prompts(self, stream: PromptStream, position: int, count: int) -> Tokens:
        per = count // jax.process_count()
        local = stream.get(position + jax.process_index() * per, per)
        g = sharding.shard_host_batch({"t": np.asarray(local.tokens, np.int32),
                                       "m": np.asarray(local.mask, bool)}, self.mesh)
        return Tokens(g["t"], g["m"])

    def rollout(self, state, prompts: Tokens, n: int, key, temperature: float):
        out = sample_state(self.policy_graphdef, state, prompts.tokens, prompts.mask, key, num_samples=n,
                           max_new_tokens=self.cfg.max_new_tokens, temperature=temperature,
                           eos_token_id=self.cfg.eos_token_id, pad_token_id=self.cfg.pad_token_id, mesh=self.mesh)
        return out.tokens, out.response_mask, out.logprobs   # [B, N, Tp + Tn]: sliced inside jitted programs

    def judge(self, oracle: PreferenceOracle, prompts_local: np.ndarray, pmask_local: np.ndarray,
              resp: np.ndarray, rmask: np.ndarray, i, j, *, where: str, count: bool = True) -> np.ndarray:
        """ONE oracle call over every (prompt b, pair (i[b, q], j[b, q])): -> P(i beats j) [B_local, Q], checked.
        An oracle's exception is re-raised naming the oracle and `where` (the cause chained)."""
        i, j = (np.broadcast_to(np.asarray(x), (resp.shape[0], np.shape(x)[-1])) for x in (i, j))
        b, q = i.shape
        rows = np.repeat(np.arange(b), q)
        prompt = Tokens(np.repeat(prompts_local, q, axis=0), np.repeat(pmask_local, q, axis=0))
        a = Tokens(resp[rows, i.reshape(-1)], rmask[rows, i.reshape(-1)])
        c = Tokens(resp[rows, j.reshape(-1)], rmask[rows, j.reshape(-1)])
        try:
            raw = oracle.probability(prompt, a, c, count=count)
        except Exception as e:
            raise OracleError(f"oracle {oracle.name!r} failed at {where}: {type(e).__name__}: {e}") from e
        p = np.asarray(raw)
        if p.dtype.kind not in "biuf":
            raise ValueError(f"oracle {oracle.name!r} ({where}) returned non-numeric answers (dtype {p.dtype}); "
                             f"it must return probabilities P(a beats b) as floats")
        if p.shape != (b * q,):
            raise ValueError(f"oracle {oracle.name!r} ({where}) returned shape {p.shape} for {b * q} pairs")
        if not np.all(np.isfinite(p)):
            raise NonFiniteError(f"oracle {oracle.name!r} ({where}) returned {int(np.sum(~np.isfinite(p)))} "
                                 f"non-finite probabilities of {b * q}; nothing of this iteration was saved")
        if np.any((p < 0) | (p > 1)):
            raise ValueError(f"oracle {oracle.name!r} ({where}) returned probabilities outside [0, 1] "
                             f"(min {p.min():.4g}, max {p.max():.4g})")
        return p.reshape(b, q).astype(np.float32)

    def batch_spec(self, t: int) -> BatchSpec:
        static, _ = self.cfg.hparams(t)
        weighted = self.method.weight is not None and self.method.weighted(static)
        keys = tuple(self.method.spec.batch_keys)
        if weighted:
            keys = tuple(dict.fromkeys(keys + self.method.weight_keys))
        sample_mode = self.cfg.oracle_mode == "sample" and not self.method.schedule.adaptive
        return BatchSpec(self.cfg.method, self.cfg.n, sample_mode, tuple(sorted(static.items())), keys, weighted,
                         self.policy_graphdef)

    def _program(self, spec: BatchSpec, example):
        def build():
            out = jax.eval_shape(lambda *a: prepare_batch(spec, *a), *example)
            return jax.jit(lambda *a: prepare_batch(spec, *a), out_shardings=sharding.batch_shardings(out, self.mesh))
        return PROGRAMS.get(("prepare", spec, self.mesh), build)

    def _duels(self, t: int, prompts: Tokens, resp, rmask) -> methods_lib.Tournament:
        """The method's duels on this process's rows: a fixed schedule in one oracle call (probabilities; the
        batch program draws the outcomes), a tournament round by round with outcomes drawn here."""
        cfg, schedule = self.cfg, self.method.schedule
        pt, pm = sharding.local_rows(prompts.tokens), sharding.local_rows(prompts.mask)
        tp = pt.shape[1]
        host_resp = np.concatenate([sharding.local_rows(r)[:, :, tp:] for r in resp], axis=1)
        host_mask = np.concatenate([sharding.local_rows(m)[:, :, tp:] for m in rmask], axis=1)
        where = f"iteration {t}"
        if not schedule.adaptive:
            pairs = schedule.pairs(cfg.n)
            i, j = np.asarray([[p[0] for p in pairs]]), np.asarray([[p[1] for p in pairs]])
            return methods_lib.Tournament(self.judge(self.oracle, pt, pm, host_resp, host_mask, i, j, where=where))

        b, first = pt.shape[0], jax.process_index() * pt.shape[0]

        def duel(key, i, j):  # outcomes drawn for the global rows, this process's slice kept
            p = self.judge(self.oracle, pt, pm, host_resp, host_mask, np.asarray(i), np.asarray(j), where=where)
            u = jax.random.uniform(key, (b * jax.process_count(), p.shape[1]))[first:first + b]
            return (u < p).astype(jnp.float32)

        local = schedule.play(duel, sharding.host_key(cfg.seed, t, 1), cfg.n, b)
        return jax.tree.map(np.asarray, local)

    def collect(self, t: int, models: dict, timer: Timer) -> dict:
        """Sample, judge and assemble the iteration batch of outer iteration t (MATH.md Alg. 3 / Baselines).
        models: {"policy": pi_t's plain state, "reference": ..., "anchor": ... or None}."""
        cfg, method = self.cfg, self.method
        t0 = time.perf_counter()
        prompts = self.global_prompts(self.prompts, t * cfg.prompts_per_iteration, cfg.prompts_per_iteration)
        parts = [self.rollout(models[source], prompts, count, sharding.host_key(cfg.seed, t, 0, d), cfg.temperature)
                 for d, (source, count) in enumerate(method.counts(cfg.n))]
        resp, rmask, lp = (tuple(p[i] for p in parts) for i in range(3))
        jax.block_until_ready(lp)
        timer.add("time/sampling", time.perf_counter() - t0)

        t0 = time.perf_counter()
        local = self._duels(t, prompts, resp, rmask)
        tournament = jax.tree.map(lambda x: sharding.shard_host_batch(x, self.mesh), local)
        timer.add("time/judging", time.perf_counter() - t0)

        t0 = time.perf_counter()
        args = (models["reference"], models["anchor"], prompts.tokens, prompts.mask, resp, rmask, lp, tournament,
                sharding.host_key(cfg.seed, t, 1))
        batch = self._program(self.batch_spec(t), args)(*args)
        jax.block_until_ready(batch)
        timer.add("time/logprobs", time.perf_counter() - t0)  # batch program: rows + frozen log-probs
        return batch

    def batch_template(self, ref_state, anchor_state):
        """Shapes and shardings of an iteration batch (for restoring a mid-iteration checkpoint)."""
        cfg = self.cfg
        b, tn = cfg.prompts_per_iteration, cfg.max_new_tokens
        tp = self.prompts.get(0, 1).tokens.shape[1]
        sds = jax.ShapeDtypeStruct
        counts = [c for _, c in self.method.counts(cfg.n)]
        schedule = self.method.schedule
        if schedule.adaptive:
            tournament = jax.eval_shape(lambda k: schedule.play(lambda _, i, j: jnp.zeros(i.shape), k, cfg.n, b),
                                        sharding.host_key(0))
        else:
            tournament = methods_lib.Tournament(sds((b, cfg.queries_per_prompt), jnp.float32))
        args = (ref_state, anchor_state, sds((b, tp), jnp.int32), sds((b, tp), bool),
                tuple(sds((b, c, tp + tn), jnp.int32) for c in counts), tuple(sds((b, c, tp + tn), bool) for c in counts),
                tuple(sds((b, c), jnp.float32) for c in counts), tournament, jax.eval_shape(lambda: sharding.host_key(0)))
        spec = self.batch_spec(0)
        shapes = jax.eval_shape(lambda *a: prepare_batch(spec, *a), *args)
        shard = sharding.batch_shardings(shapes, self.mesh)
        return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), shapes, shard)

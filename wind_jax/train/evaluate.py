"""Evaluation of pi_t after each outer iteration: the gold win rate against pi_ref and KL(pi_t || pi_ref)
estimated from samples, on fixed evaluation prompts and keys (the same at every iteration and resume).

KL(pi || pi_ref) = E_{y ~ pi}[log pi(y|x) - log pi_ref(y|x)] over `eval_samples_per_prompt` samples per
prompt (summed response log-probs, MATH.md); win rate = mean over (prompt, k) of P_gold(y_k beats y'_k)
with y_k ~ pi_t and y'_k ~ pi_ref, its standard error over prompts. pi_ref's replies are drawn at every
evaluation, or once (`eval_fixed_reference`: pi_ref never changes, so one draw serves every iteration, costs a
third less and pairs the iterations' win rates). `per_prompt` keeps each evaluation's per-prompt values (KL,
duel outcomes, correctness) for paired statistics.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from wind_jax import sharding
from wind_jax.train.oracle import PreferenceOracle, Tokens
from wind_jax.train.programs import PROGRAMS
from wind_jax.train.rollout import Collector, PromptStream
from wind_jax.train.steps import policy_outputs


class Evaluator:
    """`evaluate(t, policy_state, ref_state)` -> {"eval/kl_to_ref", "eval/win_rate_vs_ref", ...}."""

    def __init__(self, collector: Collector, prompts: PromptStream, oracle: PreferenceOracle | None):
        self.collector, self.prompts, self.oracle = collector, prompts, oracle
        self.cfg, self.mesh = collector.cfg, collector.mesh
        self.per_prompt: list[dict] = []  # per evaluation {"t", "step", "kl" [B, N], "win" [B, N], "correct" [B, 2N]}
        self._fixed_ref = None

    def evaluate(self, t: int, policy_state, ref_state, step: int = 0) -> dict:
        """pi_t against pi_ref; step > 0: the policy after `step` optimizer steps of iteration t (its own draw)."""
        cfg, c = self.cfg, self.collector
        n = cfg.eval_samples_per_prompt
        prompts = c.global_prompts(self.prompts, 0, cfg.eval_prompts)
        key = sharding.host_key(cfg.seed, t, 2, 0, step) if step else sharding.host_key(cfg.seed, t, 2, 0)
        pol, pol_mask, lp_pol = c.rollout(policy_state, prompts, n, key, 1.0)
        ref, ref_mask = self._reference_replies(t, ref_state, prompts, n)
        lp_ref = self._ref_logprobs(prompts, ref_state, pol, pol_mask)
        kl = sharding.gathered(lp_pol).reshape(-1) - sharding.gathered(lp_ref).reshape(-1)
        tp = prompts.tokens.shape[1]
        record = {"t": t, "step": step, "kl": kl.reshape(-1, n)}
        out = {"eval/kl_to_ref": float(np.mean(kl)), "eval/kl_to_ref_stderr": float(np.std(kl) / np.sqrt(kl.size)),
               "eval/response_length": float(np.mean(sharding.gathered(pol_mask)[:, :, tp:].sum(-1)))}
        if self.oracle is not None:
            local = lambda x: sharding.local_rows(x)[:, :, tp:]  # noqa: E731
            both = np.concatenate([local(pol), local(ref)], axis=1)
            both_mask = np.concatenate([local(pol_mask), local(ref_mask)], axis=1)
            i, j = np.arange(n)[None], np.arange(n, 2 * n)[None]
            p = c.judge(self.oracle, sharding.local_rows(prompts.tokens), sharding.local_rows(prompts.mask), both,
                        both_mask, i, j, where=f"evaluation {t}", count=False)
            p = sharding.gathered(sharding.shard_host_batch(p, self.mesh))
            record["win"] = np.asarray(p)
            out["eval/win_rate_vs_ref"] = float(np.mean(p))
            out["eval/win_rate_vs_ref_stderr"] = float(np.std(p.mean(1)) / np.sqrt(p.shape[0]))
            if hasattr(self.oracle, "correct"):  # a verifier: accuracy of pi_t and pi_ref (no queries counted)
                correct = self._correct(prompts, both, both_mask, n)
                record["correct"] = correct
                out.update({"eval/accuracy": float(correct[:, :n].mean()),
                            "eval/accuracy_ref": float(correct[:, n:].mean())})
        self.per_prompt.append(record)
        return out

    def _reference_replies(self, t: int, ref_state, prompts: Tokens, n: int):
        """pi_ref's replies to the evaluation prompts [B, N, T] and their masks (drawn once when fixed)."""
        if not self.cfg.eval_fixed_reference:
            return self.collector.rollout(ref_state, prompts, n, sharding.host_key(self.cfg.seed, t, 2, 1), 1.0)[:2]
        if self._fixed_ref is None:
            self._fixed_ref = self.collector.rollout(ref_state, prompts, n, sharding.host_key(self.cfg.seed, 0, 2, 1),
                                                     1.0)[:2]
        return self._fixed_ref

    def _correct(self, prompts: Tokens, both, both_mask, n: int) -> np.ndarray:
        """Correctness [B, 2N] of pi_t's replies (0..n-1) and pi_ref's (n..2n-1), over every process's rows."""
        b = both.shape[0]
        rows = lambda x: np.repeat(sharding.local_rows(x), 2 * n, axis=0)  # noqa: E731
        flat = lambda x: x.reshape((b * 2 * n,) + x.shape[2:])  # noqa: E731
        c = self.oracle.correct(Tokens(rows(prompts.tokens), rows(prompts.mask)), Tokens(flat(both), flat(both_mask)))
        return sharding.gathered(sharding.shard_host_batch(np.asarray(c, np.float32).reshape(b, 2 * n), self.mesh))

    def _ref_logprobs(self, prompts: Tokens, ref_state, resp, resp_mask):
        """log pi_ref of the policy's eval samples [B, N] (one sharded forward)."""
        graphdef, mesh = self.collector.policy_graphdef, self.mesh

        def lp(state, pt, pm, r, rm):
            b, n, t = r.shape
            tn = t - pt.shape[1]
            mask = jnp.concatenate([jnp.repeat(pm, n, axis=0), rm.reshape(b * n, t)[:, -tn:]], axis=1)
            batch = {"tokens": {"y": r.reshape(b * n, t)}, "response_mask": {"y": rm.reshape(b * n, t)},
                     "attention_mask": {"y": mask}}
            out = policy_outputs(nnx.merge(graphdef, state), batch, ("y",), response_width=tn)["y"]
            return jax.lax.stop_gradient(out).reshape(b, n)

        size = prompts.tokens.shape[0]

        def build():
            return jax.jit(lp, out_shardings=NamedSharding(mesh, sharding.batch_spec(2, mesh, size=size)))
        fn = PROGRAMS.get(("eval_logprobs", graphdef, mesh, size), build)
        return fn(ref_state, prompts.tokens, prompts.mask, resp, resp_mask)

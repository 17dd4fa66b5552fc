"""Frontier evaluation: draws of a policy on the loop's evaluation prompts, exact gold preference matrices,
the Monte Carlo win-rate / KL frontier of a policy against itself (wind_jax.monte_carlo_frontier) and
reading it at a KL."""
from __future__ import annotations

import functools

import numpy as np

from benchmarks.llm_frontier.plan import LAMBDAS


def eval_prompts(lang, seed: int, count: int) -> np.ndarray:
    """The loop's evaluation prompts of `seed` (wind_jax.train.tasks.build_loop: seed + 10_000)."""
    from wind_jax.train.rollout import FunctionPrompts
    return np.asarray(FunctionPrompts(lang.sample_prompts, seed=seed + 10_000).get(0, count).tokens)


def draw(policy, lang, prompts: np.ndarray, n: int, key, chunk_rows: int = 8192):
    """n responses per prompt from `policy` at temperature 1: (tokens, mask) [X, n, W] (prompt chunks)."""
    import jax

    from wind_jax.sampling import sample
    from wind_jax.train.synthetic import EOS, PAD
    c = max(1, chunk_rows // n)
    toks, masks = [], []
    for i in range(0, prompts.shape[0], c):
        p = prompts[i:i + c]
        out = sample(policy, p, np.ones_like(p, bool), jax.random.fold_in(key, i), num_samples=n,
                     max_new_tokens=lang.response_width, eos_token_id=EOS, pad_token_id=PAD)
        tp = p.shape[1]
        toks.append(np.asarray(out.tokens[:, :, tp:]))
        masks.append(np.asarray(out.response_mask[:, :, tp:]))
    return np.concatenate(toks), np.concatenate(masks)


@functools.cache
def _pairwise():
    """Jitted (lang, prompts [c, P], a [c, M, W], ma, b [c, K, W], mb) -> P_gold(a_i beats b_k) [c, M, K]."""
    import jax
    import jax.numpy as jnp

    def f(lang, p, a, ma, b, mb):
        c, m, w = a.shape
        k = b.shape[1]
        rep = lambda x, ax, r: jnp.repeat(jnp.expand_dims(x, ax), r, axis=ax)  # noqa: E731
        A, MA = rep(a, 2, k).reshape(-1, w), rep(ma, 2, k).reshape(-1, w)
        B, MB = rep(b, 1, m).reshape(-1, w), rep(mb, 1, m).reshape(-1, w)
        return lang.gold_preference(jnp.repeat(p, m * k, axis=0), A, MA, B, MB).reshape(c, m, k)
    return jax.jit(f, static_argnums=0)


def gold_matrix(lang, prompts, a, ma, b, mb, chunk_pairs: int = 1 << 18) -> np.ndarray:
    """P_gold(a_i beats b_k | x) [X, M, K] (exact gold probabilities, chunked over prompts)."""
    X, M = a.shape[:2]
    K = b.shape[1]
    c = max(1, chunk_pairs // (M * K))
    out = []
    for i in range(0, X, c):
        j = min(X, i + c)
        pad = c - (j - i)  # equal chunk shapes: one compiled program
        sl = lambda x: np.concatenate([x[i:j], np.repeat(x[j - 1:j], pad, 0)]) if pad else x[i:j]  # noqa: E731
        out.append(np.asarray(_pairwise()(lang, sl(prompts), sl(a), sl(ma), sl(b), sl(mb)))[: j - i])
    return np.concatenate(out)


def self_frontier(policy, lang, prompts, key, M: int, K: int, lambdas=LAMBDAS, ns=(2, 4, 8, 16)) -> dict:
    """Frontier of `policy` against itself (for pi_ref: the optimal win-rate / KL frontier; for pi_T: the
    best responses behind the exploitability proxy): upper / lower Monte Carlo curves, best-of-n points.
    w of each of M samples = mean exact gold probability of beating K fresh samples; halves for cross-fitting."""
    import jax

    from wind_jax import monte_carlo_frontier as F
    ka, kb = jax.random.split(key)
    a, ma = draw(policy, lang, prompts, M, ka)
    b, mb = draw(policy, lang, prompts, K, kb)
    P = gold_matrix(lang, prompts, a, ma, b, mb)
    w, w_a, w_b = P.mean(-1), P[..., : K // 2].mean(-1), P[..., K // 2:].mean(-1)
    upper = F.mc_frontier(w, lambdas)
    lower = F.mc_frontier(w_a, lambdas, eval_win_rates=w_b)
    half = F.mc_frontier(w[:, : M // 2], lambdas)  # self-normalization bias check (M/2 samples)
    bon = F.best_of_n_points(w, [n for n in ns if n <= M])
    asdict = lambda f: {k: np.asarray(v).tolist() for k, v in f._asdict().items()}  # noqa: E731
    return {"upper": asdict(upper), "lower": asdict(lower), "upper_half_samples": asdict(half),
            "best_of_n": asdict(bon), "M": M, "K": K, "X": int(prompts.shape[0]),
            "samples": (a, ma), "opponents": (b, mb), "P": P}


def _kl_axis(fr: dict, which: str) -> np.ndarray:
    """The curve's KL values; KL is nondecreasing in lambda, np.maximum.accumulate only removes rounding
    wiggles where it saturates (at log M per prompt)."""
    return np.maximum.accumulate(np.asarray(fr[which]["kl"], float))


def frontier_at(fr: dict, kl, which: str = "upper") -> np.ndarray:
    """Frontier win rate at KL values (linear interpolation; NaN beyond its range)."""
    return np.interp(np.asarray(kl, float), _kl_axis(fr, which), fr[which]["win_rate"], left=np.nan, right=np.nan)


def frontier_se_at(fr: dict, kl, which: str = "upper") -> np.ndarray:
    return np.interp(np.asarray(kl, float), _kl_axis(fr, which), fr[which]["win_rate_se"])


def gap(fr: dict, kl, win_rate, which: str = "upper") -> float:
    """Frontier win rate at `kl` minus `win_rate` (wind_jax.monte_carlo_frontier.gap_below_frontier; NaN beyond
    the curve's KL range)."""
    from wind_jax.monte_carlo_frontier import gap_below_frontier
    return float(gap_below_frontier(kl, win_rate, _kl_axis(fr, which), fr[which]["win_rate"]))


def head_agreement(head, lang, prompts, a, ma, b, mb) -> float:
    """Head-vs-gold agreement on pi_ref pairs (first sample vs first opponent per prompt), exact gold ties left
    out (wind_jax.train.tasks.pair_agreement)."""
    from wind_jax.train.tasks import pair_agreement
    return pair_agreement(head, lang, prompts, a[:, 0], ma[:, 0], b[:, 0], mb[:, 0], drop_ties=True)


def strip(fr: dict) -> dict:
    """The frontier without its raw draws (what is cached and reported)."""
    return {k: v for k, v in fr.items() if k not in ("samples", "opponents", "P")}


def exploitability(policy, lang, prompts, key, M: int, kl_budget: float) -> dict:
    """Gold win rate against pi_T of the tilt of pi_T by its own gold win rates at KL = kl_budget (both
    Monte Carlo curves of self_frontier; lower is better)."""
    fr = self_frontier(policy, lang, prompts, key, M, M)
    return {"upper": float(frontier_at(fr, kl_budget, "upper")), "lower": float(frontier_at(fr, kl_budget, "lower")),
            "se": float(frontier_se_at(fr, kl_budget))}

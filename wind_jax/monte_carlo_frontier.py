"""Monte Carlo estimate of the optimal win-rate / KL frontier from samples of pi_ref (MATH.md "The optimal
win-rate / KL frontier"), the best-of-n points, and a method's gap below the frontier at matched KL.

Input: for X prompts, M responses per prompt drawn from pi_ref, and their estimated gold win rates against
pi_ref, ``win_rates`` [X, M] (e.g. the fraction of gold duels each sample won against fresh pi_ref samples;
``duel_counts`` [X, M] says how many duels each estimate used). The tilt pi_lambda ∝ pi_ref exp(lambda w_ref)
is estimated on each prompt's samples with self-normalized importance weights a_i = exp(lambda w_i) / sum_j
exp(lambda w_j):
    win(lambda) = mean_x sum_i a_i w_i,      kl(lambda) = mean_x [lambda sum_i a_i w_i - log mean_i exp(lambda w_i)].

Standard errors (delta method, conditional on the X prompts, independent across prompts): the influence
functions of the two self-normalized estimators,
    win: M a_i (w_i - mu),      kl: M a_i (lambda (w_i - mu) - 1) + 1      (mu = sum_i a_i w_i),
give per-prompt variances (1/M^2) sum_i IF_i^2, and SE = sqrt(sum_x var_x) / X. When each w_i comes from its
own gold duels (fresh pi_ref opponents per sample), the pairs (y_i, w_i) are i.i.d., so this SE already
includes the duel noise (tests/test_monte_carlo_frontier.py checks the calibration by repetition, with and without it).

Bias, not covered by the SE: O(1/M) from self-normalization, and the effect of noisy w. Tilting on a noisy
estimate w_hat and evaluating on the same w_hat is the exact frontier of the noisy "reward" over (response,
noise) pairs, which contains every policy of the response alone (E[w_hat | y] = w_ref(y)): an UPPER bound on
the true frontier. Tilting on one estimate and evaluating on an independent one (``eval_win_rates``,
cross-fitting) gives the win rate of a real (randomized) policy at a KL no smaller than its own: a point on
or below the true frontier, a LOWER bound. :func:`mc_frontier_bracket` builds both from duel counts alone
(splitting each sample's duels exactly, see :func:`split_duels`). With exact w (a reward model as the gold
judge, or many duels) the two coincide.

NumPy float64 throughout (host-side analysis of numbers an evaluation loop produced).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["Frontier", "BestOfN", "mc_frontier", "mc_frontier_bracket", "split_duels", "best_of_n_points",
           "best_of_n_kl", "gap_below_frontier"]


class Frontier(NamedTuple):
    """Estimated frontier points, each [L] (one per lambda), with delta-method standard errors."""

    lambdas: np.ndarray
    kl: np.ndarray
    win_rate: np.ndarray
    kl_se: np.ndarray
    win_rate_se: np.ndarray


class BestOfN(NamedTuple):
    """Best-of-n of pi_ref under w_ref, each [len(ns)]: kl = log n - (n-1)/n (exact for distinct w_ref),
    win_rate = an unbiased estimate of E[w_ref of the best of n] (U-statistic), and its standard error."""

    ns: np.ndarray
    kl: np.ndarray
    win_rate: np.ndarray
    win_rate_se: np.ndarray


def _matrix(name: str, a, *, low=None, high=None) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"`{name}` must have shape [X, M] with X, M >= 1, got {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"`{name}` contains NaN or infinite entries.")
    if (low is not None and np.any(a < low)) or (high is not None and np.any(a > high)):
        raise ValueError(f"`{name}` must lie in [{low}, {high}] (range [{a.min():.3g}, {a.max():.3g}]).")
    return a


def _lambdas(lambdas) -> np.ndarray:
    lam = np.asarray(lambdas, dtype=np.float64)
    if lam.ndim != 1 or lam.size < 1 or not np.all(np.isfinite(lam)) or np.any(lam < 0):
        raise ValueError(f"`lambdas` must be a non-empty 1-D array of finite values >= 0, got {lambdas!r}.")
    return lam


def mc_frontier(win_rates, lambdas, *, eval_win_rates=None) -> Frontier:
    """Monte Carlo frontier (see the module docstring) at each lambda.

    win_rates [X, M] in [0, 1]: estimated w_ref of M pi_ref samples per prompt (they define the tilt);
    eval_win_rates [X, M]: an independent estimate of the same w_ref used for the win rate (cross-fitting;
    default: win_rates itself). Returns a :class:`Frontier`.
    """
    w = _matrix("win_rates", win_rates, low=0.0, high=1.0)
    lam = _lambdas(lambdas)
    w_eval = w if eval_win_rates is None else _matrix("eval_win_rates", eval_win_rates, low=0.0, high=1.0)
    if w_eval.shape != w.shape:
        raise ValueError(f"`eval_win_rates` shape {w_eval.shape} != `win_rates` shape {w.shape}.")
    X, M = w.shape
    logits = lam[:, None, None] * w[None]  # [L, X, M]
    top = logits.max(axis=-1, keepdims=True)
    e = np.exp(logits - top)
    a = e / e.sum(axis=-1, keepdims=True)  # self-normalized weights
    log_mean_exp = np.log(e.mean(axis=-1)) + top[..., 0]  # [L, X]
    mu_sel = np.sum(a * w, axis=-1)
    mu = np.sum(a * w_eval, axis=-1)
    kl_x = np.maximum(lam[:, None] * mu_sel - log_mean_exp, 0.0)
    if_win = M * a * (w_eval - mu[..., None])
    if_kl = M * a * (lam[:, None, None] * (w - mu_sel[..., None]) - 1.0) + 1.0
    var_win = np.sum(if_win**2, axis=-1) / M**2
    var_kl = np.sum(if_kl**2, axis=-1) / M**2
    return Frontier(lam, kl_x.mean(-1), mu.mean(-1), np.sqrt(var_kl.sum(-1)) / X, np.sqrt(var_win.sum(-1)) / X)


def split_duels(wins, duel_counts, rng: np.random.Generator):
    """Split each sample's k duels (w wins) into two independent halves of floor(k/2) and k - floor(k/2) duels.

    Given the total, the wins of a random half are hypergeometric whatever the true win rate, so the halves
    are exactly two independent binomial estimates of w_ref. wins, duel_counts [X, M] (integers, k >= 2).
    Returns (w_a, w_b), the two win-rate estimates."""
    k = _matrix("duel_counts", duel_counts)
    s = _matrix("wins", wins)
    if s.shape != k.shape or np.any(k < 2) or np.any(s < 0) or np.any(s > k):
        raise ValueError(f"`wins` and `duel_counts` must share a shape, with 0 <= wins <= duel_counts and "
                         f"duel_counts >= 2 (shapes {s.shape}, {k.shape}).")
    if np.any(k != np.round(k)) or np.any(s != np.round(s)):
        raise ValueError("`wins` and `duel_counts` must be integer counts.")
    k, s = k.astype(np.int64), s.astype(np.int64)
    k_a = k // 2
    s_a = rng.hypergeometric(s, k - s, k_a)
    return s_a / k_a, (s - s_a) / (k - k_a)


def mc_frontier_bracket(wins, duel_counts, lambdas, *, seed: int = 0) -> tuple[Frontier, Frontier]:
    """(upper, lower) Monte Carlo frontiers from duel counts: upper = :func:`mc_frontier` on all duels (biased
    up by the noise), lower = tilt on one half of each sample's duels, evaluated on the other half
    (:func:`split_duels`; a real policy's point, biased down). The true frontier lies between the curves."""
    k = _matrix("duel_counts", duel_counts)
    s = _matrix("wins", wins)
    if s.shape != k.shape or np.any(k < 1) or np.any(s > k):
        raise ValueError("`wins` and `duel_counts` must share a shape with 0 <= wins <= duel_counts, counts >= 1.")
    upper = mc_frontier(s / k, lambdas)
    w_a, w_b = split_duels(s, k, np.random.default_rng(seed))
    return upper, mc_frontier(w_a, lambdas, eval_win_rates=w_b)


def best_of_n_kl(n) -> np.ndarray:
    """KL(BoN_n || pi) = log n - (n-1)/n for distinct rewards under a continuous pi (MATH.md, BoNBoN facts)."""
    n = np.asarray(n, dtype=np.float64)
    return np.log(n) - (n - 1.0) / n


def best_of_n_points(win_rates, ns) -> BestOfN:
    """Best-of-n of pi_ref selected by the (estimated) w_ref, for each n in ``ns`` (2 <= n <= M).

    win rate: per prompt the U-statistic sum_i C(i-1, n-1) / C(M, n) w_(i) (w_(1) <= ... <= w_(M)), the
    unbiased estimate of E[max of n draws] (ties: any tie-break gives the same value); averaged over prompts,
    SE = std over prompts / sqrt(X) (NaN when X = 1). Selecting on noisy estimates biases it upward as in
    :func:`mc_frontier`. kl: :func:`best_of_n_kl` (the distinct-rewards value).
    """
    w = np.sort(_matrix("win_rates", win_rates, low=0.0, high=1.0), axis=-1)
    X, M = w.shape
    ns_arr = np.asarray(ns)
    if ns_arr.ndim != 1 or ns_arr.size < 1 or not all(float(n).is_integer() and 2 <= n <= M for n in ns_arr):
        raise ValueError(f"`ns` must be integers in [2, M={M}], got {ns!r}.")
    wins, ses = [], []
    for n in ns_arr.astype(int):
        i = np.arange(1, M + 1)
        log_c = np.array([_log_comb(k - 1, n - 1) for k in i]) - _log_comb(M, n)
        coef = np.where(i >= n, np.exp(np.where(i >= n, log_c, 0.0)), 0.0)
        per_x = w @ coef
        wins.append(per_x.mean())
        ses.append(per_x.std(ddof=1) / math.sqrt(X) if X > 1 else float("nan"))
    return BestOfN(ns_arr.astype(int), best_of_n_kl(ns_arr), np.array(wins), np.array(ses))


def _log_comb(a: int, b: int) -> float:
    if b < 0 or b > a:
        return -math.inf
    return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)


def gap_below_frontier(kl, win_rate, frontier_kl, frontier_win_rate) -> np.ndarray:
    """Frontier win rate at each point's KL minus the point's win rate (positive = below the frontier).

    The frontier curve (frontier_kl increasing, as from :func:`mc_frontier` or ``games.win_rate_frontier``
    over increasing lambdas) is linearly interpolated; points beyond its last KL get NaN. The frontier is
    concave in KL, so interpolation slightly UNDERSTATES it between grid points: use a fine lambda grid.
    """
    fk, fw = np.asarray(frontier_kl, np.float64), np.asarray(frontier_win_rate, np.float64)
    if fk.ndim != 1 or fk.shape != fw.shape or fk.size < 2 or np.any(np.diff(fk) < 0):
        raise ValueError("`frontier_kl` must be 1-D, nondecreasing, with >= 2 points matching `frontier_win_rate`.")
    k, wr = np.asarray(kl, np.float64), np.asarray(win_rate, np.float64)
    if k.shape != wr.shape:
        raise ValueError(f"`kl` shape {k.shape} != `win_rate` shape {wr.shape}.")
    f_at = np.interp(k, fk, fw, left=np.nan, right=np.nan)
    return f_at - wr

"""Scoring of the real-model comparison: curves, gaps below the frontier at matched KL by the chord rule, the
matched-KL choice of the learning rate, queries to reach a win rate, and paired bootstrap intervals.

A run's curve is its evaluations (iteration 0 = pi_ref, then one per iteration): at each, KL(pi_t || pi_ref)
from samples and the gold win rate against pi_ref's PER-PROMPT accuracy p_x measured once from M replies
(correctness preference: win rate = 1/2 + (acc(pi_t) - p)/2, averaged over the prompts), the same p the
frontier is built from, so pi_ref's own sampling noise enters the method and the frontier alike.

Chord rule (the gap is taken where it is measured): at a target KL k, a curve's value is the straight line
between its two points bracketing k (points sorted by KL), and the frontier is read the SAME way, on the
straight line between its values at those two KLs. gap = frontier chord - curve chord: a concave frontier
between sparse points no longer counts against the method.
"""
from __future__ import annotations

import numpy as np

LAMBDAS = np.concatenate([[0.0], np.geomspace(0.02, 60.0, 120)])


def frontier(correct_ref: np.ndarray) -> dict:
    """Both frontier curves (KL, win rate) from pi_ref's outcomes [X, M]: the Monte Carlo estimate (biased up)
    and the closed form at the plug-in accuracies (biased down); KL increasing."""
    from wind_jax.train import verifiable as v
    est = v.frontier_estimate(correct_ref, LAMBDAS)
    kl_cf, win_cf = v.frontier_closed_form(correct_ref.mean(1), LAMBDAS)
    return {"mc": (np.asarray(est.kl), np.asarray(est.win_rate)), "closed_form": (kl_cf, win_cf)}


def curve(run: dict, p_ref: np.ndarray, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(kl [P], win rate [P]) of a run's evaluations on the prompts `idx` (default: all)."""
    correct = np.asarray(run["correct"], np.float64)  # [P, X, N]
    kl = np.asarray(run["kl"], np.float64)
    if idx is not None:
        correct, kl, p_ref = correct[:, idx], kl[:, idx], p_ref[idx]
    return kl.mean((1, 2)), 0.5 + 0.5 * (correct.mean((1, 2)) - p_ref.mean())


def _bracket(kl: np.ndarray, target: float) -> tuple[int, int] | None:
    order = np.argsort(kl, kind="stable")
    for a, b in zip(order[:-1], order[1:]):
        if kl[a] <= target <= kl[b] and kl[b] > kl[a]:
            return int(a), int(b)
    return None


def chord_gap(kl, win, f_kl, f_win, target: float) -> float:
    """Frontier chord minus the curve's chord at `target` KL (module docstring); NaN where the curve does not
    span the target or the frontier does not reach the bracketing KLs."""
    kl, win = np.asarray(kl, np.float64), np.asarray(win, np.float64)
    br = _bracket(kl, target)
    if br is None:
        return float("nan")
    a, b = br
    if max(kl[a], kl[b]) > f_kl[-1]:
        return float("nan")
    s = (target - kl[a]) / (kl[b] - kl[a])
    fa, fb = np.interp([max(kl[a], 0.0), kl[b]], f_kl, f_win)
    return float((fa + s * (fb - fa)) - (win[a] + s * (win[b] - win[a])))


def gaps(run: dict, correct_ref: np.ndarray, targets, which: str = "mc", idx=None, front=None) -> list[float]:
    """The run's chord gap at every target KL (NaN where not spanned)."""
    f = front or frontier(correct_ref if idx is None else correct_ref[idx])
    kl, win = curve(run, correct_ref.mean(1), idx)
    return [chord_gap(kl, win, *f[which], t) for t in targets]


def queries_to_reach(run: dict, p_ref: np.ndarray, level: float) -> float:
    """Queries spent when the curve first reaches `level` (NaN: never). An iteration's queries are all spent
    before its first step, so the resolution is one iteration's queries even with evaluations inside it
    (`--eval_every_steps`); finer needs smaller iterations (`--queries`)."""
    _, win = curve(run, p_ref)
    for point, w in zip(run["curve"], win):
        if w >= level:
            return float(point["counts/queries"])
    return float("nan")


def choose_lr(search: dict[float, list[dict]], correct_ref: np.ndarray, targets) -> tuple[float, dict]:
    """Matched-KL rule over held-out seeds: per learning rate, its runs' chord gaps averaged over the seeds
    (a target counts only where EVERY seed's run spans it); the rate with the smallest mean gap over the
    targets every candidate spans; if they share none, the candidate spanning the most targets (then the
    smallest mean gap over its own). Returns (lr, {lr: mean gaps over seeds})."""
    table = {lr: np.mean([gaps(run, correct_ref, targets) for run in runs], axis=0).tolist()
             for lr, runs in search.items()}
    common = [i for i in range(len(targets)) if all(np.isfinite(g[i]) for g in table.values())]
    if common:
        score = {lr: (0, float(np.mean([g[i] for i in common]))) for lr, g in table.items()}
    else:
        score = {lr: (-int(np.isfinite(g).sum()), float(np.nanmean(g)) if np.isfinite(g).any() else np.inf)
                 for lr, g in table.items()}
    return min(score, key=lambda lr: (score[lr], lr)), table


def paired_bootstrap(runs: list[dict], base: list[dict], correct_ref: np.ndarray, targets, *, num: int = 500,
                     seed: int = 0, level: float = 0.95) -> list[dict]:
    """Per target KL: the mean over seeds of (gap of `runs` - gap of `base`), seeds paired by position, with a
    percentile interval from resampling the evaluation prompts (the same resample for both methods, every seed
    and the frontier). Positive = behind the base. The interval covers the prompt sample only (2-3 seeds say
    nothing about seed variance); a verdict is 'ahead' / 'behind' only where it excludes 0."""
    x = correct_ref.shape[0]
    rng = np.random.default_rng(seed)

    def diff(idx):
        f = frontier(correct_ref[idx])
        d = [np.array(gaps(r, correct_ref, targets, idx=idx, front=f)) -
             np.array(gaps(b, correct_ref, targets, idx=idx, front=f)) for r, b in zip(runs, base)]
        return np.nanmean(np.where(np.isfinite(d), d, np.nan), 0) if d else np.full(len(targets), np.nan)

    with np.errstate(all="ignore"):
        point = diff(np.arange(x))
        boot = np.array([diff(rng.integers(0, x, size=x)) for _ in range(num)])
    out = []
    for i, t in enumerate(targets):
        col = boot[:, i][np.isfinite(boot[:, i])]
        if not np.isfinite(point[i]) or col.size < num // 2:
            out.append({"kl": t, "diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "verdict": "-"})
            continue
        lo, hi = np.quantile(col, [(1 - level) / 2, (1 + level) / 2])
        verdict = "behind" if lo > 0 else "ahead" if hi < 0 else "tied"
        out.append({"kl": t, "diff": float(point[i]), "lo": float(lo), "hi": float(hi), "verdict": verdict})
    return out

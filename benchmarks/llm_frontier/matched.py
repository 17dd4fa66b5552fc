"""Matched-KL rules of the comparison (the review of issue 13): the chord gap below the frontier, the
matched-KL choice of (learning rate, steps) on the held-out seed, optimizer epochs over each method's own rows,
and paired bootstrap intervals of a method's gap minus wind_sq's.

Chord rule: a sweep is known only at its points, so at a KL target t between a seed's bracketing points
(k_lo, w_lo), (k_hi, w_hi) the method is the chord between them, and the frontier F is read the same way, as
its own chord between F(k_lo) and F(k_hi) at t. The gap is frontier chord minus method chord, i.e. the per-point
gaps F(k) - w interpolated linearly in KL. Comparing a straight method chord with the curved (concave) frontier
at t instead ("linear rule", the comparison's first tables) adds F(t) - chord_F(t) >= 0 to the gap, more for
far-apart points: it penalizes sparse sweeps, not methods.
"""
from __future__ import annotations

import math

import numpy as np

from benchmarks.llm_frontier.evaluation import _kl_axis, frontier_at
from benchmarks.llm_frontier.plan import KL_TARGETS


def frontier_clamped(fr: dict, kl: float, which: str = "upper") -> tuple[float, bool]:
    """(frontier win rate at kl, clamped): beyond the estimated curve's last KL (about log M) its last value,
    a lower bound of the frontier there (it is nondecreasing)."""
    last = float(_kl_axis(fr, which)[-1])
    return float(frontier_at(fr, min(kl, last), which)), kl > last


def bracket(points: list[dict], t: float):
    """The seed's sweep points sorted by KL: the consecutive pair (lo, hi) with lo.kl <= t <= hi.kl (a point
    exactly at t gives (p, p)); None when the sweep does not reach t."""
    pts = sorted(points, key=lambda p: p["kl"])
    for p in pts:
        if p["kl"] == t:
            return p, p
    for lo, hi in zip(pts, pts[1:]):
        if lo["kl"] <= t <= hi["kl"]:
            return lo, hi
    return None


def chord_gap(points: list[dict], fr: dict, t: float, which: str = "upper") -> dict | None:
    """The chord-rule gap of one seed's sweep at KL t (None if not reached): {"gap", "gap_se" (from the two
    points' win-rate SEs, independent evaluations), "win_rate" (method chord), "frontier_chord", "linear_gap"
    (straight method chord against the curved frontier at t), "kl_lo", "kl_hi", "spacing" (kl_hi / kl_lo),
    "clamped" (a bracketing point lies beyond the frontier's KL range: the gap is then a lower bound)}."""
    br = bracket(points, t)
    if br is None:
        return None
    lo, hi = br
    a = 0.0 if hi["kl"] == lo["kl"] else (t - lo["kl"]) / (hi["kl"] - lo["kl"])
    (f_lo, c_lo), (f_hi, c_hi) = frontier_clamped(fr, lo["kl"], which), frontier_clamped(fr, hi["kl"], which)
    f_chord = (1 - a) * f_lo + a * f_hi
    w = (1 - a) * lo["win_rate"] + a * hi["win_rate"]
    se = math.hypot((1 - a) * lo.get("win_rate_se", 0.0), a * hi.get("win_rate_se", 0.0))
    return {"gap": f_chord - w, "gap_se": se, "win_rate": w, "frontier_chord": f_chord,
            "linear_gap": float(frontier_at(fr, t, which)) - w, "kl_lo": lo["kl"], "kl_hi": hi["kl"],
            "spacing": hi["kl"] / lo["kl"] if lo["kl"] > 0 else math.inf, "clamped": bool(c_lo or c_hi)}


def chord_gaps(points: list[dict], fr: dict, targets=KL_TARGETS) -> dict:
    """{str(t): chord_gap against the upper curve, with "gap_lower" against the lower one} at each target
    the seed's sweep reaches."""
    out = {}
    for t in targets:
        g = chord_gap(points, fr, t)
        if g is not None:
            out[str(t)] = {**g, "gap_lower": chord_gap(points, fr, t, "lower")["gap"]}
    return out


def select_matched(curves: dict, fallback=None) -> tuple[object, dict]:
    """Matched-KL choice among configurations {config: {target: gap}} of one method's held-out sweeps
    (gaps only where that curve reaches the target). Rule: a configuration must reach as many KL targets as
    the configuration reaching the most (a curve that does not reach a KL offers no policy there); among
    those, the smallest mean gap over the targets all of them reach. Returns (config, {"targets": the compared
    targets, "means": {config: mean gap}, "reached": {config: count}}); `fallback` when none reaches a target."""
    reached = {c: len(g) for c, g in curves.items()}
    most = max(reached.values(), default=0)
    if most == 0:
        return fallback, {"targets": [], "means": {}, "reached": reached}
    cands = [c for c in curves if reached[c] == most]
    common = set.intersection(*(set(curves[c]) for c in cands))
    keys = lambda c: sorted(common) if common else sorted(curves[c])  # noqa: E731
    means = {c: float(np.mean([curves[c][t] for t in keys(c)])) for c in cands}
    best = min(cands, key=lambda c: means[c])
    return best, {"targets": sorted(common, key=float), "means": means, "reached": reached}


def rows_per_prompt(method: str, num_samples: int = 0) -> int:
    """Rows of the loss batch one prompt gives `method` (its wind_jax.methods assemble function on dummy
    outcomes): 2 for the WIND losses with both duellists as rows, 1 for the others."""
    import types

    import jax.numpy as jnp

    from wind_jax.methods import get_method
    rec = get_method(method)
    n = rec.n(num_samples)
    t = types.SimpleNamespace(outcome=jnp.full((1, rec.queries(n)), 0.5), best=jnp.zeros(1, jnp.int32),
                              worst=jnp.zeros(1, jnp.int32))
    rows = rec.assemble(t, n, {})
    return int(next(iter(rows.index.values())).shape[1])


def epochs(method: str, prompts: int, steps: int, batch_size: int, num_samples: int = 0) -> dict:
    """Optimizer passes over the iteration's own rows: steps x minibatch / rows, the loop's minibatch being
    min(batch_size, rows) (wind_jax.train.loop._minibatch_rows)."""
    rows = prompts * rows_per_prompt(method, num_samples)
    bs = min(batch_size, rows)
    return {"rows": rows, "minibatch": bs, "steps": steps, "epochs": steps * bs / rows}


def paired_bootstrap(diffs: list[float], ses: list[float], n_boot: int = 20000, level: float = 0.95,
                     seed: int = 0, min_n: int = 3) -> dict:
    """Interval of the mean paired difference (method gap minus wind_sq gap, one value per seed): seeds resampled
    with replacement, and each resampled difference redrawn from its evaluation noise N(d, se^2) (the
    per-prompt outcomes are not stored; se combines both gaps' win-rate SEs). With 3 seeds the interval is close
    to the range of the per-seed differences; it does not promise 95% coverage. verdict (the method against
    wind_sq, smaller gap = closer to the frontier): "ahead" if the interval is below 0, "behind" if above,
    else "tied"; "too few seeds" below min_n seeds."""
    d, s = np.asarray(diffs, float), np.asarray(ses, float)
    if d.size == 0:
        return {"n": 0}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    boot = (d[idx] + s[idx] * rng.standard_normal(idx.shape)).mean(1)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    verdict = "too few seeds" if d.size < min_n else "ahead" if hi < 0 else "behind" if lo > 0 else "tied"
    return {"n": int(d.size), "mean": float(d.mean()), "lo": float(lo), "hi": float(hi), "verdict": verdict,
            "per_seed": d.tolist()}

"""A run's place against the frontier: its final point and gap, a sweep's curve at matched KL, resources
to reach a win rate, runs cut at an equal budget, the hyperparameter choice and the per-method summary."""
from __future__ import annotations

import math

import numpy as np

from benchmarks import llm_results as R
from benchmarks.llm_frontier.evaluation import frontier_at, frontier_se_at, gap
from benchmarks.llm_frontier.plan import KL_TARGETS

RESOURCES = ("queries", "samples", "seconds")


def point(records, fr: dict) -> dict:
    """Final gold win rate / KL of a run, its gap below the frontier bracket, and the above-frontier flag."""
    last = records[-1]
    kl, win = last["eval/kl_to_ref"], last["eval/win_rate_vs_ref"]
    se_w, se_k = last["eval/win_rate_vs_ref_stderr"], last["eval/kl_to_ref_stderr"]
    gap_upper = gap(fr, kl, win, "upper")
    # beyond the estimated frontier's last KL (about log M) the frontier is at least its last value
    floor = gap(fr, min(kl, float(np.max(fr["upper"]["kl"]))), win, "upper")
    dk = 0.02
    slope = float((frontier_at(fr, kl + dk) - frontier_at(fr, max(kl - dk, 0.0))) / (kl + dk - max(kl - dk, 0.0)))
    slope = slope if math.isfinite(slope) else 0.0
    margin = 2.0 * math.sqrt(se_w**2 + float(frontier_se_at(fr, kl)) ** 2 + (slope * se_k) ** 2)
    return {"kl": kl, "win_rate": win, "win_rate_se": se_w, "kl_se": se_k, "gap_upper": gap_upper,
            "gap_lower": gap(fr, kl, win, "lower"), "gap_floor": floor,
            "above_frontier": bool(math.isfinite(gap_upper) and -gap_upper > margin),
            "margin": margin, "queries": last["counts/queries"], "samples": last["counts/samples"],
            "sec_per_iter": R.warm_seconds(records),
            "trajectory": [{"iteration": r["iteration"], "queries": r["counts/queries"], "samples": r["counts/samples"],
                            "kl": r["eval/kl_to_ref"], "win_rate": r["eval/win_rate_vs_ref"]} for r in records]}


def curve_gaps(points: list[dict], fr: dict, targets=KL_TARGETS) -> dict:
    """One seed's curve (its sweep points sorted by KL, linearly interpolated) at each KL target it reaches:
    {target: {"win_rate", "gap_upper", "gap_lower"}} (absent where the curve does not reach the target)."""
    pts = sorted(points, key=lambda p: p["kl"])
    ks, ws = np.array([p["kl"] for p in pts]), np.array([p["win_rate"] for p in pts])
    out = {}
    for t in targets:
        if ks.size and ks[0] <= t <= ks[-1]:
            w = float(np.interp(t, ks, ws))
            out[str(t)] = {"win_rate": w, "gap_upper": gap(fr, t, w, "upper"), "gap_lower": gap(fr, t, w, "lower")}
    return out


def at_budget(p: dict, resource: str, budget: float, sec_per_iter: float = float("nan")) -> dict:
    """The run's evaluation after its last iteration whose cumulative `resource` is <= budget (iteration 0 is
    pi_ref itself): {"iteration", "kl", "win_rate"}. "seconds" = iterations x sec_per_iter."""
    cost = (lambda t: t["iteration"] * sec_per_iter) if resource == "seconds" else (lambda t: t[resource])  # noqa: E731
    ok = [t for t in p["trajectory"] if cost(t) <= budget + 1e-9]
    t = max(ok, key=lambda t: t["iteration"]) if ok else {"iteration": 0, "kl": 0.0, "win_rate": 0.5}
    return {k: t[k] for k in ("iteration", "kl", "win_rate")}


def cost_to_reach(points: list[dict], win: float, kl_budget: float, resource: str = "queries",
                  sec_per_iter: float = float("nan")) -> float:
    """Fewest units of `resource` after which some run of the sweep has gold win rate >= win at KL <= kl_budget
    (its per-iteration trajectory); inf if none does. resource "queries" / "samples": the run's counts;
    "seconds": iterations x sec_per_iter (the method's median warm seconds per iteration, compile excluded)."""
    if resource not in RESOURCES:
        raise ValueError(f"resource must be one of {RESOURCES}, got {resource!r}")
    best = math.inf
    for p in points:
        for t in p["trajectory"]:
            if t["win_rate"] >= win and t["kl"] <= kl_budget:
                best = min(best, t["iteration"] * sec_per_iter if resource == "seconds" else t[resource])
                break
    return best


def choose_hp(per_hp: dict) -> object:
    """The hyperparameters (lr, steps) whose point lies closest below the frontier (gap_floor: the gap, or its
    lower bound beyond the frontier's KL range), among points with KL >= 0.1; if none moves that far, the
    hyperparameters with the largest KL."""
    moving = {hp: p for hp, p in per_hp.items() if p["kl"] >= 0.1}
    if moving:
        return min(moving, key=lambda hp: moving[hp]["gap_floor"])
    return max(per_hp, key=lambda hp: per_hp[hp]["kl"])


def _spread(v: list[dict]) -> dict:
    """Per-target statistics of the seeds' chord gaps: mean ± sd (ddof=1) of the gap against the upper and
    lower curves, the method's chord win rate and the linear-rule gap; the widest bracket (kl_hi / kl_lo),
    how many brackets reach beyond the frontier's KL range, the per-seed values (paired intervals)."""
    return {"n": len(v), **{k: R.mean_spread([g[k] for g in v]) for k in ("gap", "gap_lower", "win_rate",
                                                                          "linear_gap")},
            "max_spacing": max(g["spacing"] for g in v), "clamped": sum(g["clamped"] for g in v),
            "per_seed": {g["seed"]: {"gap": g["gap"], "gap_se": g["gap_se"]} for g in v}}


def summarize(res: dict, plan, key: str = "sweep") -> dict:
    """Per method of res[key]: chord-rule gaps at each KL target (matched.chord_gaps; mean, sd over the seeds
    whose sweep reaches it), above-frontier flags, queries / samples / seconds to reach each win target at the
    KL budget, the same gaps at equal seconds, per-run counts. res["timing"][m]: warm s per iteration."""
    from benchmarks.llm_frontier.matched import chord_gaps
    out = {}
    for m, by_label in res[key].items():
        gaps, time_gaps, reach = {}, {}, {r: {} for r in RESOURCES}
        allp = [p for pts in by_label.values() for p in pts.values()]
        sec = res.get("timing", {}).get(m, float("nan"))
        flags = [(lab, s, p["kl"], p["win_rate"], p["margin"]) for lab, pts in by_label.items()
                 for s, p in pts.items() if p["above_frontier"]]
        for s in map(str, plan["seeds"] if isinstance(plan, dict) else plan.seeds):
            pts = [by_label[lab][s] for lab in by_label if s in by_label[lab]]
            for t, g in chord_gaps(pts, res["frontiers"][s]).items():
                gaps.setdefault(t, []).append({**g, "seed": s})
            cut = [at_budget(p, "seconds", res["second_budget"], sec) for p in pts]
            for t, g in chord_gaps(cut, res["frontiers"][s]).items():
                time_gaps.setdefault(t, []).append({**g, "seed": s})
            for r in RESOURCES:
                for wt in _get(plan, "win_targets"):
                    reach[r].setdefault(str(wt), []).append(cost_to_reach(pts, wt, _get(plan, "kl_budget"), r, sec))
        out[m] = {
            "gaps": {t: _spread(v) for t, v in gaps.items()}, "to_reach": reach, "above_frontier": flags,
            "equal_time_gaps": {t: _spread(v) for t, v in time_gaps.items()},
            "queries_per_run": R.mean_spread([p["queries"] for p in allp]),
            "samples_per_run": R.mean_spread([p["samples"] for p in allp]),
            "sec_per_iter": sec,
            "kl_range": [min(p["kl"] for p in allp), max(p["kl"] for p in allp)]}
    return out


def _get(plan, name):
    """A Plan field, from the Plan or from its dict in a results file."""
    return plan[name] if isinstance(plan, dict) else getattr(plan, name)

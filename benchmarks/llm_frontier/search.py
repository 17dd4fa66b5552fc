"""The search stages: learning rate x steps per iteration chosen per method on the held-out seed, the
sensitivity of that choice (every grid configuration's whole sweep), and the sweeps on the evaluation seeds
at equal per-iteration budgets."""
from __future__ import annotations

import time

from benchmarks.llm_frontier.plan import SWEEPS, hp_key, middle, parse_hp
from benchmarks.llm_frontier.runs import Runs, claim
from benchmarks.llm_frontier.matched import chord_gaps, select_matched
from benchmarks.llm_frontier.scoring import choose_hp, point


def grid(plan) -> list[tuple[float, int]]:
    """The (lr, steps) grid every method is searched over."""
    return [(lr, k) for k in plan.steps for lr in plan.lrs]


def search_hp(runs: Runs) -> tuple[dict, dict]:
    """(chosen {method: (lr, steps)}, report) from each method's CENTER point on the held-out seed; methods
    claimed by another --stage=runs process or with unfinished runs are left out."""
    plan, log = runs.plan, runs.log
    chosen, report = {}, {}
    for m in plan.methods:
        if plan.stage == "runs" and not claim(runs.root, m):
            log(f"[llm_frontier] {m}: claimed by another --stage=runs process; skipped here")
            continue
        label, over = middle(m)
        per_hp = {}
        for hp in grid(plan):
            recs = runs.run(m, plan.heldout_seed, hp, over, label=label)
            if recs is not None:
                per_hp[hp] = point(recs, runs.frontier(plan.heldout_seed))
        if len(per_hp) < len(grid(plan)):
            log(f"[llm_frontier] {m}: hyperparameter search unfinished; left out")
            continue
        chosen[m] = choose_hp(per_hp)
        report[m] = {"at": label, "points": {hp_key(hp): {k: v for k, v in p.items() if k != "trajectory"}
                                             for hp, p in per_hp.items()}, "chosen": hp_key(chosen[m])}
        log(f"[llm_frontier] hp {m} at {label}: " + ", ".join(
            f"{hp_key(hp)}: kl {p['kl']:.2f} win {p['win_rate']:.3f} gap {p['gap_upper']:+.3f}"
            for hp, p in per_hp.items()) + f" -> {hp_key(chosen[m])}")
    return chosen, report


def hp_curves(runs: Runs, chosen: dict) -> dict:
    """Every grid configuration's whole sweep on the held-out seed: its points (KL, win rate, SE), its chord-rule
    gaps at matched KL (what the matched-KL choice compares, matched.select_matched) and KL range."""
    s = runs.plan.heldout_seed
    out = {}
    for m in chosen:
        per = {}
        for hp in grid(runs.plan):
            pts = [runs.run(m, s, hp, over, label=label) for label, over in SWEEPS[m]]
            pts = [point(r, runs.frontier(s)) for r in pts if r is not None]
            if len(pts) == len(SWEEPS[m]):
                per[hp_key(hp)] = {"gaps": {t: g["gap"] for t, g in chord_gaps(pts, runs.frontier(s)).items()},
                                   "points": [{k: p[k] for k in ("kl", "win_rate", "win_rate_se")} for p in pts],
                                   "kl_range": [min(p["kl"] for p in pts), max(p["kl"] for p in pts)]}
        out[m] = per
    return out


def sweep(runs: Runs, chosen: dict, budget: str) -> dict:
    """{method: {label: {seed: point}}}: each chosen method's sweep on every evaluation seed at an equal
    `budget` per iteration ("queries" or "samples"); methods with no finished run are left out."""
    plan, log = runs.plan, runs.log
    out = {}
    for m in chosen:
        out[m] = {}
        for label, over in SWEEPS[m]:
            pts = {}
            for s in plan.seeds:
                t = time.time()
                recs = runs.run(m, s, chosen[m], over, label=label, budget=budget)
                if recs is None:
                    continue
                pts[str(s)] = p = point(recs, runs.frontier(s))
                flag = "  ABOVE THE FRONTIER" if p["above_frontier"] else ""
                log(f"[llm_frontier] {budget} {m:15s} {label:14s} seed {s}: kl {p['kl']:.3f} win "
                    f"{p['win_rate']:.3f} gap {p['gap_upper']:+.3f} / {p['gap_lower']:+.3f} "
                    f"({time.time() - t:.0f} s){flag}")
            if pts:
                out[m][label] = pts
        if not out[m]:
            log(f"[llm_frontier] {m}: no finished {budget} sweep run; left out")
            del out[m]
    return out


def matched_chosen(curves: dict, single_point: dict) -> dict:
    """{method: (lr, steps)}: the matched-KL choice (matched.select_matched) from hp_curves' gaps; the
    single-point choice where no configuration's curve reaches a KL target."""
    out = {}
    for m, hp in single_point.items():
        per = {c: {float(t): g for t, g in d["gaps"].items()} for c, d in curves.get(m, {}).items()}
        key, _ = select_matched(per, fallback=hp_key(hp))
        out[m] = next(h for h in grid_of(curves, m, hp) if hp_key(h) == key)
    return out


def grid_of(curves: dict, m: str, hp) -> list:
    """(lr, steps) tuples of m's held-out curves, and the single-point choice."""
    return [parse_hp(c) for c in curves.get(m, {})] + [hp]

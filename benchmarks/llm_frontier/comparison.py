"""The whole comparison (stages of the package docstring) and the recheck of chosen methods at other
hyperparameters; writes comparison.json / comparison.md and the figures."""
from __future__ import annotations

import dataclasses
import math
import os
import time

from benchmarks import llm_results as R
from benchmarks.llm_frontier import figures, search
from benchmarks.llm_frontier.nontransitive import nontransitive_setups, run_nontransitive
from benchmarks.llm_frontier.plan import KL_TARGETS, NONTRANSITIVE, SIZES, SWEEPS, Plan, hp_key, middle
from benchmarks.llm_frontier.report import format_results
from benchmarks.llm_frontier.runs import Runs, reference_frontier, run
from benchmarks.llm_frontier.matched import chord_gaps
from benchmarks.llm_frontier.scoring import point, summarize


def run_comparison(out_dir: str, plan: Plan = Plan(), log=print) -> dict:
    """Run (or reuse) every stage of the package docstring; returns the results (also written to disk)."""
    size = SIZES[plan.size]
    root = os.path.join(os.path.abspath(out_dir), plan.size)
    for m in plan.methods:
        if m not in SWEEPS:
            raise ValueError(f"methods: {m!r} has no sweep; known: {sorted(SWEEPS)}")
    start, load_start = time.time(), R.load_note()
    log(f"[llm_frontier] {plan}; {size}; {load_start}")
    res = {"plan": dataclasses.asdict(plan), "size_fields": size.__dict__, "started": R.stamp(),
           "load_at_start": load_start, "sweeps": {m: [lab for lab, _ in SWEEPS[m]] for m in plan.methods},
           "kl_targets": KL_TARGETS, "nontransitive_language": NONTRANSITIVE}
    runs = Runs(root, plan, size, log)

    # 1. set-ups and frontiers
    if plan.stage != "runs":
        for s in (plan.heldout_seed, *plan.seeds):
            runs.frontier(s)
    if plan.nontransitive_seeds and plan.stage != "runs":
        nontransitive_setups(root, plan, size, log)
    if plan.stage == "setup":
        return {"frontiers": runs.frontiers}

    # 2. learning rate x steps per iteration per method on the held-out seed; 2b. sensitivity of that choice
    chosen, res["lr_search"] = search.search_hp(runs)
    if plan.hp_curves:   # the matched-KL choice from every configuration's held-out sweep
        res["hp_curves"] = search.hp_curves(runs, chosen)
        chosen = search.matched_chosen(res["hp_curves"], chosen)
    # 3. the sweeps, every seed, at an equal query budget (and, for plan.budgets, other equal budgets)
    for budget in plan.budgets:
        res["sweep" if budget == "queries" else f"sweep_{budget}"] = search.sweep(runs, chosen, budget)
    res["chosen"] = {m: hp_key(hp) for m, hp in chosen.items()}
    res["frontiers"] = {str(s): f for s, f in runs.frontiers.items()}

    # 4. non-transitive variant
    if plan.nontransitive_seeds:
        res["nontransitive"] = run_nontransitive(root, plan, size, chosen, log)
    if plan.stage == "runs":
        return res

    # 5. timing: every method's CENTER point once more on the held-out seed, one after another in this process
    res["timing"] = timing(runs, chosen)
    # equal wall time: the fastest method's whole run (num_iterations x its warm seconds per iteration)
    secs = [v for k, v in res["timing"].items() if k in chosen and math.isfinite(v)]
    res["second_budget"] = size.num_iterations * min(secs) if secs else float("nan")
    res["summary"] = summarize(res, plan)
    if "sweep_samples" in res:
        res["summary_samples"] = summarize(res, plan, "sweep_samples")
    res["wall_seconds"] = time.time() - start
    res["load_at_end"] = R.load_note()
    log(publish(res, root))
    return res


def timing(runs: Runs, chosen: dict) -> dict:
    """Warm seconds per iteration of each method's CENTER point on the held-out seed (its own run directory,
    the methods one after another in this process), with the machine load before and after."""
    out = {"load_at_start": R.load_note()}
    for m in chosen:
        label, over = middle(m)
        recs = runs.run(m, runs.plan.heldout_seed, chosen[m], over, sub="timing", label=label)
        if recs is not None:
            out[m] = R.warm_seconds(recs)
    out["load_at_end"] = R.load_note()
    return out


def publish(res: dict, root: str) -> str:
    """Write comparison.json, comparison.md (moved into place: never half a table) and the figures; returns
    the markdown."""
    R.write_json(os.path.join(root, "comparison.json"), res)
    md = format_results(res)
    tmp = os.path.join(root, f"comparison.md.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(md)
    os.replace(tmp, os.path.join(root, "comparison.md"))
    figures.plot_curves(res, os.path.join(root, "curves.png"))
    if res.get("sweep_samples"):
        figures.plot_curves(res, os.path.join(root, "curves_samples.png"), "sweep_samples")
    if res.get("nontransitive", {}).get("seeds"):
        figures.plot_nontransitive(res, os.path.join(root, "nontransitive.png"))
    return md


def recheck(out_dir: str, overrides: dict, plan: Plan = Plan(), log=print) -> dict:
    """The equal-query sweep of each method in `overrides` ({method: (lr, steps)}) on plan.seeds at the given
    hyperparameters instead of the chosen ones (set-ups and frontiers must exist): its gaps at matched KL,
    mean ± sd over seeds, printed and written to <out_dir>/<size>/recheck.json. For checking how much a
    result depends on the selection rule."""
    size = SIZES[plan.size]
    root = os.path.join(os.path.abspath(out_dir), plan.size)
    out = {}
    for m, hp in overrides.items():
        gaps = {}
        for s in plan.seeds:
            fr, setup = reference_frontier(root, s, size, plan)
            pts = [point(run(root, m, s, size, setup, hp, over, label=label), fr) for label, over in SWEEPS[m]]
            for t, g in chord_gaps(pts, fr).items():
                gaps.setdefault(t, []).append(g["gap"])
        out[m] = {"hp": hp_key(hp), "gaps": {t: R.mean_spread(v) for t, v in gaps.items()}}
        log(f"[llm_frontier] recheck {m} at {hp_key(hp)}: " + ", ".join(
            f"KL {t}: {d['mean']:+.3f} ± {d['sd']:.3f} (n={d['n']})" for t, d in out[m]["gaps"].items()))
    R.write_json(os.path.join(root, "recheck.json"), out)
    return out

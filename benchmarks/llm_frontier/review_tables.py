"""The review's results and tables: the committed comparison rescored with the chord rule (matched.py) and the
matched-KL choice, paired bootstrap intervals against wind_sq, optimizer epochs, the equal-epochs variant and the
quarter-iteration runs (review.py makes or reads the runs)."""
from __future__ import annotations

import math
import os

from benchmarks import llm_results as R
from benchmarks.llm_frontier.matched import chord_gaps, paired_bootstrap
from benchmarks.llm_frontier.plan import KL_TARGETS, middle
from benchmarks.llm_frontier.scoring import cost_to_reach, summarize

RULES = {
    "gap": "chord rule: at KL t between a seed's bracketing sweep points the method is their chord and the frontier "
           "its own chord between the same two KLs; gap = frontier chord - method chord (the per-point gaps "
           "interpolated linearly in KL). A bracketing point beyond the frontier's KL range (about log M) reads the "
           "frontier's last value there (a lower bound: the gap is then a lower bound, counted in 'clamped').",
    "selection": "matched-KL choice on the held-out seed: a configuration must reach as many KL targets as the one "
                 "reaching the most; among those, the smallest mean gap over the targets all of them reach. The "
                 "committed held-out curves store only linear-rule gaps at the targets (no per-point values), so the "
                 "choice compares those; new results store the points and use the chord rule.",
    "paired": "per seed, method gap minus wind_sq gap at the same KL target (seeds where both reach it); 95% "
              "bootstrap over seeds, each resampled difference redrawn from N(d, se^2), se from the points' "
              "win-rate SEs (per-prompt outcomes are not stored). With 3 seeds the interval is about the range of the "
              "per-seed differences. 'ahead' / 'behind' (the method against wind_sq) only where the interval "
              "excludes 0 and all 3 seeds reach the KL, else 'tied' (or 'too few seeds'). At equal seconds the cut "
              "points carry no SE: the interval is over seeds only.",
    "epochs": "optimizer passes over the iteration's own rows: steps x min(batch, rows) / rows.",
}


def paired(summary: dict, key: str = "gaps") -> dict:
    """{method: {target: paired_bootstrap of method minus wind_sq}} from a summary's per-seed chord gaps."""
    base = summary["wind_sq"][key]
    out = {}
    for m, d in summary.items():
        if m == "wind_sq":
            continue
        out[m] = {}
        for t, g in d[key].items():
            if t not in base:
                continue
            both = [s for s in g["per_seed"] if s in base[t]["per_seed"]]
            diffs = [g["per_seed"][s]["gap"] - base[t]["per_seed"][s]["gap"] for s in both]
            ses = [math.hypot(g["per_seed"][s]["gap_se"], base[t]["per_seed"][s]["gap_se"]) for s in both]
            out[m][t] = paired_bootstrap(diffs, ses)
    return out


def equal_epochs_table(rerun: dict, new: dict) -> dict:
    """Per method of the equal-epochs variant and seed (rerun set-ups): its CENTER point (KL, win, gap at its own
    KL), the standard CENTER run's KL / win, and at the variant's KL the chord gap of wind_sq's sweep (None where
    it does not reach it)."""
    out = {}
    for m, d in new["equal_epochs"].items():
        rows = {}
        for s, p in d["points"].get(middle(m)[0], {}).items():
            ws = [by[s] for by in rerun["sweep"]["wind_sq"].values() if s in by]
            w = chord_gaps(ws, rerun["frontiers"][s], (p["kl"],)).get(str(p["kl"]), {}).get("gap")
            std = new["center"].get(m, {}).get(s, {})
            rows[s] = {"kl": p["kl"], "win_rate": p["win_rate"], "gap": p["gap_upper"], "wind_sq_gap": w,
                       "standard_kl": std.get("kl"), "standard_win_rate": std.get("win_rate"),
                       "standard_gap": std.get("gap_upper")}
        out[m] = {"hp": d["hp"], "epochs": d["epochs"], "seeds": rows}
    return out


def quarter_table(new: dict, plan: dict) -> dict:
    """Per method: queries / samples to reach each win target at KL <= kl_budget per seed, in the quarter runs
    (16 evaluations) and in the standard CENTER run of the same set-ups (4 evaluations)."""
    out = {}
    for m, d in new["quarter"].items():
        q, std = d["points"].get(middle(m)[0], {}), new["center"].get(m, {})
        reach = lambda p, w, r: cost_to_reach([p], w, plan["kl_budget"], r)  # noqa: E731
        out[m] = {"hp": d["hp"], "size": d["size"],
                  **{f"{kind}_{r}": {str(w): [reach(pts[s], w, r) for s in sorted(pts)] for w in plan["win_targets"]}
                     for kind, pts in (("quarter", q), ("standard", std)) for r in ("queries", "samples")},
                  "final": {s: {"kl": p["kl"], "win_rate": p["win_rate"], "queries": p["queries"]}
                            for s, p in q.items()}}
    return out


def rescore(res: dict, choice: dict, ep: dict, new: dict) -> dict:
    """The committed results rescored (chord rule, paired intervals; their sweeps as committed, at the
    single-point choice) and the review's rerun block (see RULES and review.py); `res` is not changed."""
    plan = res["plan"]
    out = dict(res, kl_targets=list(KL_TARGETS))
    out["summary"] = summarize(out, plan)
    if out.get("sweep_samples"):
        out["summary_samples"] = summarize(out, plan, "sweep_samples")
    rerun = {"frontiers": new["frontiers"], "sweep": new["sweep"], "second_budget": 0.0}
    rsum = summarize(rerun, plan)
    for d in rsum.values():
        d.pop("equal_time_gaps")   # no timing pass in the rerun block
    out["review"] = {
        "rules": RULES, "choice": choice, "epochs": ep,
        "paired": {"queries": paired(out["summary"]), "seconds": paired(out["summary"], "equal_time_gaps"),
                   **({"samples": paired(out["summary_samples"])} if "summary_samples" in out else {})},
        "rerun": {"summary": rsum, "paired": paired(rsum), "equal_epochs": equal_epochs_table(rerun, new),
                  "quarter": quarter_table(new, plan), "chosen": {m: choice[m]["chosen"] for m in new["sweep"]},
                  "runs": new}}
    return out


def publish(res: dict, root: str) -> str:
    """comparison.json, comparison.md (the comparison's tables and the review's) and the figures under root."""
    from benchmarks.llm_frontier import figures
    from benchmarks.llm_frontier.report import format_results
    from benchmarks.llm_frontier.review_report import review_lines
    os.makedirs(root, exist_ok=True)
    R.write_json(os.path.join(root, "comparison.json"), res)
    md = format_results(res) + "\n".join(review_lines(res)) + "\n"
    with open(os.path.join(root, "comparison.md"), "w") as f:
        f.write(md)
    figures.plot_curves(res, os.path.join(root, "curves.png"))
    if res.get("sweep_samples"):
        figures.plot_curves(res, os.path.join(root, "curves_samples.png"), "sweep_samples")
    figures.plot_gaps(res, os.path.join(root, "gaps.png"))
    figures.plot_curves({**res, "sweep": res["review"]["rerun"]["runs"]["sweep"],
                         "frontiers": res["review"]["rerun"]["runs"]["frontiers"]},
                        os.path.join(root, "curves_rerun.png"), note=" (rerun set-up)")
    if res.get("nontransitive", {}).get("seeds"):
        figures.plot_nontransitive(res, os.path.join(root, "nontransitive.png"))
    return md



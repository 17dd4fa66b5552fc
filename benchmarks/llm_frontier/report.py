"""The comparison's tables (comparison.md): frontier per seed, the hyperparameter search and its sensitivity,
gaps at matched KL at equal queries / samples / seconds, resources to reach a win rate, every point, and the
non-transitive variant (exploitability, tournament)."""
from __future__ import annotations

import math

import numpy as np

from benchmarks.llm_frontier.evaluation import frontier_at, frontier_se_at
from benchmarks.llm_frontier.nontransitive import nontransitive_scores
from benchmarks.llm_frontier.plan import KL_TARGETS, hp_key
from benchmarks.llm_frontier.scoring import RESOURCES


def _ms(d, k="gap", f="{:+.3f}"):
    s = d[k]
    return (f + " ± {:.3f}").format(s["mean"], s["sd"]) + f" (n={s['n']})"


def format_results(res: dict) -> str:
    """comparison.md: every table of the comparison (res as run_comparison returns it)."""
    plan = res["plan"]
    out = [f"size {res['size_fields']}, seeds {plan['seeds']} (lr and steps chosen on seed {plan['heldout_seed']}); "
           f"{res['load_at_start']} at start, {res.get('load_at_end', '?')} at end; "
           f"{res.get('wall_seconds', 0) / 60:.1f} min (finished runs under out_dir are reused)\n"]
    out.append("\nFrontier of pi_ref (upper / lower Monte Carlo bracket, ± SE of the upper), per seed\n")
    out.append("| seed | " + " | ".join(f"KL {t:g}" for t in KL_TARGETS) + " | BoN n=2,4,8,16 win (KL) | "
               "upper with M/2 samples at KL 1 / 2 (bias check) | head agrees w/ gold (pi_ref pairs) |")
    out.append("|---|" + "---|" * (len(KL_TARGETS) + 3))
    for s, fr in res["frontiers"].items():
        cells = []
        for t in KL_TARGETS:
            u, lo, se = frontier_at(fr, t, "upper"), frontier_at(fr, t, "lower"), frontier_se_at(fr, t)
            cells.append(f"{u:.3f} / {lo:.3f} ± {se:.3f}")
        b = fr["best_of_n"]
        bon = ", ".join(f"{w:.3f} ({k:.2f})" for w, k in zip(b["win_rate"], b["kl"]))
        half = frontier_at(fr, [1.0, 2.0], "upper_half_samples")
        out.append(f"| {s} | " + " | ".join(cells) + f" | {bon} | {half[0]:.3f} / {half[1]:.3f} | "
                   f"{fr['head_agreement_pi_ref']:.3f} |")
    grid = [hp_key((lr, k)) for k in plan["steps"] for lr in plan["lrs"]]
    out.append("\nLearning rate x steps per iteration (k) chosen on the held-out seed (each method: the same grid at "
               "its CENTER point; cell = KL, win, gap)\n")
    out.append("| method | at | " + " | ".join(grid) + " | chosen |")
    out.append("|---|---|" + "---|" * (len(grid) + 1))
    for m, d in res["lr_search"].items():
        cells = [f"{d['points'][g]['kl']:.2f}, {d['points'][g]['win_rate']:.3f}, {d['points'][g]['gap_upper']:+.3f}"
                 for g in grid]
        out.append(f"| {m} | {d['at']} | " + " | ".join(cells) + f" | {d['chosen']} |")
    if res.get("hp_curves"):
        out.append("\nSensitivity of the choice: each grid configuration's whole sweep on the held-out seed, its "
                   "curve's gap below the frontier at matched KL (cell: gaps at KL " + " / ".join(
                       f"{t:g}" for t in KL_TARGETS) + ", '-' = not reached); * = the configuration chosen\n")
        out.append("| method | " + " | ".join(grid) + " |")
        out.append("|---|" + "---|" * len(grid))
        for m, per in res["hp_curves"].items():
            cells = []
            for g in grid:
                d = per.get(g)
                cell = " / ".join(f"{d['gaps'][str(t)]:.3f}" if str(t) in d["gaps"] else "-" for t in KL_TARGETS) \
                    if d else "unfinished"
                cells.append(cell + (" *" if g == res["lr_search"][m]["chosen"] else ""))
            out.append(f"| {m} | " + " | ".join(cells) + " |")
    out.append("\nGap below the frontier at matched KL (chord rule: the method's chord between a seed's bracketing "
               "sweep points minus the frontier's chord between the same KLs; upper curve; mean ± sd (ddof 1) over "
               "seeds whose sweep reaches that KL; positive = below), equal preference queries per iteration\n")
    out.append("| method | KL range | " + " | ".join(f"gap @ KL {t:g}" for t in KL_TARGETS)
               + " | queries / run | samples / run | s / warm iteration (timing pass) | above frontier |")
    out.append("|---|---|" + "---|" * (len(KL_TARGETS) + 4))
    for m, d in res["summary"].items():
        cells = [_ms(d["gaps"][str(t)]) if str(t) in d["gaps"] else "not reached" for t in KL_TARGETS]
        out.append(f"| {m} | {d['kl_range'][0]:.2f}-{d['kl_range'][1]:.2f} | " + " | ".join(cells)
                   + f" | {d['queries_per_run']['mean']:.0f} | {d['samples_per_run']['mean']:.0f} | "
                   f"{d['sec_per_iter']:.2f} | {len(d['above_frontier'])} |")
    tm = res.get("timing", {})
    if res.get("summary_samples"):
        out.append("\nGap below the frontier at matched KL, equal SAMPLES per iteration (runs made for that budget: "
                   f"{2 * res['size_fields']['base_prompts']} samples per iteration; WIND and DPO are their "
                   "equal-query runs), mean ± sd over seeds\n")
        out.append("| method | KL range | " + " | ".join(f"gap @ KL {t:g}" for t in KL_TARGETS)
                   + " | queries / run | samples / run | " + " | ".join(
                       f"samples to win >= {w:g} at KL <= {plan['kl_budget']:g}" for w in plan["win_targets"]) + " |")
        out.append("|---|---|" + "---|" * (len(KL_TARGETS) + 2 + len(plan["win_targets"])))
        for m, d in res["summary_samples"].items():
            cells = [_ms(d["gaps"][str(t)]) if str(t) in d["gaps"] else "not reached" for t in KL_TARGETS]
            reach = [", ".join(f"{q:.0f}" if math.isfinite(q) else "inf" for q in d["to_reach"]["samples"][str(w)])
                     for w in plan["win_targets"]]
            out.append(f"| {m} | {d['kl_range'][0]:.2f}-{d['kl_range'][1]:.2f} | " + " | ".join(cells)
                       + f" | {d['queries_per_run']['mean']:.0f} | {d['samples_per_run']['mean']:.0f} | "
                       + " | ".join(reach) + " |")
    out.append(f"\nGap below the frontier at matched KL at equal seconds (<= {res['second_budget']:.2f} s, the fastest "
               "method's whole run): every run cut after its last iteration within the budget, the cut points form "
               "the curve; mean ± sd over seeds\n")
    out.append("| method | " + " | ".join(f"gap @ KL {t:g}" for t in KL_TARGETS) + " |")
    out.append("|---|" + "---|" * len(KL_TARGETS))
    for m, d in res["summary"].items():
        g = d["equal_time_gaps"]
        out.append(f"| {m} | " + " | ".join(_ms(g[str(t)]) if str(t) in g else "not reached" for t in KL_TARGETS)
                   + " |")
    units = {"queries": "queries", "samples": "samples",
             "seconds": "seconds (iterations x the method's warm s / iteration of the timing pass: its CENTER point "
                        f"on the held-out seed, all methods one after another in one process; {tm.get('load_at_start')}"
                        " at its start)"}
    for r in RESOURCES:
        out.append(f"\nEqual {r}: {units[r]} to reach a gold win rate at KL <= {plan['kl_budget']:g} (per seed, "
                   "best run of the sweep; inf = not reached)\n")
        out.append("| method | " + " | ".join(f"win >= {w:g}" for w in plan["win_targets"]) + " |")
        out.append("|---|" + "---|" * len(plan["win_targets"]))
        for m, d in res["summary"].items():
            out.append(f"| {m} | " + " | ".join(", ".join(
                (f"{q:.0f}" if r != "seconds" else f"{q:.1f}") if math.isfinite(q) else "inf"
                for q in d["to_reach"][r][str(w)]) for w in plan["win_targets"]) + " |")
    out.append("\nEvery point (method, sweep label: KL / win per seed)\n")
    for m, by in res["sweep"].items():
        for lab, pts in by.items():
            out.append(f"- {m} {lab}: " + "; ".join(f"s{s} {p['kl']:.3f} / {p['win_rate']:.3f}"
                                                   f"{' ABOVE' if p['above_frontier'] else ''}"
                                                   for s, p in pts.items()))
    nt = res.get("nontransitive")
    if nt and nt["seeds"]:
        out += nontransitive_tables(res)
    return "\n".join(out) + "\n"


def nontransitive_tables(res: dict) -> list[str]:
    """Lines of the non-transitive variant's tables (per seed, over seeds, exploitability at matched KL)."""
    nt, plan, out = res["nontransitive"], res["plan"], []
    out.append(f"\nNon-transitive variant {res['nontransitive_language']}: exploitability proxy = gold win "
               f"rate vs pi_T of pi_T's best tilt at KL {plan['exploit_kl']:g} (upper / lower; lower is "
               "better); win / KL vs pi_ref; gap below its frontier\n")
    for s, d in nt["seeds"].items():
        out.append(f"seed {s}: head agrees with gold on {d['head_agreement_pi_ref']:.3f} of pi_ref pairs "
                   f"({d['head_accuracy_reference_process']:.3f} on reference-process pairs)\n")
        out.append("| policy | sweep point | KL | win vs pi_ref | gap | exploitability | mean tournament score |")
        out.append("|---|---|---|---|---|---|---|")
        T, score = np.array(d["tournament"]["matrix"]), nontransitive_scores(d)
        for m, r in d["methods"].items():
            e = r["exploitability"]
            if m == "pi_ref":
                out.append(f"| pi_ref | - | 0 | 0.5 | 0 | {e['upper']:.3f} / {e['lower']:.3f} | "
                           f"{score['pi_ref']:.3f} |")
            else:
                out.append(f"| {m} | {r['label']} | {r['kl']:.3f} | {r['win_rate']:.3f} | {r['gap_upper']:+.3f} "
                           f"| {e['upper']:.3f} / {e['lower']:.3f} | {score[m]:.3f} |")
        out.append("\nTournament P(row beats column):\n")
        names = d["tournament"]["names"]
        out.append("| | " + " | ".join(names) + " |")
        out.append("|---|" + "---|" * len(names))
        for n, row in zip(names, T):
            out.append(f"| {n} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    if len(nt["seeds"]) > 1:
        out.append(f"\nNon-transitive variant over seeds {list(nt['seeds'])} (mean ± sd): each method at its "
                   "CENTER point\n")
        out.append("| policy | KL | win vs pi_ref | exploitability (upper) | mean tournament score |")
        out.append("|---|---|---|---|---|")
        for m in next(iter(nt["seeds"].values()))["methods"]:
            rs = [d["methods"][m] for d in nt["seeds"].values() if m in d["methods"]]
            sc = [nontransitive_scores(d)[m] for d in nt["seeds"].values() if m in d["methods"]]
            f = lambda v: f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.3f}"  # noqa: E731
            out.append(f"| {m} | {f([r['kl'] for r in rs])} | {f([r['win_rate'] for r in rs])} | "
                       f"{f([r['exploitability']['upper'] for r in rs])} | {f(sc)} |")
    for s, sw in nt.get("sweep", {}).items():
        out.append(f"\nExploitability proxy at matched KL, non-transitive seed {s} (each method's sweep, sorted by "
                   f"KL, interpolated; pi_ref: {nt['seeds'][s]['methods']['pi_ref']['exploitability']['upper']:.3f}"
                   f" at KL 0)\n" if s in nt["seeds"] else f"\nExploitability proxy at matched KL, seed {s}\n")
        out.append("| method | KL range | " + " | ".join(f"@ KL {t:g}" for t in KL_TARGETS)
                   + " | points (KL: expl.) |")
        out.append("|---|---|" + "---|" * (len(KL_TARGETS) + 1))
        for m, d in sw.items():
            ks = [p["kl"] for p in d["points"]]
            cells = [f"{d['at_kl'][str(t)]:.3f}" if str(t) in d["at_kl"] else "-" for t in KL_TARGETS]
            pts = ", ".join(f"{p['kl']:.2f}: {p['exploitability']['upper']:.3f}"
                            for p in sorted(d["points"], key=lambda p: p["kl"]))
            out.append(f"| {m} | {min(ks):.2f}-{max(ks):.2f} | " + " | ".join(cells) + f" | {pts} |")
    sweeps = nt.get("sweep", {})
    if len(sweeps) > 1:
        out.append(f"\nExploitability proxy at matched KL over non-transitive seeds {list(sweeps)}: mean ± sd "
                   "over the seeds whose sweep reaches that KL (n)\n")
        out.append("| method | " + " | ".join(f"@ KL {t:g}" for t in KL_TARGETS) + " |")
        out.append("|---|" + "---|" * len(KL_TARGETS))
        for m in next(iter(sweeps.values())):
            cells = []
            for t in KL_TARGETS:
                v = [sw[m]["at_kl"][str(t)] for sw in sweeps.values() if m in sw and str(t) in sw[m]["at_kl"]]
                cells.append(f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.3f} (n={len(v)})"
                             if v else "-")
            out.append(f"| {m} | " + " | ".join(cells) + " |")
    return out

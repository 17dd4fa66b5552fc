"""Markdown of the review's tables (review_tables.rescore's results): the rules, the matched-KL choice, epochs,
paired intervals against wind_sq, the equal-epochs variant and the quarter-iteration runs."""
from __future__ import annotations

import math

from benchmarks.llm_frontier.plan import KL_TARGETS


def _f(v, f="{:.3f}"):
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f.format(v)


def _reach(v: list) -> str:
    return ", ".join(f"{q:.0f}" if math.isfinite(q) else "inf" for q in v)


def choice_lines(rv: dict) -> list[str]:
    """The matched-KL choice against the single-point rule, with each method's epochs."""
    out = ["\n### Review: matched-KL choice of (lr, k) on the held-out seed; optimizer epochs\n",
           "Rules: " + " ".join(f"**{k}**: {v}" for k, v in rv["rules"].items()) + "\n",
           "| method | single-point rule | matched-KL choice | compared targets | mean gap per candidate (held-out) "
           "| rows / iteration | minibatch | steps | epochs |", "|---|---|---|---|---|---|---|---|---|"]
    for m, c in rv["choice"].items():
        e = rv["epochs"][m]
        means = ", ".join(f"{k}: {v:.3f}" for k, v in sorted(c["means"].items(), key=lambda kv: kv[1]))
        out.append(f"| {m} | {c['single_point']} | {c['chosen']}{' (changed)' if c['changed'] else ''} | "
                   f"{', '.join(c['targets']) or '-'} | {means or '-'} | {e['rows']} | {e['minibatch']} | "
                   f"{e['steps']} | {e['epochs']:g} |")
    return out


def paired_lines(paired: dict, where: str = "committed runs") -> list[str]:
    """Paired differences against wind_sq per budget: mean [95% interval] verdict (n)."""
    out = []
    for budget, per in paired.items():
        out.append(f"\n### Review ({where}): paired difference of the chord gap, method minus wind_sq, equal "
                   f"{budget} (negative = the method is closer to the frontier; mean [95% bootstrap interval], "
                   "verdict, n seeds)\n")
        out.append("| method | " + " | ".join(f"@ KL {t:g}" for t in KL_TARGETS) + " |")
        out.append("|---|" + "---|" * len(KL_TARGETS))
        for m, d in per.items():
            cells = []
            for t in KL_TARGETS:
                b = d.get(str(t))
                cells.append(f"{b['mean']:+.3f} [{b['lo']:+.3f}, {b['hi']:+.3f}] {b['verdict']} (n={b['n']})"
                             if b and b["n"] else "-")
            out.append(f"| {m} | " + " | ".join(cells) + " |")
    return out


def rerun_lines(rr: dict) -> list[str]:
    """The rerun block's chord gaps (wind_sq and the re-chosen methods on the set-ups made again here)."""
    out = ["\n### Review, rerun block: set-ups of seeds 0, 1, 2 made again on this machine (not bit-identical to "
           "the committed ones), their own frontiers; wind_sq and the methods whose matched-KL choice changed; "
           "chord gap mean ± sd (ddof 1) (n); linear-rule gap; widest bracket kl_hi / kl_lo\n",
           "| method | hp | KL range | " + " | ".join(f"gap @ KL {t:g}" for t in KL_TARGETS) + " |",
           "|---|---|---|" + "---|" * len(KL_TARGETS)]
    for m, d in rr["summary"].items():
        cells = [f"{g['gap']['mean']:+.3f} ± {g['gap']['sd']:.3f} (n={g['n']}; linear {g['linear_gap']['mean']:+.3f};"
                 f" x{g['max_spacing']:.1f})" if (g := d["gaps"].get(str(t))) else "not reached" for t in KL_TARGETS]
        out.append(f"| {m} | {rr['chosen'][m]} | {d['kl_range'][0]:.2f}-{d['kl_range'][1]:.2f} | "
                   + " | ".join(cells) + " |")
    return out + paired_lines({"queries": rr["paired"]}, "rerun block")


def epochs_lines(rr: dict) -> list[str]:
    """The equal-epochs variant at the CENTER point, per seed (rerun block)."""
    if not rr["equal_epochs"]:
        return []
    out = ["\n### Review, rerun block: equal epochs (CENTER point with the steps giving wind_sq's 4 epochs; per "
           "seed: the standard CENTER run, the equal-epochs run, its gap at its own KL and wind_sq's chord gap "
           "there)\n",
           "| method | hp (epochs) | seed | standard KL / win / gap | equal-epochs KL / win | gap | wind_sq gap "
           "there |", "|---|---|---|---|---|---|---|"]
    for m, d in rr["equal_epochs"].items():
        for s, r in d["seeds"].items():
            out.append(f"| {m} | {d['hp']} ({d['epochs']:g}) | {s} | {_f(r['standard_kl'], '{:.2f}')} / "
                       f"{_f(r['standard_win_rate'])} / {_f(r['standard_gap'], '{:+.3f}')} | {r['kl']:.2f} / "
                       f"{r['win_rate']:.3f} | {_f(r['gap'], '{:+.3f}')} | {_f(r['wind_sq_gap'], '{:+.3f}')} |")
    return out


def quarter_lines(rr: dict, plan: dict) -> list[str]:
    """Queries / samples to reach a win rate, quarter-iteration runs against the standard CENTER runs."""
    if not rr["quarter"]:
        return []
    size = next(iter(rr["quarter"].values()))["size"]
    out = [f"\n### Review, rerun block: queries to reach a gold win rate at KL <= {plan['kl_budget']:g} with an "
           f"evaluation every quarter iteration ({size['num_iterations']} iterations of {size['base_prompts']} "
           "queries' worth of whole prompts and 1/4 the optimizer steps each; CENTER point; per seed; inf = not "
           "reached) against the standard CENTER runs of the same set-ups (4 evaluations)\n",
           "| method | hp (quarter) | " + " | ".join(f"queries, win >= {w:g}: quarter / standard"
                                                   for w in plan["win_targets"])
           + " | samples, win >= 0.55: quarter / standard | final KL / win (quarter) |",
           "|---|---|" + "---|" * (len(plan["win_targets"]) + 2)]
    for m, d in rr["quarter"].items():
        cells = [f"{_reach(d['quarter_queries'][str(w)])} / {_reach(d['standard_queries'][str(w)])}"
                 for w in plan["win_targets"]]
        w0 = str(plan["win_targets"][0])
        fin = "; ".join(f"{v['kl']:.2f} / {v['win_rate']:.3f}" for v in d["final"].values())
        out.append(f"| {m} | {d['hp']} | " + " | ".join(cells) + f" | {_reach(d['quarter_samples'][w0])} / "
                   f"{_reach(d['standard_samples'][w0])} | {fin} |")
    return out


def review_lines(res: dict) -> list[str]:
    """Every review table (appended to comparison.md)."""
    rv = res["review"]
    rr = rv["rerun"]
    return (choice_lines(rv) + paired_lines(rv["paired"]) + rerun_lines(rr) + epochs_lines(rr)
            + quarter_lines(rr, res["plan"]))

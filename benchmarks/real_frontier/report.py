"""Tables (report.md) and figure (curves.png) of the real-model comparison, from results.json alone."""
from __future__ import annotations

import os

import numpy as np

from benchmarks.real_frontier import analysis as A

_COLORS = {"wind_sq": "tab:blue", "wind_kl": "navy", "sppo": "tab:orange", "sppo_beta": "tab:brown",
           "dpo": "tab:red"}


def _f(x, fmt="{:.3f}") -> str:
    return "-" if x is None or not np.isfinite(x) else fmt.format(x)


def _by_method(runs: list[dict]) -> dict[str, list[dict]]:
    """Runs by method (wind_sq first, then _COLORS' order), each method's by seed."""
    order = {m: i for i, m in enumerate(_COLORS)}
    out: dict[str, list[dict]] = {}
    for r in sorted(runs, key=lambda r: (order.get(r["method"], len(order)), r["method"], r["seed"])):
        out.setdefault(r["method"], []).append(r)
    return out


def compared_runs(res: dict) -> list[dict]:
    """The test runs at each method's chosen learning rate (results.json also keeps the runs of earlier
    invocations at other rates)."""
    chosen = res.get("chosen_lr", {})
    return [r for r in res["runs"] if r["lr"] == chosen.get(r["method"], r["lr"])]


def tables(res: dict) -> str:
    a = res["args"]
    targets = [float(t) for t in str(a["kl_targets"]).split(",")]
    levels = [float(t) for t in str(a["win_levels"]).split(",")]
    ref = np.asarray(res["reference"]["test"], np.float64)
    p = ref.mean(1)
    f = A.frontier(ref)
    by = _by_method(compared_runs(res))
    searched = {r["method"] for r in res.get("search", [])}
    out = [f"pi_ref on the {ref.shape[0]} test prompts: accuracy {p.mean():.3f} ({ref.shape[1]} replies each); "
           f"prompts with 0 < p < 1: {int(((p > 0) & (p < 1)).sum())}.", "",
           "Frontier (Monte Carlo, biased up / closed form at the plug-in accuracies, biased down)", "",
           "| KL | " + " | ".join(_f(t, "{:g}") for t in targets) + " |", "|---|" + "---|" * len(targets),
           "| win rate | " + " | ".join(f"{np.interp(t, *f['mc']):.3f} / {np.interp(t, *f['closed_form']):.3f}"
                                       for t in targets) + " |", ""]
    if res.get("search"):
        ref_val = np.asarray(res["reference"]["validation"], np.float64)
        out += ["Learning rate by the matched-KL rule on the held-out seeds and validation prompts (cell: gaps "
                "at KL " + ", ".join(f"{t:g}" for t in targets) + "; final KL; the rule averages a rate's seeds)",
                "", "| method | lr | seed | gaps | final KL | chosen |", "|---|---|---|---|---|---|"]
        for m, runs in _by_method(res["search"]).items():
            by_lr: dict[float, list[dict]] = {}
            for r in runs:
                by_lr.setdefault(r["lr"], []).append(r)
            chosen = A.choose_lr(by_lr, ref_val, targets)[0]  # the rule, from the search runs alone
            for r in sorted(runs, key=lambda r: (r["lr"], r["seed"])):
                g = A.gaps(r, ref_val, targets)
                out.append(f"| {m} | {r['lr']:g} | {r['seed']} | {', '.join(_f(x) for x in g)} | "
                           f"{_f(r['curve'][-1]['eval/kl_to_ref'])} | {'*' if chosen == r['lr'] else ''} |")
        out.append("")
    out += ["Each method (lr, epochs = steps x batch / rows per iteration, seconds per iteration), its final "
            "point per seed (queries, accuracy, win rate vs pi_ref's per-prompt accuracy, KL), and its gap below "
            "the Monte Carlo frontier at matched KL by the chord rule, mean over seeds (n = seeds spanning it)", "",
            "| method | lr | epochs | s / iteration | final (per seed) | " +
            " | ".join(f"gap KL {t:g}" for t in targets) + " |", "|---|---|---|---|---|" + "---|" * len(targets)]
    for m, runs in by.items():
        fins = []
        for r in runs:
            kl, win = A.curve(r, p)
            fins.append(f"s{r['seed']}: {r['curve'][-1]['counts/queries']} q, acc "
                        f"{np.mean(r['correct'][-1]):.3f}, win {win[-1]:.3f}, KL {kl[-1]:.3f}")
        g = np.array([A.gaps(r, ref, targets, front=f) for r in runs])
        cells = []
        for i in range(len(targets)):
            col = g[:, i][np.isfinite(g[:, i])]
            cells.append("-" if col.size == 0 else
                         f"{col.mean():+.3f}" + (f" ± {col.std(ddof=1):.3f}" if col.size > 1 else "") +
                         f" (n={col.size})")
        secs = np.mean([c["time/iteration"] for r in runs for c in r["curve"][1:]
                        if c.get("step") is None])  # iteration points (an "eval" point inside one has a step)
        lr = f"{runs[0]['lr']:g}" + (" (no search)" if searched and m not in searched else "")
        out.append(f"| {m} | {lr} | {runs[0]['epochs_per_iteration']:.2f} | {secs:.0f} | "
                   f"{'; '.join(fins)} | {' | '.join(cells)} |")
    out += ["", "Paired against wind_sq (gap of the method - gap of wind_sq, same seed, mean over seeds; 95% "
            "bootstrap interval over the evaluation prompts; + = behind wind_sq)", "",
            "| method | " + " | ".join(f"KL {t:g}" for t in targets) + " |", "|---|" + "---|" * len(targets)]
    base = by.get("wind_sq", [])
    for m, runs in by.items():
        if m == "wind_sq" or not base:
            continue
        b = A.paired_bootstrap(runs, base, ref, targets, num=int(a["bootstrap"]))
        out.append(f"| {m} | " + " | ".join("-" if c["verdict"] == "-" else
                                            f"{c['diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}] {c['verdict']}"
                                            for c in b) + " |")
    every = (f"every {a['eval_every_steps']} of the {a['steps']} steps of each iteration of {a['queries']} queries "
             "(its queries spent first)" if a.get("eval_every_steps") else f"every iteration of {a['queries']} queries")
    out += ["", f"Queries to reach a win rate (per seed; '-' = not within the run; evaluation after {every})", "",
            "| method | " + " | ".join(f"win {x:g}" for x in levels) + " |", "|---|" + "---|" * len(levels)]
    for m, runs in by.items():
        out.append(f"| {m} | " + " | ".join(", ".join(_f(A.queries_to_reach(r, p, x), "{:.0f}") for r in runs)
                                            for x in levels) + " |")
    return "\n".join(out) + "\n"


def plot(res: dict, path: str) -> str:
    """One panel per seed: the frontier bracket and each method's curve, straight chords on a linear KL axis
    (the way the tables interpolate)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ref = np.asarray(res["reference"]["test"], np.float64)
    f = A.frontier(ref)
    runs = compared_runs(res)
    by = _by_method(runs)
    seeds = sorted({r["seed"] for r in runs})
    fig, axes = plt.subplots(1, len(seeds), figsize=(5.2 * len(seeds), 4.2), squeeze=False)
    kmax = max(max(A.curve(r, ref.mean(1))[0].max() for r in runs) * 1.15, 0.1)
    for ax, s in zip(axes[0], seeds):
        ax.plot(*f["mc"], "k-", lw=1, label="frontier (MC, upper)")
        ax.plot(*f["closed_form"], "k--", lw=0.8, label="frontier (closed form, lower)")
        for m, method_runs in by.items():
            for r in method_runs:
                if r["seed"] == s:
                    kl, win = A.curve(r, ref.mean(1))
                    o = np.argsort(kl, kind="stable")
                    ax.plot(kl[o], win[o], "o-", color=_COLORS.get(m), ms=3.5, lw=1.1, label=m)
        ax.set_xlim(-0.01, kmax)
        ax.axhline(0.5, color="k", lw=0.6, ls=":")
        ax.set_xlabel("KL($\\pi_t$ ‖ $\\pi_{ref}$)")
        ax.set_ylabel("gold win rate vs $\\pi_{ref}$")
        ax.set_title(f"SmolLM2-135M, verifiable task, seed {s}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write(res: dict, out_dir: str) -> None:
    md = tables(res)
    with open(os.path.join(out_dir, "report.md"), "w") as fh:
        fh.write(md)
    print(md)
    if not res["runs"]:
        print("no test runs yet: no figure")
        return
    try:
        print("wrote", plot(res, os.path.join(out_dir, "curves.png")))
    except ImportError as e:  # matplotlib is optional
        print(f"no figure ({e})")

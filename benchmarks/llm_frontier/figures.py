"""The comparison's figures: each method's sweep against the frontier bracket per seed (curves.png) and the
non-transitive variant's exploitability and tournament (nontransitive.png)."""
from __future__ import annotations

import numpy as np

from benchmarks import llm_results as R

_COLORS = {"wind_sq": "tab:blue", "wind_sq_offset": "tab:cyan", "wind_kl": "navy", "wind_nce": "tab:pink",
           "sppo": "tab:orange", "sppo_beta": "tab:brown", "dpo": "tab:red", "jbond": "tab:purple",
           "bon_distill": "tab:green", "bonbon": "tab:olive"}


def plot_curves(res: dict, path: str, key: str = "sweep", kl_max: float = 2.6, note: str = "") -> str:
    """One panel per seed: frontier bracket (band), best-of-n points, each method's sweep curve (res[key]) as
    straight chords in linear KL, the way the tables interpolate (chords to points beyond kl_max leave the axes);
    dotted verticals at the KL targets."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    seeds = [str(s) for s in res["plan"]["seeds"]]
    fig, axes = plt.subplots(1, len(seeds), figsize=(5.2 * len(seeds), 4.3), squeeze=False)
    for ax, s in zip(axes[0], seeds):
        fr = res["frontiers"][s]
        ax.fill_between(fr["lower"]["kl"], fr["lower"]["win_rate"], np.interp(fr["lower"]["kl"], fr["upper"]["kl"],
                        fr["upper"]["win_rate"]), color="k", alpha=0.15, lw=0)
        ax.plot(fr["upper"]["kl"], fr["upper"]["win_rate"], "k-", lw=1, label="frontier (upper / lower MC)")
        ax.plot(fr["lower"]["kl"], fr["lower"]["win_rate"], "k--", lw=0.8)
        b = fr["best_of_n"]
        ax.plot(b["kl"], b["win_rate"], "k*", ms=8, label="best-of-n of pi_ref (n=2,4,8,16)")
        for m, by in res[key].items():
            pts = sorted((by[lab][s]["kl"], by[lab][s]["win_rate"]) for lab in by if s in by[lab])
            if pts:
                ax.plot(*zip(*pts), "o-", color=_COLORS.get(m), ms=3.5, lw=1.1, label=m)
        for t in res.get("kl_targets", ()):
            ax.axvline(t, color="gray", lw=0.6, ls=":")
        ax.set_xlim(0, kl_max)
        ax.set_ylim(0.48, 0.72)
        ax.axhline(0.5, color="k", lw=0.6, ls=":")
        ax.set_xlabel("KL($\\pi_T$ ‖ $\\pi_{ref}$)")
        ax.set_ylabel("gold win rate vs $\\pi_{ref}$")
        budget = "sample" if key == "sweep_samples" else "query"
        ax.set_title(f"seed {s}{note}: equal {budget} budget, T={res['size_fields']['num_iterations']}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6.5, loc="upper left", ncol=2)  # the low-KL corner stays empty
    return R.save_figure(fig, path)


def plot_nontransitive(res: dict, path: str) -> str:
    """Left: exploitability proxy per CENTER policy (mean ± sd over seeds of the upper estimate). Middle:
    exploitability against KL along each method's sweep (first sweep seed). Right: tournament of the first seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    nt = res["nontransitive"]["seeds"]
    names = list(next(iter(nt.values()))["methods"])
    ex = np.array([[d["methods"][m]["exploitability"]["upper"] for m in names] for d in nt.values()])
    fig, (a1, a3, a2) = plt.subplots(1, 3, figsize=(17, 4.6))
    a1.bar(range(len(names)), ex.mean(0), yerr=ex.std(0, ddof=1) if len(ex) > 1 else None,
           color=[_COLORS.get(m, "tab:gray") for m in names], capsize=3)
    a1.axhline(0.5, color="k", lw=0.6, ls=":")
    a1.set_ylim(0.45, max(0.6, ex.max() + 0.01))
    a1.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    a1.set_ylabel(f"best-response win rate vs $\\pi_T$ at KL {res['plan']['exploit_kl']:g} (lower = better)")
    a1.set_title(f"exploitability proxy, non-transitive task ({len(ex)} seeds, ± sd ddof 1)")
    for s, sw in list(res["nontransitive"].get("sweep", {}).items())[:1]:
        for m, dm in sw.items():
            pts = sorted((p["kl"], p["exploitability"]["upper"]) for p in dm["points"])
            a3.plot(*zip(*pts), "o-", color=_COLORS.get(m), ms=3.5, lw=1.1, label=m)
        if s in nt:
            a3.plot([0.0], [nt[s]["methods"]["pi_ref"]["exploitability"]["upper"]], "k*", ms=9, label="pi_ref")
        a3.set_xlim(0, 4.0)
        a3.set_xlabel("KL($\\pi_T$ ‖ $\\pi_{ref}$)")
        a3.set_ylabel("exploitability proxy (lower = better)")
        a3.set_title(f"exploitability along each sweep, seed {s}")
        a3.grid(alpha=0.3)
        a3.legend(fontsize=7)
    d = next(iter(nt.values()))
    T = np.array(d["tournament"]["matrix"])
    im = a2.imshow(T, cmap="RdBu_r", vmin=0.3, vmax=0.7)
    tn = d["tournament"]["names"]
    a2.set_xticks(range(len(tn)), tn, rotation=40, ha="right", fontsize=7)
    a2.set_yticks(range(len(tn)), tn, fontsize=7)
    for i in range(len(tn)):
        for j in range(len(tn)):
            a2.text(j, i, f"{T[i, j]:.2f}", ha="center", va="center", fontsize=6)
    a2.set_title(f"gold round robin, P(row beats column), seed {next(iter(nt))}")
    fig.colorbar(im, ax=a2, fraction=0.046)
    return R.save_figure(fig, path)


def plot_gaps(res: dict, path: str) -> str:
    """Chord-rule gap at each KL target, mean ± sd (ddof 1, as the tables) over the seeds that reach it, per
    method; one panel per budget (equal queries, equal samples)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [k for k in ("summary", "summary_samples") if res.get(k)]
    fig, axes = plt.subplots(1, len(keys), figsize=(7 * len(keys), 4.3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        ms = list(res[key])
        for i, m in enumerate(ms):
            g = res[key][m]["gaps"]
            ts = [t for t in map(str, res["kl_targets"]) if t in g]
            if not ts:
                continue
            x = np.arange(len(res["kl_targets"]))[[list(map(str, res["kl_targets"])).index(t) for t in ts]]
            ax.errorbar(x + (i - len(ms) / 2) * 0.07, [g[t]["gap"]["mean"] for t in ts],
                        yerr=[g[t]["gap"]["sd"] for t in ts], fmt="o", ms=3.5, capsize=2, color=_COLORS.get(m),
                        label=m)
        ax.set_xticks(range(len(res["kl_targets"])), [f"KL {t:g}" for t in res["kl_targets"]])
        ax.set_ylabel("gap below the frontier (chord rule; lower = better)")
        ax.set_title(f"equal {'samples' if key == 'summary_samples' else 'queries'}: mean ± sd over seeds")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6.5, ncol=2)
    return R.save_figure(fig, path)

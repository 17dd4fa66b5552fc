"""Equal-budget table on the synthetic llm_alignment task: every method x seed at an equal preference-QUERY
budget and at an equal SAMPLE budget per outer iteration (budgets: benchmarks/llm_results.py), each method
at ONE setting of its regularizer. Its win rates sit at very different KL to pi_ref, so they do not compare
the methods; benchmarks.llm_frontier does (each method swept along its own win-rate / KL curve and scored by
its gap below the optimal frontier), and BENCHMARKS.md quotes that.

Extra rows (--wind_sweep, default 4 (beta, eta) pairs): wind_sq_offset with smaller KL strengths beta and
larger steps eta at the equal query budget, so that methods can be compared at equal KL to pi_ref
(frontier.png: win rate vs KL).

Run (default --size=small: about 11 min on 2 CPU cores, compile-dominated; --size=full uses the experiment's
own loop defaults):
    python -m benchmarks.llm_table --out_dir outputs/llm_table
    python -m benchmarks.llm_table --size=tiny --seeds=0 --methods=wind_sq,sppo    # smoke

Columns: gold win rate of pi_T vs pi_ref after the last iteration (mean +- sample sd over seeds, [min, max]),
KL(pi_T || pi_ref), samples / queries / prompts per iteration (measured counters), median wall seconds per
warm outer iteration (iterations >= 2; CPU seconds are only comparable inside one table). Seeds vary the
pre-trained pi_ref, the preference head and the loop's randomness; the synthetic language and its gold
preference are fixed. All runs share one process (equal shapes share compiled programs); finished runs
under --out_dir are reused unless --fresh.

Writes <out_dir>/<size>/table.json, table.md, table.png, frontier.png and the runs under <out_dir>/<size>/runs/.
"""
from __future__ import annotations

import argparse
import os
import time

from benchmarks import llm_results as R

_NOUN = {"queries": "query", "samples": "sample", "prompts": "prompt"}


def run_table(out_dir: str, size_name: str = "small", seeds=(0, 1, 2), methods=R.METHODS,
              budgets=("queries", "samples"), wind_sweep=(), sweep_method="wind_sq_offset", fresh: bool = False,
              log=print) -> dict:
    """Run (or reuse) every (budget, method, seed) and return the aggregated table (also written to disk).
    `wind_sweep`: (beta, eta) pairs, extra rows of `sweep_method` at the equal query budget with these KL
    strengths and step sizes (eta * beta <= 1), to compare methods at equal KL to pi_ref."""
    size = R.get_size(size_name)
    root = os.path.join(os.path.abspath(out_dir), size_name)
    for m in (*methods, sweep_method):
        R.per_prompt_cost(m)  # validates names before anything runs
    for beta, eta in wind_sweep:
        if not (beta > 0 and eta > 0 and eta * beta <= 1):
            raise ValueError(f"wind_sweep: need beta > 0, eta > 0, eta * beta <= 1; got beta={beta}, eta={eta}")
    from experiments.configs.llm_alignment import get_config
    default_loop = get_config().loop
    start, load_start = time.time(), R.load_note()
    log(f"[llm_table] size={size_name} {size} seeds={list(seeds)} budgets={list(budgets)} "
        f"wind_sweep={list(wind_sweep)}; {load_start}")
    setups = {}
    for s in seeds:
        t = time.time()
        setups[s] = R.prepare_setup(root, s, size)
        log(f"[llm_table] set-up seed {s}: {time.time() - t:.0f} s")

    def row(budget, m, label, run_name, overrides=None):
        prompts = R.prompts_for_budget(m, budget, size.base_prompts)
        per_seed = []
        for s in seeds:
            t = time.time()
            recs = R.run_one(os.path.join(root, "runs", budget, run_name, f"seed{s}"), m, s, size, prompts,
                             setups[s], fresh=fresh, loop_overrides=overrides)
            summ = R.summarize_run(recs)
            summ["initial_win_rate"] = recs[0].get("eval/win_rate_vs_ref", float("nan"))
            per_seed.append(summ)
            log(f"[llm_table] {budget:7s} {label:24s} seed {s}: win {summ['win_rate']:.3f} kl {summ['kl']:.3f} "
                f"samples/it {summ['samples_per_iter']:.0f} queries/it {summ['queries_per_iter']:.0f} "
                f"{summ['sec_per_iter']:.2f} s/it ({time.time() - t:.0f} s with compile)")
        return {"budget": budget, "method": m, "label": label, "prompts_per_iter": prompts,
                "loop_overrides": dict(overrides or {}), "per_seed": per_seed,
                **{k: R.mean_spread([p[k] for p in per_seed])
                   for k in ("win_rate", "kl", "samples_per_iter", "queries_per_iter", "sec_per_iter",
                             "initial_win_rate")}}

    rows = {}
    for budget in budgets:
        for m in methods:
            rows[f"{budget}/{m}"] = row(budget, m, m, m)
    for beta, eta in wind_sweep:
        label = f"{sweep_method} b={beta:g} e={eta:g}"
        rows[f"queries/{label}"] = row("queries", sweep_method, label, f"{sweep_method}_b{beta:g}_e{eta:g}",
                                       {"beta": float(beta), "eta": float(eta)})
    table = {"size": size_name, "size_fields": size.__dict__, "seeds": list(seeds), "rows": rows,
             "default_beta": default_loop.beta, "default_eta": default_loop.eta, "sweep_method": sweep_method,
             "started": R.stamp(), "load_at_start": load_start, "load_at_end": R.load_note(),
             "wall_seconds": time.time() - start}
    R.write_json(os.path.join(root, "table.json"), table)
    md = format_table(table)
    with open(os.path.join(root, "table.md"), "w") as f:
        f.write(md)
    plot_table(table, os.path.join(root, "table.png"))
    plot_frontier(table, os.path.join(root, "frontier.png"))
    log(md)
    return table


def format_table(table: dict) -> str:
    """Markdown tables, one per budget."""
    out = [f"size={table['size']} ({table['size_fields']}), seeds {table['seeds']}; "
           f"{table['load_at_start']} at start, {table['load_at_end']} at end; "
           f"this invocation {table['wall_seconds'] / 60:.1f} min (finished runs under out_dir are reused)\n"]
    budgets = sorted({r["budget"] for r in table["rows"].values()}, key=["queries", "samples", "prompts"].index)
    for b in budgets:
        out.append(f"\nEqual {_NOUN[b].upper()} budget per iteration\n")
        out.append("| method | prompts/it | samples/it | queries/it | gold win rate vs pi_ref (mean ± sd) "
                   "[min, max] | KL(pi_T‖pi_ref) | s/it (warm, median) |")
        out.append("|---|---:|---:|---:|---|---:|---:|")
        for r in (r for r in table["rows"].values() if r["budget"] == b):
            w, k, s = r["win_rate"], r["kl"], r["sec_per_iter"]
            out.append(f"| {r['label']} | {r['prompts_per_iter']} | "
                       f"{r['samples_per_iter']['mean']:.0f} | {r['queries_per_iter']['mean']:.0f} | "
                       f"{w['mean']:.3f} ± {w['sd']:.3f} [{w['min']:.3f}, {w['max']:.3f}] | "
                       f"{k['mean']:.3f} ± {k['sd']:.3f} | {s['mean']:.2f} |")
    return "\n".join(out) + "\n"


def plot_table(table: dict, path: str) -> str:
    """Bars: final gold win rate per method (mean; error bars min-max over seeds), one panel per budget."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    budgets = sorted({r["budget"] for r in table["rows"].values()}, key=["queries", "samples", "prompts"].index)
    fig, axes = plt.subplots(1, len(budgets), figsize=(6.5 * len(budgets), 3.8), squeeze=False)
    for ax, b in zip(axes[0], budgets):
        rs = [r for r in table["rows"].values() if r["budget"] == b]
        x = range(len(rs))
        mean = [r["win_rate"]["mean"] for r in rs]
        err = [[r["win_rate"]["mean"] - r["win_rate"]["min"] for r in rs],
               [r["win_rate"]["max"] - r["win_rate"]["mean"] for r in rs]]
        colors = ["tab:blue" if r["method"].startswith("wind") else "tab:gray" for r in rs]
        ax.bar(x, mean, yerr=err, color=colors, capsize=3)
        ax.axhline(0.5, color="k", lw=0.8, ls="--")
        lo = min(r["win_rate"]["min"] for r in rs)
        ax.set_ylim(min(0.45, lo - 0.01), max(r["win_rate"]["max"] for r in rs) + 0.01)
        ax.set_xticks(list(x), [r["label"] for r in rs], rotation=40, ha="right", fontsize=8)
        ax.set_title(f"equal {_NOUN[b]} budget ({table['size']}, {len(table['seeds'])} seeds)")
        ax.set_ylabel("gold win rate vs $\\pi_{ref}$")
        ax.grid(axis="y", alpha=0.3)
    return R.save_figure(fig, path)


def plot_frontier(table: dict, path: str) -> str:
    """Gold win rate vs KL(pi_T || pi_ref) at the equal query budget: each row's mean over seeds, sd bars
    (WIND rows, including the (beta, eta) sweep, in blue)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rs = [r for r in table["rows"].values() if r["budget"] == "queries"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in rs:
        wind = r["method"].startswith("wind")
        ax.errorbar(r["kl"]["mean"], r["win_rate"]["mean"], xerr=r["kl"]["sd"], yerr=r["win_rate"]["sd"],
                    fmt="o" if wind else "s", color="tab:blue" if wind else "tab:gray", ms=4, capsize=2)
        ax.annotate(r["label"], (r["kl"]["mean"], r["win_rate"]["mean"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("KL($\\pi_T$ ‖ $\\pi_{ref}$)")
    ax.set_ylabel("gold win rate vs $\\pi_{ref}$")
    ax.set_title(f"equal query budget ({table['size']}, {len(table['seeds'])} seeds; mean ± sd)")
    ax.grid(alpha=0.3)
    return R.save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out_dir", default="outputs/llm_table")
    p.add_argument("--size", default="small", choices=sorted(R.SIZES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default=",".join(R.METHODS))
    p.add_argument("--budgets", default="queries,samples")
    p.add_argument("--wind_sweep", default="0.03:3,0.01:3,0.01:10,0.01:30",
                   help="beta:eta pairs of extra wind_sq_offset rows (equal query budget); '' for none")
    p.add_argument("--fresh", action="store_true", help="delete finished runs instead of reusing them")
    a = p.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    if not seeds:
        raise ValueError("--seeds: at least one seed")
    run_table(a.out_dir, a.size, seeds, [m.strip() for m in a.methods.split(",") if m.strip()],
              [b.strip() for b in a.budgets.split(",") if b.strip()],
              wind_sweep=[tuple(float(v) for v in pair.split(":")) for pair in a.wind_sweep.split(",")
                          if pair.strip()], fresh=a.fresh)


if __name__ == "__main__":
    main()

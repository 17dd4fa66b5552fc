"""Figure-2 analog: wall time of one outer iteration per method, split into sampling, judging, frozen
log-probs, training, evaluation and other (prompt fetching, optimizer reset, placing the batch on devices),
all methods side by side in ONE process, as RATIOS to the reference method's whole iteration (CPU seconds
are machine- and load-specific; absolute seconds belong to a GPU run).

Run (default: equal prompts per iteration, every method at seed 0, 8 outer iterations at --size=small):
    python -m benchmarks.figure2 --out_dir outputs/figure2
    python -m benchmarks.figure2 --budget=queries      # equal preference-query budget instead

Timing: the loop's own per-iteration split (wind_jax/train/loop.py: time/sampling, time/judging,
time/logprobs, time/training, time/eval, time/iteration). Warm-up excluded: only iterations >= 2 count
(iteration 1 compiles); each phase is the median over those iterations ("other" = median of the remainder),
so a stacked bar need not sum exactly to the median total, which is printed separately.
Writes <out_dir>/<size>/figure2_<budget>.png / .json and prints the table.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

from benchmarks import llm_results as R


def run_figure2(out_dir: str, size_name: str = "small", budget: str = "prompts", methods=R.METHODS,
                reference: str = "wind_sq", num_iterations: int = 8, seed: int = 0, fresh: bool = False,
                log=print) -> dict:
    """Run every method once (seed `seed`) in this process and return the per-phase medians and ratios."""
    if reference not in methods:
        raise ValueError(f"reference {reference!r} must be one of the methods {list(methods)}")
    if num_iterations < 2:
        raise ValueError(f"num_iterations must be >= 2 (iteration 1 is warm-up), got {num_iterations}")
    size = dataclasses.replace(R.get_size(size_name), num_iterations=num_iterations)
    root = os.path.join(os.path.abspath(out_dir), size_name)
    load_start = R.load_note()
    log(f"[figure2] size={size_name} T={num_iterations} budget={budget} reference={reference}; {load_start}")
    setup = R.prepare_setup(root, seed, size)
    per_method = {}
    for m in methods:
        prompts = R.prompts_for_budget(m, budget, size.base_prompts)
        t = time.time()
        recs = R.run_one(os.path.join(root, "runs", f"figure2_{budget}_T{num_iterations}", m, f"seed{seed}"),
                         m, seed, size, prompts, setup, fresh=fresh)
        med = R.phase_medians(recs)
        summ = R.summarize_run(recs)
        per_method[m] = {"cpu_seconds": med, "prompts_per_iter": prompts,
                         "samples_per_iter": summ["samples_per_iter"], "queries_per_iter": summ["queries_per_iter"],
                         "warm_iterations": len(R.warm(recs))}
        log(f"[figure2] {m:15s} {med['total']:.2f} s/it warm ({time.time() - t:.0f} s with compile)")
    ref_total = per_method[reference]["cpu_seconds"]["total"]
    for v in per_method.values():
        v["ratio"] = {k: s / ref_total for k, s in v["cpu_seconds"].items()}
    fig = {"size": size_name, "size_fields": size.__dict__, "budget": budget, "reference": reference,
           "seed": seed, "methods": per_method, "started": R.stamp(), "load_at_start": load_start,
           "load_at_end": R.load_note(), "device": "CPU (ratios only)"}
    base = os.path.join(root, f"figure2_{budget}")
    R.write_json(base + ".json", fig)
    plot_figure2(fig, base + ".png")
    text = format_figure2(fig)
    with open(base + ".md", "w") as f:
        f.write(text)
    log(text)
    return fig


def format_figure2(fig: dict) -> str:
    ph = R.PHASES
    out = [f"Time per outer iteration relative to {fig['reference']}'s whole iteration (= 1.00); equal "
           f"{fig['budget']} per iteration; size={fig['size']}, median over warm iterations "
           f"(n={next(iter(fig['methods'].values()))['warm_iterations']}); {fig['load_at_start']} at start, "
           f"{fig['load_at_end']} at end\n",
           "| method | prompts/it | samples/it | queries/it | " + " | ".join(ph) + " | total |",
           "|---|" + "---:|" * (len(ph) + 4)]
    for m, v in fig["methods"].items():
        r = v["ratio"]
        out.append(f"| {m} | {v['prompts_per_iter']} | {v['samples_per_iter']:.0f} | {v['queries_per_iter']:.0f} | "
                   + " | ".join(f"{r[p]:.2f}" for p in ph) + f" | {r['total']:.2f} |")
    return "\n".join(out) + "\n"


def plot_figure2(fig: dict, path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = list(fig["methods"])
    f, ax = plt.subplots(figsize=(9, 4))
    bottom = [0.0] * len(methods)
    colors = dict(zip(R.PHASES, ("tab:blue", "tab:orange", "tab:purple", "tab:green", "tab:gray", "lightgray")))
    for p in R.PHASES:
        h = [fig["methods"][m]["ratio"][p] for m in methods]
        ax.bar(methods, h, bottom=bottom, label=p, color=colors[p])
        bottom = [b + x for b, x in zip(bottom, h)]
    ax.scatter(methods, [fig["methods"][m]["ratio"]["total"] for m in methods], marker="_", s=300, color="k",
               label="median total", zorder=3)
    ax.axhline(1.0, color="k", lw=0.6, ls="--")
    ax.set_ylabel(f"time / iteration  ({fig['reference']} = 1)")
    ax.set_title(f"Per-iteration time split, equal {fig['budget']} per iteration (CPU ratios, {fig['size']})")
    ax.tick_params(axis="x", rotation=35, labelsize=8)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return R.save_figure(f, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out_dir", default="outputs/figure2")
    p.add_argument("--size", default="small", choices=sorted(R.SIZES))
    p.add_argument("--budget", default="prompts", choices=("prompts", "queries", "samples"))
    p.add_argument("--methods", default=",".join(R.METHODS))
    p.add_argument("--reference", default="wind_sq")
    p.add_argument("--num_iterations", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true")
    a = p.parse_args(argv)
    run_figure2(a.out_dir, a.size, a.budget, [m.strip() for m in a.methods.split(",") if m.strip()],
                a.reference, a.num_iterations, a.seed, a.fresh)


if __name__ == "__main__":
    main()

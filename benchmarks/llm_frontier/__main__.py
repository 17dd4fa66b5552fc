"""Command line of the frontier comparison (the package docstring describes the stages):

    python -m benchmarks.llm_frontier --out_dir outputs/llm_frontier              # everything, one process
    python -m benchmarks.llm_frontier --quick --out_dir /tmp/llm_frontier_quick   # smoke (not a result)
    python -m benchmarks.llm_frontier --review=docs/figures/llm_frontier/comparison.json --out_dir outputs/llm_frontier
"""
from __future__ import annotations

import argparse
import dataclasses

from benchmarks.llm_frontier.comparison import recheck, run_comparison
from benchmarks.llm_frontier.plan import QUICK, SWEEPS, Plan


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.split(",") if v.strip())


def parse_plan(argv=None) -> tuple[argparse.Namespace, Plan]:
    """(flags, the Plan they describe)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.llm_frontier",
                                description="Every LLM-alignment method against the optimal win-rate / KL frontier.")
    p.add_argument("--out_dir", default="outputs/llm_frontier")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one seed (a smoke test)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default=",".join(SWEEPS))
    p.add_argument("--nontransitive_seeds", default="0,1,2")
    p.add_argument("--nontransitive_sweep_seeds", default="0,1,2",
                   help="non-transitive seeds on which every sweep point runs (exploitability at matched KL)")
    p.add_argument("--heldout_seed", type=int, default=100)
    p.add_argument("--recheck", default="", help="method:lr:steps,... rerun these methods' equal-query sweeps at "
                                                 "other hyperparameters and print their gaps (after a comparison)")
    p.add_argument("--review", default="",
                   help="a committed comparison.json: apply the review (chord rule, matched-KL choice, epochs, "
                        "quarter iterations; benchmarks/llm_frontier/review.py), its missing runs made under --out_dir")
    p.add_argument("--reuse_only", action="store_true", help="tables from finished runs only; run nothing new")
    p.add_argument("--stage", default="all", choices=("setup", "runs", "all"),
                   help="setup: set-ups and frontiers; runs: also the lr search and sweeps of --methods (run "
                        "several such processes side by side after one setup); all: everything + tables")
    a = p.parse_args(argv)
    plan = Plan(seeds=_ints(a.seeds), methods=tuple(m.strip() for m in a.methods.split(",") if m.strip()),
                nontransitive_seeds=_ints(a.nontransitive_seeds), stage=a.stage,
                nontransitive_sweep_seeds=_ints(a.nontransitive_sweep_seeds),
                heldout_seed=a.heldout_seed, reuse_only=a.reuse_only)
    if a.quick:
        plan = dataclasses.replace(plan, **QUICK)
    if not plan.seeds:
        p.error("--seeds: at least one seed")
    return a, plan


def main(argv=None):
    a, plan = parse_plan(argv)
    if a.review:
        from benchmarks.llm_frontier.review import run_review
        run_review(a.review, a.out_dir, plan)
        return
    if a.recheck:
        items = [item.split(":") for item in a.recheck.split(",") if item.strip()]
        if any(len(i) != 3 or i[0] not in SWEEPS for i in items):
            raise SystemExit(f"--recheck: expected method:lr:steps items with a known method, got {a.recheck!r}")
        recheck(a.out_dir, {m: (float(lr), int(k)) for m, lr, k in items}, plan)
        return
    run_comparison(a.out_dir, plan)


if __name__ == "__main__":
    main()

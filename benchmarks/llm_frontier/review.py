"""The review of issue 13's comparison, on top of its committed results (docs/figures/llm_frontier/comparison.json,
whose run directories need not exist): every committed table rescored with the chord rule (matched.py) and
paired bootstrap intervals against wind_sq, the matched-KL choice of (lr, steps) from the held-out curves, and a
RERUN block: the set-ups of the evaluation seeds made again on this machine (they are not bit-identical to the
committed ones: a committed run repeated here, with the current code and with the code of commit 5880ac2 that
made it, ends at another point), their frontiers, and on them wind_sq's sweep (the reference of the paired
differences), the sweeps of the methods whose choice changed, an equal-epochs variant for the methods far from
wind_sq's passes over their own rows, and CENTER runs with 4x the iterations at 1/4 the queries each (an
evaluation every quarter of an iteration's queries) with their standard counterparts (review_tables.py).

    python -m benchmarks.llm_frontier --review=docs/figures/llm_frontier/comparison.json \\
        --out_dir outputs/llm_frontier          # runs reused from --out_dir when finished
"""
from __future__ import annotations

import dataclasses
import json
import os

from benchmarks import llm_results as R
from benchmarks.llm_frontier.matched import epochs, select_matched
from benchmarks.llm_frontier.plan import SIZES, SWEEPS, hp_key, middle, parse_hp
from benchmarks.llm_frontier.runs import Runs
from benchmarks.llm_frontier.scoring import point

EPOCH_FAR = 2.0           # an equal-epochs variant runs where a method's epochs exceed wind_sq's by more than this
QUARTER_METHODS = ("wind_sq", "wind_kl", "dpo", "sppo_beta", "bonbon")  # the queries-to-reach contest


def matched_choice(res: dict) -> dict:
    """{method: {"chosen", "single_point", "changed", **select_matched's report}} from res["hp_curves"] (stored
    per-point values use the chord rule; older results store only the linear-rule gaps, used as they are)."""
    out = {}
    for m, per in res["hp_curves"].items():
        old = res["lr_search"][m]["chosen"]
        curves = {c: {float(t): g for t, g in d["gaps"].items()} for c, d in per.items()}
        best, rep = select_matched(curves, fallback=old)
        rep = {**rep, "targets": [str(t) for t in rep["targets"]], "means": rep["means"]}
        out[m] = {"chosen": best, "single_point": old, "changed": best != old, **rep}
    return out


def method_epochs(res: dict, chosen: dict, size) -> dict:
    """Per method at its chosen steps and CENTER point: rows per iteration, minibatch, epochs (matched.epochs)."""
    out = {}
    for m, key in chosen.items():
        _, k = parse_hp(key)
        n = int(middle(m)[1].get("num_samples", 0))
        prompts = R.prompts_for_budget(m, "queries", size.base_prompts, n)
        out[m] = epochs(m, prompts, k, size.batch_size, n)
    return out


def quarter_size(size):
    """4x the iterations, 1/4 the prompts (queries) and optimizer steps per iteration: the same total queries
    and steps, an evaluation after every quarter of the original iteration."""
    return dataclasses.replace(size, num_iterations=4 * size.num_iterations, base_prompts=size.base_prompts // 4,
                               steps_per_iteration=max(1, size.steps_per_iteration // 4))


def _points(runs: Runs, m: str, hp, labels, size=None, sub="runs") -> dict:
    """{label: {seed: point}} of `m` at hp on the evaluation seeds (runs.run: made, or reused when finished under
    runs.root), against each seed's frontier made with its set-up here. size replaces runs.size."""
    out = {}
    for label, over in SWEEPS[m]:
        if label not in labels:
            continue
        for s in runs.plan.seeds:
            base, runs.size = runs.size, size or runs.size
            try:
                recs = runs.run(m, s, hp, over, label=label, sub=sub)
            finally:
                runs.size = base
            if recs is None:
                runs.log(f"[review] {sub} {m} {label} {hp_key(hp)} seed {s}: missing")
                continue
            p = out.setdefault(label, {})[str(s)] = point(recs, runs.frontier(s))
            runs.log(f"[review] {sub} {m} {label} {hp_key(hp)} seed {s}: kl {p['kl']:.3f} win {p['win_rate']:.3f}")
    return out


def review_runs(runs: Runs, choice: dict, ep: dict) -> dict:
    """The rerun block's runs on the evaluation seeds: wind_sq's sweep and the changed choices' sweeps, the
    equal-epochs CENTER points, the quarter-iteration CENTER points and the standard CENTER runs they compare with."""
    out = {"sweep": {}, "equal_epochs": {}, "quarter": {}, "center": {}}
    for m, c in choice.items():
        if c["changed"] or m == "wind_sq":
            out["sweep"][m] = _points(runs, m, parse_hp(c["chosen"]), [lab for lab, _ in SWEEPS[m]])
    ref = ep["wind_sq"]["epochs"]
    for m, e in ep.items():
        if e["epochs"] > EPOCH_FAR * ref:
            lr, _ = parse_hp(choice[m]["chosen"])
            k = max(1, round(ref * e["rows"] / e["minibatch"]))
            out["equal_epochs"][m] = {"hp": hp_key((lr, k)), "epochs": k * e["minibatch"] / e["rows"],
                                      "points": _points(runs, m, (lr, k), [middle(m)[0]], sub="epochs")}
    qs = quarter_size(runs.size)
    for m in QUARTER_METHODS:
        lr, k = parse_hp(choice[m]["chosen"])
        hp = (lr, max(1, k // 4))
        out["center"][m] = out["sweep"].get(m, {}).get(middle(m)[0]) or \
            _points(runs, m, (lr, k), [middle(m)[0]]).get(middle(m)[0], {})
        out["quarter"][m] = {"hp": hp_key(hp), "size": qs.__dict__,
                             "points": _points(runs, m, hp, [middle(m)[0]], size=qs, sub="quarter")}
    for m, d in out["equal_epochs"].items():   # the standard CENTER run of the same set-ups
        if m not in out["center"]:
            out["center"][m] = out["sweep"].get(m, {}).get(middle(m)[0]) or \
                _points(runs, m, parse_hp(choice[m]["chosen"]), [middle(m)[0]]).get(middle(m)[0], {})
    out["frontiers"] = {str(s): runs.frontier(s) for s in runs.plan.seeds}
    return out


def run_review(committed: str, out_dir: str, plan, log=print) -> dict:
    """Read the committed comparison, make (or reuse) the rerun block's runs under out_dir (set-ups and frontiers
    of plan.seeds made there first), rescore every table (review_tables.rescore) and write comparison.json /
    comparison.md / figures under <out_dir>/<size>/review."""
    from benchmarks.llm_frontier import review_tables
    with open(committed) as f:
        res = json.load(f)
    size = SIZES[plan.size]
    root = os.path.join(os.path.abspath(out_dir), plan.size)
    runs = Runs(root, plan, size, log)
    choice = matched_choice(res)
    ep = method_epochs(res, {m: c["chosen"] for m, c in choice.items()}, size)
    for m, c in choice.items():
        log(f"[review] {m}: matched-KL choice {c['chosen']} (single-point rule {c['single_point']}); "
            f"epochs {ep[m]['epochs']:g} ({ep[m]['rows']} rows, minibatch {ep[m]['minibatch']})")
    new = review_runs(runs, choice, ep)
    out = review_tables.rescore(res, choice, ep, new)
    out_root = os.path.join(root, "review")
    review_tables.publish(out, out_root)
    log(f"[review] written to {out_root}")
    return out

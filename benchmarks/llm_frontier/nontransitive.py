"""The non-transitive variant (gold preference dominated by a cyclic term, NONTRANSITIVE): each method's final
policy, its exploitability proxy (along its sweep on some seeds), and a gold round robin of the policies."""
from __future__ import annotations

import json
import os
import time

import numpy as np

from benchmarks import llm_results as R
from benchmarks.llm_frontier.evaluation import draw, eval_prompts, exploitability, gold_matrix
from benchmarks.llm_frontier.plan import CENTER, KL_TARGETS, NONTRANSITIVE, SWEEPS, hp_key, run_name
from benchmarks.llm_frontier.runs import reference_frontier, run
from benchmarks.llm_frontier.scoring import point


def nontransitive_setups(root, plan, size, log) -> dict:
    """Set-up and frontier of each non-transitive seed (cached)."""
    nroot = os.path.join(root, "nontransitive")
    out = {}
    for s in plan.nontransitive_seeds:
        t = time.time()
        out[s] = reference_frontier(nroot, s, size, plan, NONTRANSITIVE, key_offset=2000)
        log(f"[llm_frontier] non-transitive seed {s}: set-up + frontier {time.time() - t:.0f} s")
    return out


def nontransitive_method(root, plan, size, s: int, m: str, hp, log, label: str | None = None) -> dict | None:
    """One method's final policy on the non-transitive variant at one sweep point (default its CENTER): point,
    exploitability proxy and, at the CENTER, its tournament draws (saved as npz); cached in
    <root>/nontransitive/results/ (recomputed when the cached hyperparameters differ). None when
    plan.reuse_only and not cached."""
    import jax
    nroot = os.path.join(root, "nontransitive")
    label = label or (CENTER[m] if m != "pi_ref" else "-")
    center = m == "pi_ref" or label == CENTER[m]
    name = f"seed{s}_{m}" if center else run_name(f"seed{s}_{m}", label, *hp, size.steps_per_iteration)
    path = os.path.join(nroot, "results", name + ".json")
    key = hp_key(hp) if m != "pi_ref" else "-"
    if os.path.exists(path):
        with open(path) as f:
            got = json.load(f)
        if got.get("hp") == key:
            return got
    if plan.reuse_only:
        return None
    frs, setup = reference_frontier(nroot, s, size, plan, NONTRANSITIVE, key_offset=2000)
    c, lang, ref, head, info = R.load_setup(nroot, s, size, NONTRANSITIVE)
    prompts = eval_prompts(lang, s, size.eval_prompts)
    if m == "pi_ref":
        pol, p = ref, {"kl": 0.0, "win_rate": 0.5, "gap_upper": 0.0}
    else:
        over = dict(SWEEPS[m])[label]
        recs, pol = run(nroot, m, s, size, setup, hp, over, NONTRANSITIVE, keep_policy=True, label=label)
        p = {k: v for k, v in point(recs, frs).items() if k != "trajectory"}
    p["label"], p["hp"] = label, key
    p["exploitability"] = exploitability(pol, lang, prompts, jax.random.key(3000 + s), plan.exploit_samples,
                                         plan.exploit_kl)
    if center:
        toks, mask = draw(pol, lang, prompts, plan.tournament_samples, jax.random.key(4000 + s))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.savez(path[:-5] + "_draws.npz", tokens=toks, mask=mask)
    R.write_json(path, p)
    log(f"[llm_frontier] non-transitive seed {s} {m:15s} {label:14s}: kl {p['kl']:.3f} win {p['win_rate']:.3f} "
        f"gap {p['gap_upper']:+.3f} exploitability {p['exploitability']['upper']:.3f}")
    return p


def exploitability_at(points: list[dict], targets=KL_TARGETS) -> dict:
    """A method's exploitability proxy (upper estimate) along its sweep, sorted by KL and linearly interpolated
    at each KL target the sweep reaches: {target: value}."""
    pts = sorted(points, key=lambda p: p["kl"])
    ks = np.array([p["kl"] for p in pts])
    es = np.array([p["exploitability"]["upper"] for p in pts])
    return {str(t): float(np.interp(t, ks, es)) for t in targets if ks.size and ks[0] <= t <= ks[-1]}


def tournament(lang, prompts, draws: dict) -> dict:
    """Gold round robin: P(row beats column) = mean exact gold probability over the policies' draws."""
    names = list(draws)
    T = np.full((len(names), len(names)), 0.5)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i < j:
                T[i, j] = float(gold_matrix(lang, prompts, *draws[a], *draws[b]).mean())
                T[j, i] = 1.0 - T[i, j]
    return {"names": names, "matrix": T.tolist()}


def run_nontransitive(root, plan, size, chosen, log) -> dict:
    """Every method of the plan on the non-transitive variant (its CENTER point; on nontransitive_sweep_seeds
    every sweep point, for the exploitability proxy at matched KL), and the gold round robin of the CENTER
    policies (P(row beats column) = mean exact gold probability over their saved draws on the eval prompts)."""
    nroot = os.path.join(root, "nontransitive")
    out = {"seeds": {}, "sweep": {}}
    for s, (frs, _) in nontransitive_setups(root, plan, size, log).items():
        rows = {m: nontransitive_method(root, plan, size, s, m, chosen.get(m), log) for m in ("pi_ref", *chosen)}
        rows = {m: r for m, r in rows.items() if r is not None}
        if s in plan.nontransitive_sweep_seeds:
            sw = {}
            for m in chosen:
                pts = [nontransitive_method(root, plan, size, s, m, chosen[m], log, label) for label, _ in SWEEPS[m]]
                pts = [p for p in pts if p is not None]
                sw[m] = {"points": pts, "at_kl": exploitability_at(pts)}
            out["sweep"][str(s)] = sw
        if plan.stage == "runs" or len(rows) < 2:
            continue
        c, lang, *_ = R.load_setup(nroot, s, size, NONTRANSITIVE)
        draws = {}
        for m in rows:
            z = np.load(os.path.join(nroot, "results", f"seed{s}_{m}_draws.npz"))
            draws[m] = (z["tokens"], z["mask"])
        out["seeds"][str(s)] = {"frontier": frs, "head_agreement_pi_ref": frs["head_agreement_pi_ref"],
                                "head_accuracy_reference_process": frs["head_accuracy_reference_process"],
                                "methods": rows,
                                "tournament": tournament(lang, eval_prompts(lang, s, size.eval_prompts), draws)}
    return out


def nontransitive_scores(d: dict) -> dict:
    """Mean tournament score of each policy (its mean P(beats) over the other policies)."""
    T = np.array(d["tournament"]["matrix"])
    return dict(zip(d["tournament"]["names"], (T.sum(1) - 0.5) / max(len(T) - 1, 1)))

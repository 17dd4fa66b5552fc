"""Every LLM-alignment method on its own win-rate / KL curve, judged by its gap below the Monte Carlo optimal
frontier of the synthetic task's pi_ref (issue 13; MATH.md "The optimal win-rate / KL frontier").

Stages (all in one process: equal shapes share compiled programs, and beta / eta / lr are traced):
  1. frontier: per set-up seed, M samples of pi_ref on the evaluation prompts of the loop (the same prompts the
     loop's eval uses), w_ref of each from EXACT gold probabilities against K fresh pi_ref samples, the tilt
     family by self-normalized reweighting (wind_jax.monte_carlo_frontier.mc_frontier) as a bracket: "upper" tilts and
     evaluates on the same w estimate (biased up by its noise), "lower" tilts on half the opponents and
     evaluates on the other half (a real policy, biased down); best-of-n points under w_ref.
  2. hyperparameter search: per method, the same grid (--lrs x steps per outer iteration) at its CENTER point
     on a held-out set-up seed; the (lr, steps) whose final point lies closest below that seed's frontier (among
     points with KL >= 0.1; a run that does not move is not a result) is kept. Sensitivity (hp_curves): every
     grid configuration's whole sweep on the held-out seed, its gaps at matched KL; --recheck reruns chosen
     methods' sweeps on the evaluation seeds at other configurations.
  3. sweep: each method over its own regularizer (SWEEPS: four points each), every seed, at an equal
     preference-QUERY budget per outer iteration (benchmarks/llm_results.py); queries, samples and warm seconds
     needed to reach a win rate within a KL budget are read from each run's per-iteration evaluations.
  4. non-transitive variant: gold preference dominated by the cyclic term (NONTRANSITIVE); per seed each method
     at its CENTER point; exploitability proxy = gold win rate against pi_T of the tilt of pi_T by its own gold
     win rates at KL budget --exploit_kl (lower is better); a round-robin tournament of the final policies under
     gold; agreement of the learned preference head with gold. On --nontransitive_sweep_seeds every sweep point
     runs, giving the exploitability proxy at matched KL.
  5. timing: each method's CENTER point once more on the held-out seed, the methods one after another in one
     process (--stage=all), so that warm seconds per iteration compare like with like; "seconds to reach" =
     iterations x that figure (compile excluded).

A point above the frontier's upper curve by more than twice the combined standard error is flagged
("above_frontier") and printed: it is a bug to report, not a win.

    python -m benchmarks.llm_frontier --out_dir outputs/llm_frontier              # everything, one process
    python -m benchmarks.llm_frontier --quick --out_dir /tmp/llm_frontier_quick   # smoke (not a result)
Side by side: one `--stage=setup` process per group of seeds (--seeds, --heldout_seed, --nontransitive_seeds),
then several `--stage=runs` processes (each claims whole methods; once the searches are cached the first process
claims them all, so give such processes disjoint --methods), then `--stage=all` for the timing pass and tables.
Runs are compile-dominated on CPU: a method's first run compiles (minutes under load), later ones reuse it.

Writes <out_dir>/<size>/comparison.json, comparison.md, curves.png, nontransitive.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import time

import numpy as np

from benchmarks import llm_results as R

KL_TARGETS = (0.25, 0.5, 1.0, 2.0)
LAMBDAS = np.concatenate([[0.0], np.geomspace(0.05, 2000.0, 120)])

# method -> list of (label, loop overrides); loss_hparams is config.loop's "name=value" string. Every method gets
# the same number of points (the same search budget); CENTER is the point of the hyperparameter search and of
# the non-transitive comparison.
_WIND_GRID = [("b=0.3 e=1", {"beta": 0.3, "eta": 1.0}), ("b=0.1 e=3", {"beta": 0.1, "eta": 3.0}),
              ("b=0.03 e=10", {"beta": 0.03, "eta": 10.0}), ("b=0.01 e=30", {"beta": 0.01, "eta": 30.0})]
SWEEPS = {
    "wind_sq": _WIND_GRID,
    "wind_sq_offset": _WIND_GRID,
    "wind_kl": _WIND_GRID,
    "wind_nce": _WIND_GRID,
    "sppo": [(f"e={e:g}", {"eta": e}) for e in (1.0, 3.0, 10.0, 30.0)],
    "sppo_beta": _WIND_GRID,
    "dpo": [(f"b={b:g}", {"beta": b}) for b in (10.0, 2.0, 0.5, 0.2)],
    # J-BOND: the EMA rate of its anchor and the weight gamma of its KL(pi || anchor) term
    "jbond": [(f"ema={a:g}", {"anchor_ema": a}) for a in (0.003, 0.02, 0.1)]
             + [("ema=0.1 g=0.3", {"anchor_ema": 0.1, "loss_hparams": "gamma=0.3"})],
    "bon_distill": [(f"alpha={a:g}", {"loss_hparams": f"alpha={a:g}"}) for a in (0.97, 0.9, 0.5, 0.0)],
    "bonbon": [(f"n={n}", {"num_samples": n}) for n in (2, 3, 4, 8)],
}
CENTER = {"wind_sq": "b=0.03 e=10", "wind_sq_offset": "b=0.03 e=10", "wind_kl": "b=0.03 e=10",
          "wind_nce": "b=0.03 e=10", "sppo": "e=10", "sppo_beta": "b=0.03 e=10", "dpo": "b=2", "jbond": "ema=0.02",
          "bon_distill": "alpha=0.5", "bonbon": "n=4"}


def middle(m: str):
    """(label, overrides) of the method's CENTER point (hyperparameter search, non-transitive variant)."""
    return next(p for p in SWEEPS[m] if p[0] == CENTER[m])


# gold preference dominated by the cyclic (rock-paper-scissors over token classes) term
NONTRANSITIVE = {"nontransitive_strength": 6.0, "reward_scale": 0.1, "match_bonus": 0.1}

SIZES = {
    # the comparison (reduced from experiments/configs/llm_alignment.py: 200 pre-training / head steps instead
    # of 300, 4 outer iterations instead of 6, a 64-query budget per iteration, 8 steps of 64 rows)
    "compare": R.Size(pretrain_steps=200, head_steps=200, num_iterations=4, base_prompts=64, steps_per_iteration=8,
                      batch_size=64, eval_prompts=256),
    # --quick: smoke test of the whole pipeline (not a result)
    "quick": R.Size(pretrain_steps=30, head_steps=30, num_iterations=2, base_prompts=16, steps_per_iteration=2,
                    batch_size=32, eval_prompts=16),
}


@dataclasses.dataclass(frozen=True)
class Plan:
    size: str = "compare"
    seeds: tuple[int, ...] = (0, 1, 2)
    heldout_seed: int = 100
    methods: tuple[str, ...] = tuple(SWEEPS)
    lrs: tuple[float, ...] = (1e-3, 3e-3)
    steps: tuple[int, ...] = (8, 16)  # optimizer steps per outer iteration (searched with the lr)
    ref_samples: int = 256        # M pi_ref samples per eval prompt (frontier)
    ref_opponents: int = 64       # K fresh pi_ref opponents per prompt (w_ref estimate)
    exploit_samples: int = 64     # samples / opponents of pi_T for the exploitability proxy
    exploit_kl: float = 0.5
    nontransitive_seeds: tuple[int, ...] = (0, 1, 2)
    nontransitive_sweep_seeds: tuple[int, ...] = (0, 1, 2)  # every sweep point: exploitability at matched KL
    tournament_samples: int = 4   # samples per eval prompt and policy in the round robin
    win_targets: tuple[float, ...] = (0.55, 0.6)
    kl_budget: float = 1.0
    budgets: tuple[str, ...] = ("queries", "samples")  # equal per-iteration budgets swept ("queries" first)
    stage: str = "all"            # "setup": set-ups and frontiers only; "runs": also the runs; "all": everything
    reuse_only: bool = False      # tables from the finished runs only (missing runs are left out, not run)
    hp_curves: bool = True        # every grid configuration's whole sweep on the held-out seed (sensitivity)


# ------------------------------------------------------------------------------------ sampling, gold
def eval_prompts(lang, seed: int, count: int) -> np.ndarray:
    """The loop's evaluation prompts of `seed` (wind_jax.train.tasks.build_loop: seed + 10_000)."""
    from wind_jax.train.loop import FunctionPrompts
    return np.asarray(FunctionPrompts(lang.sample_prompts, seed=seed + 10_000).get(0, count).tokens)


def draw(policy, lang, prompts: np.ndarray, n: int, key, chunk_rows: int = 8192):
    """n responses per prompt from `policy` at temperature 1: (tokens, mask) [X, n, W] (prompt chunks)."""
    import jax

    from wind_jax.sampling import sample
    from wind_jax.train.synthetic import EOS, PAD
    c = max(1, chunk_rows // n)
    toks, masks = [], []
    for i in range(0, prompts.shape[0], c):
        p = prompts[i:i + c]
        out = sample(policy, p, np.ones_like(p, bool), jax.random.fold_in(key, i), num_samples=n,
                     max_new_tokens=lang.response_width, eos_token_id=EOS, pad_token_id=PAD)
        tp = p.shape[1]
        toks.append(np.asarray(out.tokens[:, :, tp:]))
        masks.append(np.asarray(out.response_mask[:, :, tp:]))
    return np.concatenate(toks), np.concatenate(masks)


@functools.cache
def _pairwise():
    """Jitted (lang, prompts [c, P], a [c, M, W], ma, b [c, K, W], mb) -> P_gold(a_i beats b_k) [c, M, K]."""
    import jax
    import jax.numpy as jnp

    def f(lang, p, a, ma, b, mb):
        c, m, w = a.shape
        k = b.shape[1]
        rep = lambda x, ax, r: jnp.repeat(jnp.expand_dims(x, ax), r, axis=ax)  # noqa: E731
        A, MA = rep(a, 2, k).reshape(-1, w), rep(ma, 2, k).reshape(-1, w)
        B, MB = rep(b, 1, m).reshape(-1, w), rep(mb, 1, m).reshape(-1, w)
        return lang.gold_preference(jnp.repeat(p, m * k, axis=0), A, MA, B, MB).reshape(c, m, k)
    return jax.jit(f, static_argnums=0)


def gold_matrix(lang, prompts, a, ma, b, mb, chunk_pairs: int = 1 << 18) -> np.ndarray:
    """P_gold(a_i beats b_k | x) [X, M, K] (exact gold probabilities, chunked over prompts)."""
    X, M = a.shape[:2]
    K = b.shape[1]
    c = max(1, chunk_pairs // (M * K))
    out = []
    for i in range(0, X, c):
        j = min(X, i + c)
        pad = c - (j - i)  # equal chunk shapes: one compiled program
        sl = lambda x: np.concatenate([x[i:j], np.repeat(x[j - 1:j], pad, 0)]) if pad else x[i:j]  # noqa: E731
        out.append(np.asarray(_pairwise()(lang, sl(prompts), sl(a), sl(ma), sl(b), sl(mb)))[: j - i])
    return np.concatenate(out)


def self_frontier(policy, lang, prompts, key, M: int, K: int, lambdas=LAMBDAS, ns=(2, 4, 8, 16)) -> dict:
    """Frontier of `policy` against itself (for pi_ref: the optimal win-rate / KL frontier; for pi_T: the
    best responses behind the exploitability proxy): upper / lower Monte Carlo curves, best-of-n points.
    w of each of M samples = mean exact gold probability of beating K fresh samples; halves for cross-fitting."""
    import jax

    from wind_jax import monte_carlo_frontier as F
    ka, kb = jax.random.split(key)
    a, ma = draw(policy, lang, prompts, M, ka)
    b, mb = draw(policy, lang, prompts, K, kb)
    P = gold_matrix(lang, prompts, a, ma, b, mb)
    w, w_a, w_b = P.mean(-1), P[..., : K // 2].mean(-1), P[..., K // 2:].mean(-1)
    upper = F.mc_frontier(w, lambdas)
    lower = F.mc_frontier(w_a, lambdas, eval_win_rates=w_b)
    half = F.mc_frontier(w[:, : M // 2], lambdas)  # self-normalization bias check (M/2 samples)
    bon = F.best_of_n_points(w, [n for n in ns if n <= M])
    asdict = lambda f: {k: np.asarray(v).tolist() for k, v in f._asdict().items()}  # noqa: E731
    return {"upper": asdict(upper), "lower": asdict(lower), "upper_half_samples": asdict(half),
            "best_of_n": asdict(bon), "M": M, "K": K, "X": int(prompts.shape[0]),
            "samples": (a, ma), "opponents": (b, mb), "P": P}


def frontier_at(fr: dict, kl, which: str = "upper") -> np.ndarray:
    """Frontier win rate at KL values (linear interpolation; NaN beyond its range). KL is nondecreasing in
    lambda; np.maximum.accumulate only removes rounding wiggles where it saturates (at log M per prompt)."""
    xp = np.maximum.accumulate(np.asarray(fr[which]["kl"], float))
    return np.interp(np.asarray(kl, float), xp, fr[which]["win_rate"], left=np.nan, right=np.nan)


def frontier_se_at(fr: dict, kl, which: str = "upper") -> np.ndarray:
    return np.interp(np.asarray(kl, float), np.maximum.accumulate(np.asarray(fr[which]["kl"], float)),
                     fr[which]["win_rate_se"])


def head_agreement(head, lang, prompts, a, ma, b, mb) -> float:
    """Fraction of pi_ref pairs (first sample vs first opponent per prompt) where the head's preferred
    response (both presentation orders averaged) is gold's."""
    from wind_jax.train.oracle import Tokens
    from wind_jax.train.tasks import head_prob_fn
    prob = head_prob_fn(head)
    pt = Tokens(prompts, np.ones_like(prompts, bool))
    x, y = Tokens(a[:, 0], ma[:, 0]), Tokens(b[:, 0], mb[:, 0])
    p_head = 0.5 * (np.asarray(prob(pt, x, y)) + 1.0 - np.asarray(prob(pt, y, x)))
    p_gold = np.asarray(lang.gold_preference(prompts, a[:, 0], ma[:, 0], b[:, 0], mb[:, 0]))
    keep = np.abs(p_gold - 0.5) > 1e-6
    return float(np.mean((p_head[keep] > 0.5) == (p_gold[keep] > 0.5)))


def strip(fr: dict) -> dict:
    return {k: v for k, v in fr.items() if k not in ("samples", "opponents", "P")}


# ------------------------------------------------------------------------------------------ curves
def point(records, fr: dict) -> dict:
    """Final gold win rate / KL of a run, its gap below the frontier bracket, and the above-frontier flag."""
    last = records[-1]
    kl, win = last["eval/kl_to_ref"], last["eval/win_rate_vs_ref"]
    se_w, se_k = last["eval/win_rate_vs_ref_stderr"], last["eval/kl_to_ref_stderr"]
    up, lo = float(frontier_at(fr, kl, "upper")), float(frontier_at(fr, kl, "lower"))
    # beyond the estimated frontier's last KL (about log M) the frontier is at least its last value
    floor = float(frontier_at(fr, min(kl, float(np.max(fr["upper"]["kl"]))), "upper")) - win
    dk = 0.02
    slope = float((frontier_at(fr, kl + dk) - frontier_at(fr, max(kl - dk, 0.0))) / (kl + dk - max(kl - dk, 0.0)))
    slope = slope if math.isfinite(slope) else 0.0
    margin = 2.0 * math.sqrt(se_w**2 + float(frontier_se_at(fr, kl)) ** 2 + (slope * se_k) ** 2)
    return {"kl": kl, "win_rate": win, "win_rate_se": se_w, "kl_se": se_k, "gap_upper": up - win,
            "gap_lower": lo - win, "gap_floor": floor, "above_frontier": bool(math.isfinite(up) and win - up > margin),
            "margin": margin, "queries": last["counts/queries"], "samples": last["counts/samples"],
            "sec_per_iter": _warm_seconds(records),
            "trajectory": [{"iteration": r["iteration"], "queries": r["counts/queries"], "samples": r["counts/samples"],
                            "kl": r["eval/kl_to_ref"], "win_rate": r["eval/win_rate_vs_ref"]} for r in records]}


def _warm_seconds(records) -> float:
    """Median wall seconds of a warm outer iteration (iterations >= 2; iteration 1 compiles); NaN if none."""
    ws = [r["time/iteration"] for r in records if r.get("iteration", 0) >= 2 and "time/iteration" in r]
    return float(np.median(ws)) if ws else float("nan")


def curve_gaps(points: list[dict], fr: dict, targets=KL_TARGETS) -> dict:
    """One seed's curve (its sweep points sorted by KL, linearly interpolated) at each KL target it reaches:
    {target: {"win_rate", "gap_upper", "gap_lower"}} (absent where the curve does not reach the target)."""
    pts = sorted(points, key=lambda p: p["kl"])
    ks, ws = np.array([p["kl"] for p in pts]), np.array([p["win_rate"] for p in pts])
    out = {}
    for t in targets:
        if ks.size and ks[0] <= t <= ks[-1]:
            w = float(np.interp(t, ks, ws))
            out[str(t)] = {"win_rate": w, "gap_upper": float(frontier_at(fr, t, "upper")) - w,
                           "gap_lower": float(frontier_at(fr, t, "lower")) - w}
    return out


RESOURCES = ("queries", "samples", "seconds")


def at_budget(p: dict, resource: str, budget: float, sec_per_iter: float = float("nan")) -> dict:
    """The run's evaluation after its last iteration whose cumulative `resource` is <= budget (iteration 0 is
    pi_ref itself): {"iteration", "kl", "win_rate"}. "seconds" = iterations x sec_per_iter."""
    cost = (lambda t: t["iteration"] * sec_per_iter) if resource == "seconds" else (lambda t: t[resource])  # noqa: E731
    ok = [t for t in p["trajectory"] if cost(t) <= budget + 1e-9]
    t = max(ok, key=lambda t: t["iteration"]) if ok else {"iteration": 0, "kl": 0.0, "win_rate": 0.5}
    return {k: t[k] for k in ("iteration", "kl", "win_rate")}


def cost_to_reach(points: list[dict], win: float, kl_budget: float, resource: str = "queries",
                  sec_per_iter: float = float("nan")) -> float:
    """Fewest units of `resource` after which some run of the sweep has gold win rate >= win at KL <= kl_budget
    (its per-iteration trajectory); inf if none does. resource "queries" / "samples": the run's counts;
    "seconds": iterations x sec_per_iter (the method's median warm seconds per iteration, compile excluded)."""
    if resource not in RESOURCES:
        raise ValueError(f"resource must be one of {RESOURCES}, got {resource!r}")
    best = math.inf
    for p in points:
        for t in p["trajectory"]:
            if t["win_rate"] >= win and t["kl"] <= kl_budget:
                best = min(best, t["iteration"] * sec_per_iter if resource == "seconds" else t[resource])
                break
    return best


def _run_name(method: str, label: str, lr: float, steps: int, default_steps: int) -> str:
    """Run directory name; the steps per iteration appear only when they differ from the size's default."""
    k = "" if steps == default_steps else f"_k{steps}"
    return f"{method}_{label}_lr{lr:g}{k}".replace(" ", "_").replace("=", "")


def hp_key(hp: tuple[float, int]) -> str:
    return f"lr={hp[0]:g} k={hp[1]}"


def choose_hp(per_hp: dict) -> object:
    """The hyperparameters (lr, steps) whose point lies closest below the frontier (gap_floor: the gap, or its
    lower bound beyond the frontier's KL range), among points with KL >= 0.1; if none moves that far, the
    hyperparameters with the largest KL."""
    moving = {hp: p for hp, p in per_hp.items() if p["kl"] >= 0.1}
    if moving:
        return min(moving, key=lambda hp: moving[hp]["gap_floor"])
    return max(per_hp, key=lambda hp: per_hp[hp]["kl"])


# ------------------------------------------------------------------------------- non-transitivity
def exploitability(policy, lang, prompts, key, M: int, kl_budget: float) -> dict:
    """Gold win rate against pi_T of the tilt of pi_T by its own gold win rates at KL = kl_budget (both
    Monte Carlo curves of self_frontier; lower is better)."""
    fr = self_frontier(policy, lang, prompts, key, M, M)
    return {"upper": float(frontier_at(fr, kl_budget, "upper")), "lower": float(frontier_at(fr, kl_budget, "lower")),
            "se": float(frontier_se_at(fr, kl_budget))}


# ------------------------------------------------------------------------------------------ running
def finished_records(run_dir: str, num_iterations: int) -> list[dict] | None:
    """The iteration records of a finished run from its metrics.jsonl (None when absent or unfinished)."""
    import json
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        recs = [r for r in map(json.loads, filter(str.strip, f)) if r.get("kind") == "iteration"]
    return recs if recs and recs[-1].get("iteration") == num_iterations else None


def _run(root, method, seed, size, setup, hp, overrides, lang_over=None, keep_policy=False, sub="runs",
         label="", reuse_only=False, budget="queries"):
    """One run at hp = (learning rate, steps per iteration) and an equal `budget` per iteration ("queries" or
    "samples", benchmarks/llm_results.py), reused when finished unless its final policy is needed; None if
    reuse_only and unfinished. A samples-budget run that has as many prompts as the queries-budget run (WIND,
    DPO: 2 samples, 1 query per prompt) is that run."""
    lr, steps = hp
    n = int(overrides.get("num_samples", 0))
    prompts = R.prompts_for_budget(method, budget, size.base_prompts, n)
    if budget != "queries" and prompts != R.prompts_for_budget(method, "queries", size.base_prompts, n):
        sub = f"{sub}_{budget}"
    run_dir = os.path.join(root, sub, _run_name(method, label, lr, steps, size.steps_per_iteration), f"seed{seed}")
    if not keep_policy:
        done = finished_records(run_dir, size.num_iterations)
        if done is not None or reuse_only:
            return done
    over = {**overrides, "learning_rate": lr, "steps_per_iteration": steps}
    go = functools.partial(R.run_one, run_dir, method, seed, size, prompts, setup, loop_overrides=over,
                           language_overrides=lang_over, keep_policy=keep_policy)
    from wind_jax.train.checkpoint import CheckpointConfigError
    try:
        return go()
    except CheckpointConfigError as e:  # a run dir left by an older version of the config: run it again
        print(f"[llm_frontier] {run_dir}: {str(e)[:160]}...; running it again from scratch")
        return go(fresh=True)


def claim(root: str, method: str) -> bool:
    """Claim `method` for this process (an exclusively created file <root>/claims/<method>): --stage=runs
    processes started side by side each take whole methods, so no two write the same run."""
    os.makedirs(os.path.join(root, "claims"), exist_ok=True)
    try:
        fd = os.open(os.path.join(root, "claims", method), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def reference_frontier(root: str, seed: int, size, plan: "Plan", lang_over=None, key_offset: int = 1000):
    """(frontier without the raw draws, set-up dir) of `seed`, cached in <root>/frontiers/seed<seed>.json.
    At plan.stage == "runs" it waits for a --stage=setup process to write that file instead of making it."""
    import json

    import jax
    path = os.path.join(root, "frontiers", f"seed{seed}.json")
    while plan.stage == "runs" and not os.path.exists(path):
        time.sleep(10)
    setup = R.prepare_setup(root, seed, size, lang_over)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f), setup
    c, lang, ref, head, info = R.load_setup(root, seed, size, lang_over)
    prompts = eval_prompts(lang, seed, size.eval_prompts)
    fr = self_frontier(ref, lang, prompts, jax.random.key(key_offset + seed), plan.ref_samples, plan.ref_opponents)
    fr["head_accuracy_reference_process"] = info["head_accuracy"]
    fr["head_agreement_pi_ref"] = head_agreement(head, lang, prompts, *fr["samples"], *fr["opponents"])
    fr = strip(fr)
    R.write_json(path, fr)
    return fr, setup


def run_comparison(out_dir: str, plan: Plan = Plan(), log=print) -> dict:
    """Run (or reuse) every stage of the module docstring; returns the results (also written to disk)."""
    import jax
    size = SIZES[plan.size]
    root = os.path.join(os.path.abspath(out_dir), plan.size)
    for m in plan.methods:
        if m not in SWEEPS:
            raise ValueError(f"methods: {m!r} has no sweep; known: {sorted(SWEEPS)}")
    start, load_start = time.time(), R.load_note()
    log(f"[llm_frontier] {plan}; {size}; {load_start}")
    res = {"plan": dataclasses.asdict(plan), "size_fields": size.__dict__, "started": R.stamp(),
           "load_at_start": load_start, "sweeps": {m: [lab for lab, _ in SWEEPS[m]] for m in plan.methods},
           "kl_targets": KL_TARGETS, "nontransitive_language": NONTRANSITIVE}

    # 1. set-ups and frontiers
    frontiers, setups = {}, {}

    def frontier_of(s):  # set-up and frontier of seed s, made (or read) when first needed
        if s not in frontiers:
            t = time.time()
            frontiers[s], setups[s] = reference_frontier(root, s, size, plan)
            fr = frontiers[s]
            log(f"[llm_frontier] seed {s}: set-up + frontier {time.time() - t:.0f} s; frontier win at KL 0.5/1/2 "
                f"{frontier_at(fr, [0.5, 1.0, 2.0]).round(3).tolist()}; head agrees with gold on "
                f"{fr['head_agreement_pi_ref']:.3f} of pi_ref pairs")
        return frontiers[s]

    if plan.stage != "runs":
        for s in (plan.heldout_seed, *plan.seeds):
            frontier_of(s)
    if plan.nontransitive_seeds and plan.stage != "runs":
        nontransitive_setups(root, plan, size, log)
    if plan.stage == "setup":
        return {"frontiers": frontiers}

    # 2. learning rate x steps per iteration per method on the held-out seed, the same grid for each
    chosen, lr_search = {}, {}
    grid = [(lr, k) for k in plan.steps for lr in plan.lrs]
    for m in plan.methods:
        if plan.stage == "runs" and not claim(root, m):
            log(f"[llm_frontier] {m}: claimed by another --stage=runs process; skipped here")
            continue
        label, over = middle(m)
        per_hp = {}
        for hp in grid:
            fr = frontier_of(plan.heldout_seed)
            recs = _run(root, m, plan.heldout_seed, size, setups[plan.heldout_seed], hp, over, label=label,
                        reuse_only=plan.reuse_only)
            if recs is not None:
                per_hp[hp] = point(recs, fr)
        if len(per_hp) < len(grid):
            log(f"[llm_frontier] {m}: hyperparameter search unfinished; left out")
            continue
        chosen[m] = choose_hp(per_hp)
        lr_search[m] = {"at": label, "points": {hp_key(hp): {k: v for k, v in p.items() if k != "trajectory"}
                                                for hp, p in per_hp.items()}, "chosen": hp_key(chosen[m])}
        log(f"[llm_frontier] hp {m} at {label}: " + ", ".join(
            f"{hp_key(hp)}: kl {p['kl']:.2f} win {p['win_rate']:.3f} gap {p['gap_upper']:+.3f}"
            for hp, p in per_hp.items()) + f" -> {hp_key(chosen[m])}")
    res["lr_search"] = lr_search

    # 2b. sensitivity of the choice: every grid configuration's whole sweep on the held-out seed, its curve's
    # gaps at matched KL (what a matched-KL selection rule would compare)
    if plan.hp_curves:
        res["hp_curves"] = {}
        for m in chosen:
            per = {}
            for hp in grid:
                pts = [_run(root, m, plan.heldout_seed, size, setups[plan.heldout_seed], hp, over, label=label,
                            reuse_only=plan.reuse_only) for label, over in SWEEPS[m]]
                pts = [point(r, frontiers[plan.heldout_seed]) for r in pts if r is not None]
                if len(pts) == len(SWEEPS[m]):
                    per[hp_key(hp)] = {"gaps": {t: g["gap_upper"] for t, g in
                                                curve_gaps(pts, frontiers[plan.heldout_seed]).items()},
                                       "kl_range": [min(p["kl"] for p in pts), max(p["kl"] for p in pts)]}
            res["hp_curves"][m] = per

    # 3. the sweeps, every seed, at an equal query budget (and, for plan.budgets, other equal budgets)
    for budget in plan.budgets:
        sweep = {}
        for m in chosen:
            sweep[m] = {}
            for label, over in SWEEPS[m]:
                pts = {}
                for s in plan.seeds:
                    t = time.time()
                    fr = frontier_of(s)
                    recs = _run(root, m, s, size, setups[s], chosen[m], over, label=label,
                                reuse_only=plan.reuse_only, budget=budget)
                    if recs is None:
                        continue
                    pts[str(s)] = p = point(recs, fr)
                    flag = "  ABOVE THE FRONTIER" if p["above_frontier"] else ""
                    log(f"[llm_frontier] {budget} {m:15s} {label:14s} seed {s}: kl {p['kl']:.3f} win "
                        f"{p['win_rate']:.3f} gap {p['gap_upper']:+.3f} / {p['gap_lower']:+.3f} "
                        f"({time.time() - t:.0f} s){flag}")
                if pts:
                    sweep[m][label] = pts
            if not sweep[m]:
                log(f"[llm_frontier] {m}: no finished {budget} sweep run; left out")
                del sweep[m]
        res["sweep" if budget == "queries" else f"sweep_{budget}"] = sweep
    res["chosen"] = {m: hp_key(hp) for m, hp in chosen.items()}
    res["frontiers"] = {str(s): f for s, f in frontiers.items()}

    # 4. non-transitive variant
    if plan.nontransitive_seeds:
        res["nontransitive"] = run_nontransitive(root, plan, size, chosen, log)
    if plan.stage == "runs":
        return res

    # 5. timing: every method's CENTER point once more on the held-out seed, one after another in this process
    res["timing"] = {"load_at_start": R.load_note()}
    for m in chosen:
        label, over = middle(m)
        recs = _run(root, m, plan.heldout_seed, size, setups[plan.heldout_seed], chosen[m], over, sub="timing",
                    label=label, reuse_only=plan.reuse_only)
        if recs is not None:
            res["timing"][m] = _warm_seconds(recs)
    res["timing"]["load_at_end"] = R.load_note()
    # equal wall time: the fastest method's whole run (num_iterations x its warm seconds per iteration)
    secs = [v for k, v in res["timing"].items() if k in chosen and math.isfinite(v)]
    res["second_budget"] = size.num_iterations * min(secs) if secs else float("nan")
    res["summary"] = summarize(res, plan)
    if "sweep_samples" in res:
        res["summary_samples"] = summarize(res, plan, "sweep_samples")
    res["wall_seconds"] = time.time() - start
    res["load_at_end"] = R.load_note()
    R.write_json(os.path.join(root, "comparison.json"), res)
    md = format_results(res)
    tmp = os.path.join(root, f"comparison.md.tmp{os.getpid()}")  # moved into place: never half a table
    with open(tmp, "w") as f:
        f.write(md)
    os.replace(tmp, os.path.join(root, "comparison.md"))
    plot_curves(res, os.path.join(root, "curves.png"))
    if res.get("sweep_samples"):
        plot_curves(res, os.path.join(root, "curves_samples.png"), "sweep_samples")
    if res.get("nontransitive", {}).get("seeds"):
        plot_nontransitive(res, os.path.join(root, "nontransitive.png"))
    log(md)
    return res


def summarize(res: dict, plan: Plan, key: str = "sweep") -> dict:
    """Per method of res[key]: gaps at each KL target (mean, sd over the seeds whose curve reaches it),
    above-frontier flags, queries / samples / seconds to reach each win target at the KL budget, per-run counts."""
    out = {}
    for m, by_label in res[key].items():
        gaps, reach = {}, {r: {} for r in RESOURCES}
        allp = [p for pts in by_label.values() for p in pts.values()]
        sec = res.get("timing", {}).get(m, float("nan"))
        flags = [(lab, s, p["kl"], p["win_rate"], p["margin"]) for lab, pts in by_label.items()
                 for s, p in pts.items() if p["above_frontier"]]
        time_gaps = {}
        for s in map(str, plan.seeds):
            pts = [by_label[lab][s] for lab in by_label if s in by_label[lab]]
            for t, g in curve_gaps(pts, res["frontiers"][s]).items():
                gaps.setdefault(t, []).append(g)
            cut = [at_budget(p, "seconds", res["second_budget"], sec) for p in pts]
            for t, g in curve_gaps(cut, res["frontiers"][s]).items():
                time_gaps.setdefault(t, []).append(g)
            for r in RESOURCES:
                for wt in plan.win_targets:
                    reach[r].setdefault(str(wt), []).append(cost_to_reach(pts, wt, plan.kl_budget, r, sec))
        out[m] = {
            "gaps": {t: {"n": len(v), **{k: R.mean_spread([g[k] for g in v]) for k in ("gap_upper", "gap_lower",
                                                                                      "win_rate")}}
                     for t, v in gaps.items()},
            "to_reach": reach, "above_frontier": flags,
            "equal_time_gaps": {t: R.mean_spread([g["gap_upper"] for g in v]) for t, v in time_gaps.items()},
            "queries_per_run": R.mean_spread([p["queries"] for p in allp]),
            "samples_per_run": R.mean_spread([p["samples"] for p in allp]),
            "sec_per_iter": sec,
            "kl_range": [min(p["kl"] for p in allp), max(p["kl"] for p in allp)]}
    return out


def nontransitive_setups(root, plan: Plan, size, log) -> dict:
    """Set-up and frontier of each non-transitive seed (cached)."""
    nroot = os.path.join(root, "nontransitive")
    out = {}
    for s in plan.nontransitive_seeds:
        t = time.time()
        out[s] = reference_frontier(nroot, s, size, plan, NONTRANSITIVE, key_offset=2000)
        log(f"[llm_frontier] non-transitive seed {s}: set-up + frontier {time.time() - t:.0f} s")
    return out


def nontransitive_method(root, plan: Plan, size, s: int, m: str, hp, log, label: str | None = None) -> dict:
    """One method's final policy on the non-transitive variant at one sweep point (default its CENTER): point,
    exploitability proxy and, at the CENTER, its tournament draws (saved as npz); cached in
    <root>/nontransitive/results/ (recomputed when the cached hyperparameters differ)."""
    import json

    import jax
    nroot = os.path.join(root, "nontransitive")
    label = label or (CENTER[m] if m != "pi_ref" else "-")
    center = m == "pi_ref" or label == CENTER[m]
    name = f"seed{s}_{m}" if center else _run_name(f"seed{s}_{m}", label, *hp, size.steps_per_iteration)
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
        recs, pol = _run(nroot, m, s, size, setup, hp, over, NONTRANSITIVE, keep_policy=True, label=label)
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


def run_nontransitive(root, plan: Plan, size, chosen, log) -> dict:
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
        prompts = eval_prompts(lang, s, size.eval_prompts)
        draws = {}
        for m in rows:
            z = np.load(os.path.join(nroot, "results", f"seed{s}_{m}_draws.npz"))
            draws[m] = (z["tokens"], z["mask"])
        names = list(rows)
        T = np.full((len(names), len(names)), 0.5)
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                if i < j:
                    T[i, j] = float(gold_matrix(lang, prompts, *draws[a], *draws[b]).mean())
                    T[j, i] = 1.0 - T[i, j]
        out["seeds"][str(s)] = {"frontier": frs, "head_agreement_pi_ref": frs["head_agreement_pi_ref"],
                                "head_accuracy_reference_process": frs["head_accuracy_reference_process"],
                                "methods": rows, "tournament": {"names": names, "matrix": T.tolist()}}
    return out


# ------------------------------------------------------------------------------------------ output
def _ms(d, k="gap_upper", f="{:+.3f}"):
    s = d[k]
    return (f + " ± {:.3f}").format(s["mean"], s["sd"]) + f" (n={s['n']})"


def format_results(res: dict) -> str:
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
    out.append("\nGap below the frontier at matched KL (upper-curve gap, mean ± sd over seeds whose curve reaches "
               "that KL; positive = below), equal preference queries per iteration\n")
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
        out.append(f"| {m} | " + " | ".join(f"{g[str(t)]['mean']:+.3f} ± {g[str(t)]['sd']:.3f} (n={g[str(t)]['n']})"
                                           if str(t) in g else "not reached" for t in KL_TARGETS) + " |")
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
        out.append(f"\nNon-transitive variant {res['nontransitive_language']}: exploitability proxy = gold win "
                   f"rate vs pi_T of pi_T's best tilt at KL {plan['exploit_kl']:g} (upper / lower; lower is "
                   "better); win / KL vs pi_ref; gap below its frontier\n")
        for s, d in nt["seeds"].items():
            out.append(f"seed {s}: head agrees with gold on {d['head_agreement_pi_ref']:.3f} of pi_ref pairs "
                       f"({d['head_accuracy_reference_process']:.3f} on reference-process pairs)\n")
            out.append("| policy | sweep point | KL | win vs pi_ref | gap | exploitability | mean tournament score |")
            out.append("|---|---|---|---|---|---|---|")
            T = np.array(d["tournament"]["matrix"])
            score = dict(zip(d["tournament"]["names"], (T.sum(1) - 0.5) / max(len(T) - 1, 1)))
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
    return "\n".join(out) + "\n"


def nontransitive_scores(d: dict) -> dict:
    """Mean tournament score of each policy (its mean P(beats) over the other policies)."""
    T = np.array(d["tournament"]["matrix"])
    return dict(zip(d["tournament"]["names"], (T.sum(1) - 0.5) / max(len(T) - 1, 1)))


_COLORS = {"wind_sq": "tab:blue", "wind_sq_offset": "tab:cyan", "wind_kl": "navy", "wind_nce": "tab:pink",
           "sppo": "tab:orange", "sppo_beta": "tab:brown", "dpo": "tab:red", "jbond": "tab:purple",
           "bon_distill": "tab:green", "bonbon": "tab:olive"}


def plot_curves(res: dict, path: str, key: str = "sweep") -> str:
    """One panel per seed: frontier bracket (band), best-of-n points, each method's sweep curve (res[key])."""
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
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlim(0, max(4.0, max(p["kl"] for by in res[key].values() for pts in by.values()
                                    for p in pts.values()) * 1.1))
        ax.axhline(0.5, color="k", lw=0.6, ls=":")
        ax.set_xlabel("KL($\\pi_T$ ‖ $\\pi_{ref}$)")
        ax.set_ylabel("gold win rate vs $\\pi_{ref}$")
        budget = "sample" if key == "sweep_samples" else "query"
        ax.set_title(f"seed {s}: equal {budget} budget, T={res['size_fields']['num_iterations']}")
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
    a1.bar(range(len(names)), ex.mean(0), yerr=ex.std(0) if len(ex) > 1 else None,
           color=[_COLORS.get(m, "tab:gray") for m in names], capsize=3)
    a1.axhline(0.5, color="k", lw=0.6, ls=":")
    a1.set_ylim(0.45, max(0.6, ex.max() + 0.01))
    a1.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    a1.set_ylabel(f"best-response win rate vs $\\pi_T$ at KL {res['plan']['exploit_kl']:g} (lower = better)")
    a1.set_title(f"exploitability proxy, non-transitive task ({len(ex)} seeds)")
    for s, sw in list(res["nontransitive"].get("sweep", {}).items())[:1]:
        for m, dm in sw.items():
            pts = sorted((p["kl"], p["exploitability"]["upper"]) for p in dm["points"])
            a3.plot(*zip(*pts), "o-", color=_COLORS.get(m), ms=3.5, lw=1.1, label=m)
        if s in nt:
            a3.plot([0.0], [nt[s]["methods"]["pi_ref"]["exploitability"]["upper"]], "k*", ms=9, label="pi_ref")
        a3.set_xscale("symlog", linthresh=0.1)
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


def recheck(out_dir: str, overrides: dict, plan: Plan = Plan(), log=print) -> dict:
    """The equal-query sweep of each method in `overrides` ({method: (lr, steps)}) on plan.seeds at the given
    hyperparameters instead of the chosen ones (set-ups and frontiers must exist): its gaps at matched KL,
    mean ± sd over seeds, printed and written to <out_dir>/<size>/recheck.json. For checking how much a
    result depends on the selection rule."""
    size = SIZES[plan.size]
    root = os.path.join(os.path.abspath(out_dir), plan.size)
    out = {}
    for m, hp in overrides.items():
        gaps = {}
        for s in plan.seeds:
            fr, setup = reference_frontier(root, s, size, plan)
            pts = [point(_run(root, m, s, size, setup, hp, over, label=label), fr) for label, over in SWEEPS[m]]
            for t, g in curve_gaps(pts, fr).items():
                gaps.setdefault(t, []).append(g["gap_upper"])
        out[m] = {"hp": hp_key(hp), "gaps": {t: R.mean_spread(v) for t, v in gaps.items()}}
        log(f"[llm_frontier] recheck {m} at {hp_key(hp)}: " + ", ".join(
            f"KL {t}: {d['mean']:+.3f} ± {d['sd']:.3f} (n={d['n']})" for t, d in out[m]["gaps"].items()))
    R.write_json(os.path.join(root, "recheck.json"), out)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out_dir", default="outputs/llm_frontier")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one seed, two methods (a smoke test)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default=",".join(SWEEPS))
    p.add_argument("--nontransitive_seeds", default="0,1,2")
    p.add_argument("--nontransitive_sweep_seeds", default="0,1,2",
                   help="non-transitive seeds on which every sweep point runs (exploitability at matched KL)")
    p.add_argument("--heldout_seed", type=int, default=100)
    p.add_argument("--recheck", default="", help="method:lr:steps,... rerun these methods' equal-query sweeps at "
                                                 "other hyperparameters and print their gaps (after a comparison)")
    p.add_argument("--reuse_only", action="store_true", help="tables from finished runs only; run nothing new")
    p.add_argument("--stage", default="all", choices=("setup", "runs", "all"),
                   help="setup: set-ups and frontiers; runs: also the lr search and sweeps of --methods (run "
                        "several such processes side by side after one setup); all: everything + tables")
    a = p.parse_args(argv)
    ints = lambda s: tuple(int(v) for v in s.split(",") if v.strip())  # noqa: E731
    plan = Plan(seeds=ints(a.seeds), methods=tuple(m.strip() for m in a.methods.split(",") if m.strip()),
                nontransitive_seeds=ints(a.nontransitive_seeds), stage=a.stage,
                nontransitive_sweep_seeds=ints(a.nontransitive_sweep_seeds),
                heldout_seed=a.heldout_seed, reuse_only=a.reuse_only)
    if a.quick:
        plan = dataclasses.replace(plan, size="quick", seeds=(0,), heldout_seed=1, lrs=(1e-3, 3e-3), steps=(2, 4),
                                   ref_samples=16, ref_opponents=8, exploit_samples=8, nontransitive_seeds=(0,),
                                   nontransitive_sweep_seeds=(0,), tournament_samples=2)
    if not plan.seeds:
        raise ValueError("--seeds: at least one seed")
    if a.recheck:
        items = [item.split(":") for item in a.recheck.split(",") if item.strip()]
        if any(len(i) != 3 or i[0] not in SWEEPS for i in items):
            raise ValueError(f"--recheck: expected method:lr:steps items with a known method, got {a.recheck!r}")
        recheck(a.out_dir, {m: (float(lr), int(k)) for m, lr, k in items}, plan)
        return
    run_comparison(a.out_dir, plan)


if __name__ == "__main__":
    main()

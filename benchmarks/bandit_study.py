"""Bandit study (issue 13): every method with its own learning rate x inner steps chosen on HELD-OUT games,
then evaluated on 5 other games x 5 seeds per setting; queries to reach several accuracies with confidence
intervals, the exact-WIND curve and the gap below the optimal win-rate / KL frontier as references.

    python -m benchmarks.bandit_study --out_dir docs/figures/bandit        # about 15-20 min on 2 CPU cores
    python -m benchmarks.bandit_study --quick --out_dir /tmp/bandit_quick  # smoke run (1 setting, 2 methods)

Protocol (numbers are flags):
  * settings: {Bradley-Terry, non-transitive} x {realizable, misspecified} log-linear policies (X = 8 prompts,
    Y = 16 responses; the game, pi_ref and features vary per game), beta = 0.2, eta = 1.
  * budget: 240 preference queries per outer iteration for every method (prompts per iteration = 240 / the
    method's queries per prompt), 30 iterations; Adam.
  * selection: for every (method, setting) the same grid, learning rate {0.005, 0.01, 0.02, 0.05, 0.15} x
    inner steps {10, 40} (10 configurations), run on 2 held-out games x 5 seeds; the configuration with the smallest mean
    over iterations of KL(pi*_beta || pi_t) - floor is kept (area under the curve: speed and accuracy).
    The same criterion for every method, also those that aim at another fixed point (sppo, jbond, bonbon,
    dpo): the study measures distance to pi*_beta; their frontier gap is reported next to it.
  * evaluation: the chosen configuration on 5 other games x 5 seeds (25 runs). For eps in {0.2, 0.1, 0.05,
    0.02}: per run the first query count with KL* - floor <= eps ("at start" when pi_ref already is); table:
    median over the 25 runs [90 % cluster-bootstrap CI over games] and how many runs reached it.
  * floor: min_theta KL(pi*_beta || pi_theta) (0 for the realizable class; fitted for the misspecified one).
  * references: exact WIND (tabular, no sampling, same eta and beta): iterations to reach eps; and the gap
    below the exact frontier (wind_jax.games.frontier_win_rate_at_kl) of the final policies and of pi*_beta.
  * wind_nce batch dependence (--part=nce_batch): wind_nce with and without its bounded (pseudo-count)
    target at 160 / 640 / 2,560 prompts per iteration (320 / 1,280 / 5,120 loss rows), lr 0.05, 40 inner
    steps, on the 5 evaluation games x 5 seeds of non-transitive / realizable: final KL* and starved mass.
One compiled program per method (lax.scan over iterations, vmap over seeds; learning rate and inner steps
are arguments, games and feature tables too), cheap XLA:CPU codegen.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wind_jax import games
from wind_jax.bandit import algorithms
from wind_jax.bandit.settings import equilibrium, make_setting, use_cheap_codegen

SETTINGS = ("bradley_terry/realizable", "bradley_terry/misspecified", "nontransitive/realizable",
            "nontransitive/misspecified")
EPS = (0.2, 0.1, 0.05, 0.02)
CHEAP = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}  # per-program codegen


def study_methods(beta: float, eta: float) -> dict[str, algorithms.Method]:
    """The compared methods: make_methods' list plus wind_sq_offset with b reset every iteration (the
    starved-mass failure), its log-normalizer fix, and wind_nce with a bounded (pseudo-count) target."""
    ms = algorithms.make_methods(beta, eta)
    extra = [algorithms.with_offset(ms["wind_sq_offset"], "reset"),
             algorithms.with_offset(ms["wind_sq_offset"], "log_normalizer"),
             algorithms.with_offset(ms["wind_nce"], "learned", pseudo_count=0.5)]
    return {**ms, **{m.name: m for m in extra}}


def first_reach(curve: np.ndarray, queries: np.ndarray, eps: float) -> float:
    """First query count with curve <= eps (0 = at start), inf if never."""
    hit = np.nonzero(curve <= eps)[0]
    return float(queries[hit[0]]) if hit.size else float("inf")


def median_ci(values: np.ndarray, rng: np.random.Generator, reps: int = 2000) -> tuple[float, float, float]:
    """Median over all runs of values [G, S] and a 90 % bootstrap CI resampling games (clusters)."""
    G = values.shape[0]
    meds = np.sort([np.median(values[rng.integers(0, G, G)].ravel()) for _ in range(reps)])
    lo, hi = meds[int(0.05 * (reps - 1))], meds[int(np.ceil(0.95 * (reps - 1)))]  # order statistics: inf-safe
    return float(np.median(values.ravel())), float(lo), float(hi)


class Game:
    """One game of a setting: P, policy, theta_ref, pi_ref (float64), pi*_beta, floor, exact-WIND curve."""

    def __init__(self, setting, game_id, cfg, floor_fn):
        g, pk = setting.split("/")
        key = jax.random.fold_in(jax.random.key(cfg.seed), game_id)
        self.P, self.policy, self.theta_ref = make_setting(g, pk, key, cfg.X, cfg.Y, cfg.preference_scale,
                                                           cfg.misspecified_dim)
        self.pi_ref, pi_star64 = equilibrium(self.policy, self.theta_ref, self.P, cfg.beta)
        self.pi_star = jnp.asarray(pi_star64, jnp.float32)
        self.floor = 0.0 if pk == "realizable" else max(0.0, float(
            floor_fn(self.policy, self.theta_ref, self.pi_star, num_steps=cfg.floor_steps)[1]))
        traj = np.asarray(games.exact_wind(self.pi_ref.astype(np.float32), self.P, cfg.beta, cfg.eta,
                                           cfg.num_outer, return_trajectory=True), np.float64)
        self.exact_wind_kl = np.mean(np.sum(np.where(pi_star64 > 0, pi_star64 * (
            np.log(np.maximum(pi_star64, 1e-300)) - np.log(np.maximum(traj, 1e-300))), 0.0), -1), -1)
        pi_ref32 = jnp.asarray(self.pi_ref, jnp.float32)
        star_kl = float(np.mean(games.kl(self.pi_star, pi_ref32 / pi_ref32.sum(-1, keepdims=True))))
        self.star_gap = float(games.frontier_win_rate_at_kl(pi_ref32, self.P, [star_kl])[0]
                              - games.policy_win_rate(self.pi_star, pi_ref32, self.P))
        self.states = jax.vmap(lambda k: algorithms.init_state(self.theta_ref, cfg.X, k))(
            jax.random.split(jax.random.fold_in(key, 1), cfg.num_seeds))

    def frontier_gap(self, kl, win):
        """Exact frontier win rate at each KL minus the achieved win rate (arrays of equal shape)."""
        kl = np.asarray(kl, np.float32)
        f = np.asarray(games.frontier_win_rate_at_kl(jnp.asarray(self.pi_ref, jnp.float32), self.P,
                                                     np.maximum(kl.ravel(), 0.0)))
        return f.reshape(kl.shape) - np.asarray(win)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out_dir", default="outputs/bandit_study")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 setting, 2 methods, 2 configs, 2 games; the grid part only unless --part")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--methods", default="", help="comma-separated subset (default: all)")
    p.add_argument("--learning_rates", default="0.005,0.01,0.02,0.05,0.15")
    p.add_argument("--inner_steps", default="10,40")
    p.add_argument("--num_games", type=int, default=5)
    p.add_argument("--num_heldout", type=int, default=2)
    p.add_argument("--num_seeds", type=int, default=5)
    p.add_argument("--num_outer", type=int, default=30)
    p.add_argument("--budget_per_iter", type=int, default=240)
    p.add_argument("--beta", type=float, default=0.2)
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--preference_scale", type=float, default=2.0)
    p.add_argument("--misspecified_dim", type=int, default=32)
    p.add_argument("--floor_steps", type=int, default=3000)
    p.add_argument("--X", type=int, default=8)
    p.add_argument("--Y", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--part", choices=["all", "grid", "nce_batch"], default="all")
    p.add_argument("--nce_prompts", default="160,640,2560", help="prompts per iteration of the nce_batch part")
    cfg = p.parse_args(argv)
    use_cheap_codegen()
    if cfg.quick:
        cfg.settings, cfg.methods = "nontransitive/realizable", cfg.methods or "wind_sq_offset,sppo_beta"
        cfg.learning_rates, cfg.inner_steps, cfg.num_games, cfg.num_heldout = "0.05", "10,40", 2, 1
        cfg.num_seeds, cfg.num_outer = 3, 10
        cfg.part = "grid" if cfg.part == "all" else cfg.part
    settings = cfg.settings.split(",")
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        raise ValueError(f"--settings: unknown {bad}; known: {SETTINGS}")
    all_methods = study_methods(cfg.beta, cfg.eta)
    names = cfg.methods.split(",") if cfg.methods else list(all_methods)
    if [n for n in names if n not in all_methods]:
        raise ValueError(f"--methods: unknown {[n for n in names if n not in all_methods]}; known: {list(all_methods)}")
    lrs = [float(v) for v in cfg.learning_rates.split(",")]
    inners = [int(v) for v in cfg.inner_steps.split(",")]
    grid = [(lr, k) for lr in lrs for k in inners]
    os.makedirs(cfg.out_dir, exist_ok=True)
    t0 = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", flush=True)  # noqa: E731

    floor_fn = jax.jit(algorithms.best_in_class_kl, static_argnames=("num_steps",))
    if cfg.part in ("all", "nce_batch"):
        nce_batch_dependence(cfg, all_methods, floor_fn, log)
    if cfg.part == "nce_batch":
        return
    games_of = {}
    for s in settings:
        games_of[s] = {"heldout": [Game(s, 1000 + i, cfg, floor_fn) for i in range(cfg.num_heldout)],
                       "eval": [Game(s, i, cfg, floor_fn) for i in range(cfg.num_games)]}
    log(f"{len(settings)} settings x {cfg.num_heldout} + {cfg.num_games} games set up")

    record, T = jnp.asarray(True), jnp.asarray(cfg.num_outer, jnp.int32)
    results = {"config": vars(cfg), "grid": grid, "eps": EPS, "settings": {}}
    rng = np.random.default_rng(0)
    for mname in names:
        m = all_methods[mname]
        per_prompt = m.queries_per_prompt
        batch = max(1, cfg.budget_per_iter // per_prompt)
        run = jax.jit(algorithms.make_run(m, batch, optax.adam, max(inners), cfg.num_outer), compiler_options=CHEAP)

        def go(game, lr, k):
            mp = algorithms.method_params(m, learning_rate=lr, num_inner=k)
            return jax.device_get(run(game.policy, mp, game.states, game.P, game.theta_ref, game.pi_star, record, T))

        for s in settings:
            score = {}
            for lr, k in grid:
                score[(lr, k)] = float(np.mean([np.mean(np.asarray(o.metrics["kl_to_equilibrium"]) - g.floor)
                                                for g in games_of[s]["heldout"] for o in [go(g, lr, k)]]))
            lr, k = min(score, key=score.get)
            outs = [go(g, lr, k) for g in games_of[s]["eval"]]
            queries = np.asarray(outs[0].queries[0])
            kl_star = np.stack([np.asarray(o.metrics["kl_to_equilibrium"]) - g.floor
                                for o, g in zip(outs, games_of[s]["eval"])])  # [G, S, T+1]
            gaps = np.stack([g.frontier_gap(o.metrics["kl_to_ref"], o.metrics["win_rate_vs_ref"])
                             for o, g in zip(outs, games_of[s]["eval"])])  # [G, S, T+1]
            reach = {}
            for eps in EPS:
                q = np.array([[first_reach(kl_star[gi, si], queries, eps) for si in range(kl_star.shape[1])]
                              for gi in range(kl_star.shape[0])])
                med, lo, hi = median_ci(q, rng)
                reach[str(eps)] = {"median": med, "ci90": [lo, hi], "reached": int(np.isfinite(q).sum()),
                                   "runs": int(q.size), "at_start": bool(np.all(q == 0))}
            fin = lambda key: np.stack([np.asarray(o.metrics[key])[:, -1] for o in outs])  # noqa: E731
            results["settings"].setdefault(s, {"methods": {}})["methods"][mname] = {
                "chosen": {"learning_rate": lr, "num_inner": k}, "heldout_score": {f"{a}/{b}": v for (a, b), v in
                                                                                  score.items()},
                "batch_size": batch, "queries_per_prompt": per_prompt, "samples_per_prompt": m.samples_per_prompt,
                "queries": queries.tolist(), "reach": reach,
                "kl_minus_floor_median": np.median(kl_star.reshape(-1, kl_star.shape[-1]), 0).tolist(),
                "frontier_gap_mean": gaps.reshape(-1, gaps.shape[-1]).mean(0).tolist(),
                "final": {"kl_minus_floor": [float(fin("kl_to_equilibrium").mean() - np.mean(
                    [g.floor for g in games_of[s]["eval"]])), float(kl_star[..., -1].std() / np.sqrt(kl_star[..., -1].size))],
                          "frontier_gap": float(gaps[..., -1].mean()), "kl_to_ref": float(fin("kl_to_ref").mean()),
                          "win_rate_vs_ref": float(fin("win_rate_vs_ref").mean()),
                          "starved_mass": float(fin("starved_mass").mean()),
                          "exploitability": float(fin("exploitability").mean())},
                "fixed_point": m.fixed_point}
            log(f"{mname:40s} {s:28s} lr {lr:g} inner {k:3d}  final KL*-floor {kl_star[..., -1].mean():.3f}  "
                f"gap {gaps[..., -1].mean():.3f}")
    for s in settings:
        ev = games_of[s]["eval"]
        start = float(np.mean([g.exact_wind_kl[0] - g.floor for g in ev]))
        exact_curve = np.mean([g.exact_wind_kl for g in ev], 0)  # tabular: no floor
        results["settings"][s]["reference"] = {
            "floor": [g.floor for g in ev], "start_kl_minus_floor": start,
            "exact_wind_kl": exact_curve.tolist(),
            "exact_wind_iterations": {str(e): (int(np.argmax(exact_curve <= e)) if np.any(exact_curve <= e) else None)
                                      for e in EPS},
            "pi_star_frontier_gap": float(np.mean([g.star_gap for g in ev])),
            "pi_star_kl_to_ref": float(np.mean([games.kl(g.pi_star, jnp.asarray(g.pi_ref / g.pi_ref.sum(-1, keepdims=True),
                                                                               jnp.float32)).mean() for g in ev]))}
    with open(os.path.join(cfg.out_dir, "study_results.json"), "w") as f:
        json.dump(results, f)
    table = format_tables(results)
    with open(os.path.join(cfg.out_dir, "study_tables.md"), "w") as f:
        f.write(table)
    print(table)
    plot(results, cfg.out_dir)
    log(f"done; outputs in {cfg.out_dir}")


def nce_batch_dependence(cfg, all_methods, floor_fn, log):
    """wind_nce (plain and pseudo-count) at several prompts per iteration: writes nce_batch.{json,md}."""
    setting = "nontransitive/realizable"
    evals = [Game(setting, i, cfg, floor_fn) for i in range(cfg.num_games)]
    rows, md = [], ["| variant | prompts / iter (loss rows) | final KL(pi*_beta \|\| pi) | starved mass | KL to ref |",
                    "|---|---|---|---|---|"]
    for mname in ("wind_nce", "wind_nce:learned+pseudo_count=0.5"):
        m = all_methods[mname]
        for b in (int(v) for v in cfg.nce_prompts.split(",")):
            run = jax.jit(algorithms.make_run(m, b, optax.adam, 40, cfg.num_outer), compiler_options=CHEAP)
            mp = algorithms.method_params(m, learning_rate=0.05, num_inner=40)
            outs = [jax.device_get(run(g.policy, mp, g.states, g.P, g.theta_ref, g.pi_star, jnp.asarray(True),
                                       jnp.asarray(cfg.num_outer, jnp.int32))) for g in evals]
            fin = {k: np.stack([np.asarray(o.metrics[k])[:, -1] for o in outs]) for k in
                   ("kl_to_equilibrium", "starved_mass", "kl_to_ref")}
            se = fin["kl_to_equilibrium"].std() / np.sqrt(fin["kl_to_equilibrium"].size)
            rows.append({"method": mname, "prompts": b, "rows": 2 * b,
                         **{k: float(v.mean()) for k, v in fin.items()}, "kl_to_equilibrium_se": float(se)})
            md.append(f"| {mname} | {b} ({2 * b}) | {fin['kl_to_equilibrium'].mean():.3f} ± {se:.3f} | "
                      f"{fin['starved_mass'].mean():.3f} | {fin['kl_to_ref'].mean():.2f} |")
            log(f"nce batch {mname} {b}: KL* {fin['kl_to_equilibrium'].mean():.3f}")
    with open(os.path.join(cfg.out_dir, "nce_batch.json"), "w") as f:
        json.dump({"setting": setting, "learning_rate": 0.05, "num_inner": 40, "rows": rows}, f)
    with open(os.path.join(cfg.out_dir, "nce_batch.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


def _q(v: float) -> str:
    return "at start" if v == 0 else ("inf" if not np.isfinite(v) else f"{v:,.0f}")


def _cell(r) -> str:
    """Median queries [90 % CI] (runs that reached eps / runs); "at start" where pi_0 already meets eps."""
    if r["at_start"]:
        return "at start"
    if not np.isfinite(r["median"]):
        return f"not reached ({r['reached']}/{r['runs']})"
    lo, hi = r["ci90"]
    return f"{_q(r['median'])} [{_q(lo)}, {_q(hi)}] ({r['reached']}/{r['runs']})"


def format_tables(results) -> str:
    out = []
    for s, d in results["settings"].items():
        ref = d["reference"]
        out.append(f"\n### {s}\n\nstart KL(pi*_beta || pi_ref) - floor = {ref['start_kl_minus_floor']:.3f}; floor "
                   f"(per game) = {', '.join(f'{v:.3f}' for v in ref['floor'])}; pi*_beta's own frontier gap = "
                   f"{ref['pi_star_frontier_gap']:.4f} at KL(pi*_beta || pi_ref) = {ref['pi_star_kl_to_ref']:.3f}. "
                   f"Exact WIND (tabular, no sampling) iterations to reach eps: "
                   + ", ".join(f"{e}: {v if v is not None else '>' + str(len(ref['exact_wind_kl']) - 1)}"
                               for e, v in ref["exact_wind_iterations"].items()) + "\n")
        out.append("| method | lr, inner | " + " | ".join(f"queries to eps={e}" for e in results["eps"])
                   + " | final KL*-floor | frontier gap | KL to ref | starved mass |")
        out.append("|---" * (6 + len(results["eps"])) + "|")
        for mname, r in d["methods"].items():
            f = r["final"]
            out.append(f"| {mname} | {r['chosen']['learning_rate']:g}, {r['chosen']['num_inner']} | "
                       + " | ".join(_cell(r["reach"][str(e)]) for e in results["eps"])
                       + f" | {f['kl_minus_floor'][0]:.3f} ± {f['kl_minus_floor'][1]:.3f} | {f['frontier_gap']:.3f} | "
                         f"{f['kl_to_ref']:.2f} | {f['starved_mass']:.3f} |")
    return "\n".join(out) + "\n"


def plot(results, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab20")
    for s, d in results["settings"].items():
        fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
        budget = results["config"]["budget_per_iter"]
        exact = np.asarray(d["reference"]["exact_wind_kl"])
        axes[0].plot(np.arange(len(exact)) * budget, np.maximum(exact, 1e-4), "k:", lw=2,
                     label=f"exact WIND (tabular; x = iteration x {budget})")
        for i, (mname, r) in enumerate(d["methods"].items()):
            style = "-" if mname.startswith("wind") else "--"
            q = np.asarray(r["queries"])
            axes[0].plot(q, np.maximum(r["kl_minus_floor_median"], 1e-4), style, color=cmap(i), label=mname)
            axes[1].plot(q, r["frontier_gap_mean"], style, color=cmap(i))
        for e in results["eps"]:
            axes[0].axhline(e, color="grey", lw=0.5)
        axes[0].set_yscale("log")
        axes[0].set_xlabel("preference queries")
        axes[0].set_ylabel("median KL(pi*_beta || pi) - floor (25 runs)")
        axes[1].axhline(d["reference"]["pi_star_frontier_gap"], color="k", ls=":", label="pi*_beta")
        axes[1].set_xlabel("preference queries")
        axes[1].set_ylabel("mean gap below the exact win-rate/KL frontier")
        axes[1].legend(fontsize=8)
        fig.legend(loc="upper center", ncol=5, fontsize=8)
        fig.subplots_adjust(top=0.80, wspace=0.2, left=0.06, right=0.98)
        fig.savefig(os.path.join(out_dir, f"study_{s.replace('/', '_')}.png"), dpi=70)
        plt.close(fig)


if __name__ == "__main__":
    main()

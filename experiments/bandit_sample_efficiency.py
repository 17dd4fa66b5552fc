"""Sample efficiency of practical WIND (MATH.md, Algorithm 3) vs SPPO, J-BOND, BoN distillation, BoNBoN, DPO
on contextual bandits with function approximation, measured against the exact equilibrium pi*_beta.

Run (default: about 2-3 minutes on 2 shared CPU cores, 5 settings; `--settings=all` adds the non-transitive
MLP setting, `--scale=4` gives 4x the queries per iteration and 4x the iterations):
  python -m experiments.bandit_sample_efficiency --out_dir outputs/bandit_sample_efficiency

Every method gets the same number of preference queries per outer iteration (--budget=queries; prompts per
iteration = budget // queries per prompt) or the same number of samples (--budget=samples). One query is
one Bernoulli duel outcome; SPPO's K = 5 round robin costs K(K-1)/2 = 10 queries per prompt (see
wind_jax/bandit/algorithms.py for every method's accounting). Seeds (vmapped) vary the sampling and duel
outcomes; the game, features and pi_ref are fixed per setting.

How it runs fast: a whole run of a method (all outer iterations, exact metrics after each, all seeds) is ONE
compiled program (`algorithms.make_run`: lax.scan over iterations, vmap over seeds), compiled ahead of time
once per (policy class, method) and reused for every game and feature table of that class (the policy is a
pytree argument; the misspecified features are zero-padded to the realizable width, which leaves the policy
family unchanged). Wall-clock per outer iteration: the same compiled run with the metrics switched off
(record=False) and only --timing_iterations iterations active, timed after the main run (the warm-up),
--timing_reps repetitions interleaved across methods; median of seconds / iterations.

Writes <out_dir>/results.json, one PNG per setting (metrics vs queries / samples / wall-clock; mean over
seeds, shaded min-max; dotted: the policy class's best-in-class KL) and prints the table of queries needed
to reach KL(pi*_beta || pi) <= floor + eps, floor = min_theta KL(pi*_beta || pi_theta).
"""
from __future__ import annotations

import json
import os
import time


def use_cheap_codegen() -> None:
    """Compile time dominates these tiny programs: cheaper XLA:CPU codegen (about 4x faster compiles, about 2x
    slower MLP steps; the same math). Call before the first JAX computation (it sets XLA_FLAGS)."""
    if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                                   " --xla_llvm_disable_expensive_passes=true").strip()

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", "outputs/bandit_sample_efficiency", "Output directory.")
flags.DEFINE_integer("scale", 1, "Multiplies the queries per iteration and the number of outer iterations.")
flags.DEFINE_integer("num_contexts", 8, "Prompts X.")
flags.DEFINE_integer("num_responses", 16, "Responses Y per prompt.")
flags.DEFINE_float("beta", 0.2, "KL strength toward pi_ref of the WIND game.")
flags.DEFINE_float("eta", 1.0, "WIND / SPPO step size (eta * beta <= 1).")
flags.DEFINE_float("preference_scale", 2.0, "Scale of the Bradley-Terry rewards / non-transitive logits.")
flags.DEFINE_integer("num_outer", 30, "Outer iterations (times --scale).")
flags.DEFINE_integer("budget_per_iter", 240, "Queries (or samples) per outer iteration, all methods (times --scale).")
flags.DEFINE_enum("budget", "queries", ["queries", "samples"], "Which resource is equalized per iteration.")
flags.DEFINE_integer("num_inner", 40, "Optimizer steps per outer iteration (lax.scan).")
flags.DEFINE_float("learning_rate", 0.05, "Adam learning rate of the inner fit (all methods).")
flags.DEFINE_integer("num_seeds", 3, "Seeds (vmapped).")
flags.DEFINE_integer("misspecified_dim", 32, "Random features of the misspecified log-linear policy (< X * Y).")
flags.DEFINE_list("settings", ["default"],
                  "GAME/POLICY pairs (games: bradley_terry, nontransitive; policies: realizable, misspecified, "
                  "mlp), or 'default' (all but nontransitive/mlp) or 'all' (the full 2 x 3 grid).")
flags.DEFINE_list("methods", [], "Subset of methods (default: all).")
flags.DEFINE_float("eps", 0.05, "Accuracy threshold on KL(pi*_beta || pi) - floor for the table.")
flags.DEFINE_integer("seed", 0, "Seed of the game, features and pi_ref.")
flags.DEFINE_integer("timing_reps", 5, "Timed repetitions of each method's run (median reported).")
flags.DEFINE_integer("timing_iterations", 5, "Outer iterations per timed repetition.")
flags.DEFINE_integer("floor_steps", 3000, "Adam steps of the best-in-class KL fit.")
flags.DEFINE_integer("compile_threads", 2, "Threads compiling the programs (XLA compiles without the GIL).")

GAMES = ("bradley_terry", "nontransitive")
POLICIES = ("realizable", "misspecified", "mlp")
ALL_SETTINGS = [f"{g}/{p}" for g in GAMES for p in POLICIES]
DEFAULT_SETTINGS = [s for s in ALL_SETTINGS if s != "nontransitive/mlp"]
POLICY_CLASS = {"realizable": "log_linear", "misspecified": "log_linear", "mlp": "mlp"}


def parse_settings(values) -> list[str]:
    if values in (["default"], []):
        return list(DEFAULT_SETTINGS)
    if values == ["all"]:
        return list(ALL_SETTINGS)
    bad = [v for v in values if v not in ALL_SETTINGS]
    if bad:
        raise ValueError(f"--settings: unknown {bad}; known: {ALL_SETTINGS} (or 'default', 'all')")
    return list(values)


def make_setting(game: str, policy_kind: str, key, X: int, Y: int, pref_scale: float, misspecified_dim: int = 32):
    """(P [X, Y, Y] with exact P + P^T = 1, policy, theta_ref). Features come from one key for every
    setting; the misspecified features are zero-padded to the realizable width (same family)."""
    import jax

    from wind_jax import games
    from wind_jax.bandit import policies

    k_game, k_ref = jax.random.split(jax.random.fold_in(key, GAMES.index(game)))
    k_feat = jax.random.fold_in(key, 777)  # the same features for every game
    if game == "bradley_terry":
        _, P = games.bradley_terry_preference(k_game, X, Y, scale=pref_scale)
    else:
        P = games.nontransitive_preference(k_game, X, Y, scale=pref_scale)
    P = 0.5 * (P + 1.0 - jax.numpy.swapaxes(P, 1, 2))  # exact P + P^T = 1 in float32 (sigmoid rounding)
    realizable_dim = X * Y + 8
    if policy_kind == "realizable":
        policy = policies.LogLinearPolicy(policies.random_features(k_feat, X, Y, "realizable", dim=8))
    elif policy_kind == "misspecified":
        if not 1 <= misspecified_dim <= realizable_dim:
            raise ValueError(f"misspecified_dim must lie in [1, {realizable_dim}], got {misspecified_dim}")
        feats = policies.random_features(k_feat, X, Y, "misspecified", dim=misspecified_dim)
        policy = policies.LogLinearPolicy(policies.pad_features(feats, realizable_dim))
    else:
        policy = policies.MLPPolicy(policies.random_features(k_feat, X, Y, "misspecified", dim=8), hidden=32)
    theta_ref = policy.init(k_ref)
    if policy_kind == "misspecified":  # theta on the padded coordinates is inert; keep it zero
        theta_ref = theta_ref.at[misspecified_dim:].set(0.0)
    return P, policy, theta_ref


def equilibrium(policy, theta_ref, P, beta):
    """pi_ref (float64) and pi*_beta of the WIND game (wind_jax.games, float64), as float32 for the runs."""
    import jax
    import numpy as np

    from wind_jax import games

    pi_ref = np.exp(np.asarray(policy.log_probs(theta_ref), np.float64))
    pi_ref /= pi_ref.sum(-1, keepdims=True)
    with jax.enable_x64(True):
        P64 = np.asarray(P, np.float64)
        P64 = 0.5 * (P64 + 1.0 - np.swapaxes(P64, 1, 2))
        pi_star = np.asarray(games.wind_equilibrium(pi_ref, P64, beta))
    return pi_ref, pi_star


class Programs:
    """Ahead-of-time compiled runs, one per (policy class, compile key, batch size); counts compilations.
    Each program is traced and lowered in the main thread and compiled at once in a worker thread (XLA
    compiles without the GIL), so tracing the next program overlaps compiling the previous ones. Compiled
    executables never recompile (a call with other shapes raises), so `count` is the total."""

    def __init__(self, cfg, threads: int):
        from concurrent.futures import ThreadPoolExecutor

        self.cfg, self.futures, self.compiled = cfg, {}, {}
        self.pool = ThreadPoolExecutor(max(1, threads))
        self.count, self.t0 = 0, time.perf_counter()

    def key(self, policy_class, method, batch_size):
        from wind_jax.bandit import algorithms

        return (policy_class, algorithms.compile_key(method), batch_size)

    def submit(self, policy_class, method, batch_size, args):
        import jax
        import optax

        from wind_jax.bandit import algorithms

        k = self.key(policy_class, method, batch_size)
        if k not in self.futures:
            run = algorithms.make_run(method, batch_size, optax.adam(self.cfg["learning_rate"]),
                                      self.cfg["num_inner"], self.cfg["num_outer"])
            self.futures[k] = self.pool.submit(jax.jit(run).lower(*args).compile)
            self.count += 1

    def wait(self) -> float:
        """Block until every program is compiled; seconds since the first submission."""
        self.compiled = {k: f.result() for k, f in self.futures.items()}
        self.pool.shutdown()
        return time.perf_counter() - self.t0

    def __call__(self, policy_class, method, batch_size, *args):
        return self.compiled[self.key(policy_class, method, batch_size)](*args)


def first_reaching(curve_mean, xs, threshold):
    for x, v in zip(xs, curve_mean):
        if v <= threshold:
            return int(x)
    return None


def reach_label(count) -> str:
    """Table cell for first_reaching's result: "at start" when pi_0 already meets the threshold (not "0")."""
    if count is None:
        return "not reached"
    return "at start" if count == 0 else str(count)


METRIC_LABELS = {
    "kl_to_equilibrium": "KL(pi*_beta || pi)",
    "exploitability": "exploitability",
    "win_rate_vs_ref": "win rate vs pi_ref",
    "kl_to_ref": "KL(pi || pi_ref)",
}


def plot_setting(name, s, eps, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    res = s["methods"]
    fig, axes = plt.subplots(len(METRIC_LABELS), 3, figsize=(16, 15))
    cmap = plt.get_cmap("tab20")
    for i, (mname, r) in enumerate(res.items()):
        t = np.arange(len(r["queries"])) * r["seconds_per_iteration"]
        xs = {"preference queries": np.asarray(r["queries"]), "samples": np.asarray(r["samples"]),
              "wall-clock (s; median per-iteration time x iterations)": t}
        style = "-" if mname.startswith("wind") else "--"
        for row, (metric, label) in enumerate(METRIC_LABELS.items()):
            v = np.asarray(r["metrics"][metric])
            for col, (xl, x) in enumerate(xs.items()):
                ax = axes[row, col]
                ax.plot(x, v.mean(0), style, color=cmap(i), label=mname if (row, col) == (0, 0) else None)
                ax.fill_between(x, v.min(0), v.max(0), color=cmap(i), alpha=0.15)
                ax.set_xlabel(xl)
                ax.set_ylabel(label)
                if metric in ("kl_to_equilibrium", "exploitability"):
                    ax.set_yscale("log")
    for col in range(3):
        ax = axes[0, col]
        if s["best_in_class_kl"] > 1e-3:  # realizable / MLP: floor ~ 0, not drawn on the log axis
            ax.axhline(s["best_in_class_kl"], color="k", lw=1.0, ls=":")
        ax.axhline(s["best_in_class_kl"] + eps, color="grey", lw=0.5, ls="-.")
    fig.legend(loc="upper center", ncol=6, fontsize=9, bbox_to_anchor=(0.5, 0.975))
    fig.suptitle(f"{name}: mean over seeds, shaded min-max; row 1 dotted = best-in-class KL (floor), "
                 f"dash-dot = floor + {eps}", y=0.995)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.04, top=0.91, hspace=0.3, wspace=0.25)
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main(argv):
    del argv
    use_cheap_codegen()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from wind_jax import games
    from wind_jax.bandit import algorithms

    t_start = time.perf_counter()
    cfg = dict(num_outer=FLAGS.num_outer * FLAGS.scale, num_inner=FLAGS.num_inner,
               learning_rate=FLAGS.learning_rate, num_seeds=FLAGS.num_seeds)
    budget = FLAGS.budget_per_iter * FLAGS.scale
    all_methods = algorithms.make_methods(FLAGS.beta, FLAGS.eta)
    names = FLAGS.methods or list(all_methods)
    unknown = [m for m in names if m not in all_methods]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; known: {list(all_methods)}")
    if FLAGS.timing_reps < 1:
        raise ValueError(f"--timing_reps must be >= 1, got {FLAGS.timing_reps}")
    settings = parse_settings(FLAGS.settings)
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    X, Y = FLAGS.num_contexts, FLAGS.num_responses
    key = jax.random.key(FLAGS.seed)

    def batch_size(m):
        per_prompt = m.queries_per_prompt if FLAGS.budget == "queries" else m.samples_per_prompt
        return max(1, budget // per_prompt)

    # 1. Games, policies, exact equilibria; lower one program per (policy class, method); compile them all.
    setup, programs = {}, Programs(cfg, FLAGS.compile_threads)
    record, all_iterations = jnp.asarray(True), jnp.asarray(cfg["num_outer"], jnp.int32)
    for si, setting in enumerate(settings):
        game, pk = setting.split("/")
        P, policy, theta_ref = make_setting(game, pk, key, X, Y, FLAGS.preference_scale, FLAGS.misspecified_dim)
        pi_ref, pi_star64 = equilibrium(policy, theta_ref, P, FLAGS.beta)
        pi_star = jnp.asarray(pi_star64, jnp.float32)
        states = jax.vmap(lambda k: algorithms.init_state(theta_ref, X, k))(
            jax.random.split(jax.random.fold_in(key, 1000 + si), cfg["num_seeds"]))
        setup[setting] = (P, policy, theta_ref, pi_ref, pi_star64, pi_star, states)
        for mname in names:
            m = all_methods[mname]
            programs.submit(POLICY_CLASS[pk], m, batch_size(m),
                           (policy, algorithms.method_params(m), states, P, theta_ref, pi_star, record,
                            all_iterations))
    t_setup = time.perf_counter() - t_start
    compile_seconds = programs.wait()
    print(f"[{time.perf_counter() - t_start:6.1f}s] setup + tracing {t_setup:.1f}s; {programs.count} programs "
          f"traced and compiled in {compile_seconds:.1f}s ({FLAGS.compile_threads} compile threads)", flush=True)
    floor_fn = jax.jit(algorithms.best_in_class_kl, static_argnames=("num_steps",))

    # 2. Runs: every method on every setting, one call each.
    results = {"config": {**cfg, **{k: FLAGS[k].value for k in (
        "num_contexts", "num_responses", "misspecified_dim", "beta", "eta", "preference_scale", "budget", "eps",
        "seed", "scale", "timing_reps", "timing_iterations")}, "budget_per_iter": budget, "settings": settings},
        "settings": {}, "timing": {}}
    for setting in settings:
        P, policy, theta_ref, pi_ref, pi_star64, pi_star, states = setup[setting]
        pc = POLICY_CLASS[setting.split("/")[1]]
        _, floor = floor_fn(policy, theta_ref, pi_star, num_steps=FLAGS.floor_steps)
        res = {}
        for mname in names:
            m = all_methods[mname]
            out = jax.device_get(programs(pc, m, batch_size(m), policy, algorithms.method_params(m), states, P,
                                          theta_ref, pi_star, record, all_iterations))
            for c in (out.samples, out.queries):
                if not np.all(c == c[:1]):
                    raise AssertionError(f"{setting}/{mname}: counts differ across seeds")
            res[mname] = {
                "fixed_point": m.fixed_point, "loss": m.loss, "batch_size": batch_size(m),
                "samples_per_prompt": m.samples_per_prompt, "queries_per_prompt": m.queries_per_prompt,
                "samples": out.samples[0].tolist(), "queries": out.queries[0].tolist(),
                "metrics": {k: np.asarray(v).tolist() for k, v in out.metrics.items()},  # [seeds][T + 1]
                "final_fit_loss": np.asarray(out.fit_loss)[:, -1].tolist(),
            }
        results["settings"][setting] = {
            "equilibrium": {
                "kl_to_ref": float(np.mean(np.sum(pi_star64 * (np.log(pi_star64) - np.log(pi_ref)), -1))),
                "exploitability": float(np.mean(games.exploitability(pi_star64.astype(np.float32), P))),
                "win_rate_vs_ref": float(games.policy_win_rate(pi_star, jnp.asarray(pi_ref, jnp.float32), P))},
            "best_in_class_kl": max(float(floor), 0.0),  # float32 rounding can give -1e-7
            "methods": res}
        print(f"[{time.perf_counter() - t_start:6.1f}s] {setting} done (best-in-class KL {max(float(floor), 0.0):.4f})",
              flush=True)

    # 3. Wall-clock per outer iteration: the same compiled runs (warmed up by step 2) without metrics and
    #    with only the first n_t iterations active; repetitions interleaved across methods (so load changes
    #    hit all methods alike); median of (seconds / n_t).
    off, n_t = jnp.asarray(False), min(FLAGS.timing_iterations, cfg["num_outer"])
    n_timed = jnp.asarray(n_t, jnp.int32)
    for pc in dict.fromkeys(POLICY_CLASS[s.split("/")[1]] for s in settings):
        setting = next(s for s in settings if POLICY_CLASS[s.split("/")[1]] == pc)
        P, policy, theta_ref, _, _, pi_star, states = setup[setting]
        times = {m: [] for m in names}
        for _ in range(FLAGS.timing_reps):
            for mname in names:
                m = all_methods[mname]
                args = (policy, algorithms.method_params(m), states, P, theta_ref, pi_star, off, n_timed)
                t0 = time.perf_counter()
                jax.block_until_ready(programs(pc, m, batch_size(m), *args))
                times[mname].append((time.perf_counter() - t0) / n_t)
        med = {m: float(np.median(v)) for m, v in times.items()}
        results["timing"][pc] = {"timed_on": setting, "iterations_per_repetition": n_t,
                                 "seconds_per_iteration": med, "all": times}
        for s in settings:
            if POLICY_CLASS[s.split("/")[1]] == pc:
                for mname, r in results["settings"][s]["methods"].items():
                    r["seconds_per_iteration"] = med[mname]
    results["compile"] = {"programs": programs.count, "seconds": compile_seconds}
    print(f"[{time.perf_counter() - t_start:6.1f}s] timing done", flush=True)

    for setting, s in results["settings"].items():
        plot_setting(setting, s, FLAGS.eps, os.path.join(FLAGS.out_dir, setting.replace("/", "_") + ".png"))
    with open(os.path.join(FLAGS.out_dir, "results.json"), "w") as f:
        json.dump(results, f)
    print_table(results, FLAGS.eps)
    print(f"\ntotal {time.perf_counter() - t_start:.1f}s ({programs.count} compiled programs, "
          f"{compile_seconds:.1f}s tracing + compiling); outputs in {FLAGS.out_dir}")


def print_table(results, eps):
    import numpy as np

    for pc, t in results["timing"].items():
        med = t["seconds_per_iteration"]
        ref = med.get("wind_sq_offset", next(iter(med.values())))
        print(f"\n== wall-clock per outer iteration, {pc} policies (timed on {t['timed_on']}; median of "
              f"{len(next(iter(t['all'].values())))} runs; all seeds together), relative to wind_sq_offset "
              f"({ref * 1e3:.2f} ms):")
        print("   " + "  ".join(f"{m} {v / ref:.2f}" for m, v in med.items()))
    for setting, s in results["settings"].items():
        res, floor = s["methods"], s["best_in_class_kl"]
        print(f"\n== {setting}: best-in-class KL (floor) {floor:.4f}; queries (samples) to reach "
              f"KL(pi*_beta||pi) <= floor + {eps}; final metrics (mean over seeds). Equilibrium: "
              f"{json.dumps({k: round(v, 4) for k, v in s['equilibrium'].items()})}")
        print(f"{'method':16s} {'queries':>11s} {'samples':>11s} {'final KL*':>10s} {'expl':>7s} {'win/ref':>8s} "
              f"{'KL/ref':>7s} {'t/iter':>7s}  fixed point")
        ref_t = res.get("wind_sq_offset", next(iter(res.values())))["seconds_per_iteration"]
        for m, r in res.items():
            kl = np.asarray(r["metrics"]["kl_to_equilibrium"]).mean(0)
            q = reach_label(first_reaching(kl, r["queries"], floor + eps))
            smp = reach_label(first_reaching(kl, r["samples"], floor + eps))
            fin = {k: float(np.asarray(v).mean(0)[-1]) for k, v in r["metrics"].items()}
            print(f"{m:16s} {q:>11} {smp:>11} "
                  f"{fin['kl_to_equilibrium']:10.4f} {fin['exploitability']:7.4f} {fin['win_rate_vs_ref']:8.4f} "
                  f"{fin['kl_to_ref']:7.3f} {r['seconds_per_iteration'] / ref_t:7.2f}  {r['fixed_point'][:60]}")


if __name__ == "__main__":
    app.run(main)

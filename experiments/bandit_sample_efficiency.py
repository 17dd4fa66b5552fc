"""Sample efficiency of practical WIND (MATH.md, Algorithm 3) vs SPPO, J-BOND, BoN distillation, BoNBoN, DPO
on contextual bandits with function approximation, measured against the exact equilibrium pi*_beta.

Run (default: under 5 minutes on 2 CPU cores; --scale=4 for 4x the queries per iteration and iterations):
  python -m experiments.bandit_sample_efficiency --out_dir outputs/bandit_sample_efficiency

Every method gets the same number of preference queries per outer iteration (--budget=queries; prompts per
iteration = budget // queries per prompt) or the same number of samples (--budget=samples). One query is
one Bernoulli duel outcome; SPPO's K = 5 round robin costs K(K-1)/2 = 10 queries per prompt (see
wind_jax/bandit/algorithms.py for every method's accounting). Seeds vary the sampling and duel outcomes;
the game, features and pi_ref are fixed per setting. Writes <out_dir>/results.json, one PNG per setting
(metrics vs queries / samples / wall-clock; mean over seeds, shaded min-max) and prints the table of
queries needed to reach KL(pi*_beta || pi) <= eps.
"""
from __future__ import annotations

import json
import os
import time

# Compile time dominates this experiment (tiny programs, ~36 of them): cheaper CPU codegen, same math.
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
flags.DEFINE_list("games", ["bradley_terry", "nontransitive"], "Preference games.")
flags.DEFINE_list("policies", ["realizable", "misspecified", "mlp"], "Policy classes.")
flags.DEFINE_list("methods", [], "Subset of methods (default: all).")
flags.DEFINE_float("eps", 0.05, "Accuracy threshold on KL(pi*_beta || pi) for the table.")
flags.DEFINE_integer("seed", 0, "Seed of the game, features and pi_ref.")


def _setting(game: str, policy_kind: str, key, feature_key, X, Y, pref_scale):
    import jax

    from wind_jax import games
    from wind_jax.bandit import policies

    k_game, k_ref = jax.random.split(key)
    k_feat = feature_key  # the same features for every game, so compiled steps are shared
    if game == "bradley_terry":
        _, P = games.bradley_terry_preference(k_game, X, Y, scale=pref_scale)
    elif game == "nontransitive":
        P = games.nontransitive_preference(k_game, X, Y, scale=pref_scale)
    else:
        raise ValueError(f"--games: unknown game {game!r} (bradley_terry, nontransitive)")
    P = 0.5 * (P + 1.0 - jax.numpy.swapaxes(P, 1, 2))  # exact P + P^T = 1 in float32 (sigmoid rounding)
    if policy_kind in ("realizable", "misspecified"):
        feats = policies.random_features(k_feat, X, Y, policy_kind, dim=8 if policy_kind == "realizable" else 4)
        policy = policies.LogLinearPolicy(feats, init_scale=1.0)
    elif policy_kind == "mlp":
        policy = policies.MLPPolicy(policies.random_features(k_feat, X, Y, "misspecified", dim=8), hidden=32)
    else:
        raise ValueError(f"--policies: unknown policy {policy_kind!r} (realizable, misspecified, mlp)")
    return P, policy, policy.init(k_ref)


_COMPILED = {}


def _compiled_step(policy_kind, policy, method, batch_size, cfg, state, P, theta_ref):
    """One compiled (vmapped over seeds) outer step per (policy class, method), shared by all games."""
    import jax
    import optax

    from wind_jax.bandit import algorithms

    key = (policy_kind, method.name)
    if key not in _COMPILED:
        step = algorithms.make_outer_step(policy, method, batch_size, optax.adam(cfg["learning_rate"]),
                                          cfg["num_inner"])
        t0 = time.perf_counter()
        compiled = jax.jit(jax.vmap(step, in_axes=(0, None, None))).lower(state, P, theta_ref).compile()
        _COMPILED[key] = (compiled, time.perf_counter() - t0)
    return _COMPILED[key]


def run_method(policy_kind, policy, method, P, theta_ref, pi_star, batch_size, cfg, seeds_key):
    """Runs `method` for cfg['num_outer'] iterations, vmapped over seeds; returns a dict of curves."""
    import jax
    import numpy as np

    from wind_jax.bandit import algorithms

    X = policy.shape[0]
    if ("metrics", policy_kind) not in _COMPILED:
        _COMPILED[("metrics", policy_kind)] = jax.jit(jax.vmap(
            lambda st, P, th, ps: algorithms.exact_metrics(
                policy.log_probs(st.params["policy"]), policy.log_probs(th), P, ps), in_axes=(0, None, None, None)))
    metrics_fn = _COMPILED[("metrics", policy_kind)]
    keys = jax.random.split(seeds_key, cfg["num_seeds"])
    state = jax.vmap(lambda k: algorithms.init_state(theta_ref, X, k))(keys)
    compiled, compile_s = _compiled_step(policy_kind, policy, method, batch_size, cfg, state, P, theta_ref)
    rows = [jax.device_get(metrics_fn(state, P, theta_ref, pi_star))]
    counts = [(0, 0)]
    times = []
    for _ in range(cfg["num_outer"]):
        t0 = time.perf_counter()
        state, _ = compiled(state, P, theta_ref)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
        rows.append(jax.device_get(metrics_fn(state, P, theta_ref, pi_star)))
        c = jax.device_get(state.counts)
        if not (np.all(c.samples == c.samples[0]) and np.all(c.queries == c.queries[0])):
            raise AssertionError("counts differ across seeds")
        counts.append((int(c.samples[0]), int(c.queries[0])))
    metrics = {k: np.stack([r[k] for r in rows], axis=1).tolist() for k in rows[0]}  # [seeds][T+1]
    return {
        "fixed_point": method.fixed_point,
        "loss": method.loss,
        "batch_size": batch_size,
        "samples_per_prompt": method.samples_per_prompt,
        "queries_per_prompt": method.queries_per_prompt,
        "samples": [c[0] for c in counts],
        "queries": [c[1] for c in counts],
        "seconds_per_iteration": float(np.median(times)),
        "seconds_per_iteration_all": times,
        "compile_seconds": compile_s,
        "metrics": metrics,
    }


def first_reaching(curve_mean, xs, eps):
    for x, v in zip(xs, curve_mean):
        if v <= eps:
            return x
    return None


METRIC_LABELS = {
    "kl_to_equilibrium": "KL(pi*_beta || pi)",
    "exploitability": "exploitability",
    "win_rate_vs_ref": "win rate vs pi_ref",
    "kl_to_ref": "KL(pi || pi_ref)",
}


def plot_setting(name, res, eps, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(len(METRIC_LABELS), 3, figsize=(16, 15))
    cmap = plt.get_cmap("tab20")
    for i, (mname, r) in enumerate(res.items()):
        t = np.concatenate([[0.0], np.cumsum([r["seconds_per_iteration"]] * (len(r["queries"]) - 1))])
        xs = {"preference queries": np.asarray(r["queries"]), "samples": np.asarray(r["samples"]),
              "wall-clock (s, median per iteration)": t}
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
                if metric == "kl_to_equilibrium":
                    ax.axhline(eps, color="k", lw=0.5, ls=":")
    fig.legend(loc="upper center", ncol=6, fontsize=9)
    fig.suptitle(f"{name}: mean over seeds, shaded min-max", y=0.94)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def main(argv):
    del argv
    import jax
    import numpy as np

    from wind_jax import games
    from wind_jax.bandit import algorithms

    cfg = dict(num_outer=FLAGS.num_outer * FLAGS.scale, num_inner=FLAGS.num_inner,
               learning_rate=FLAGS.learning_rate, num_seeds=FLAGS.num_seeds)
    budget = FLAGS.budget_per_iter * FLAGS.scale
    all_methods = algorithms.make_methods(FLAGS.beta, FLAGS.eta)
    names = FLAGS.methods or list(all_methods)
    unknown = [m for m in names if m not in all_methods]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; known: {list(all_methods)}")
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    results = {"config": {**cfg, **{k: FLAGS[k].value for k in (
        "num_contexts", "num_responses", "beta", "eta", "preference_scale", "budget", "eps", "seed", "scale")},
        "budget_per_iter": budget}, "settings": {}}
    key = jax.random.key(FLAGS.seed)
    t_start = time.perf_counter()
    for gi, game in enumerate(FLAGS.games):
        for pk in FLAGS.policies:
            setting = f"{game}/{pk}"
            P, policy, theta_ref = _setting(game, pk, jax.random.fold_in(key, gi), jax.random.fold_in(key, 777),
                                            FLAGS.num_contexts, FLAGS.num_responses, FLAGS.preference_scale)
            pi_ref = np.exp(np.asarray(policy.log_probs(theta_ref), np.float64))
            pi_ref /= pi_ref.sum(-1, keepdims=True)
            with jax.enable_x64(True):
                P64 = np.asarray(P, np.float64)
                P64 = 0.5 * (P64 + 1.0 - np.swapaxes(P64, 1, 2))
                pi_star = np.asarray(games.wind_equilibrium(pi_ref, P64, FLAGS.beta))
            pi_star = jax.numpy.asarray(pi_star, jax.numpy.float32)
            res = {}
            for mname in names:
                m = all_methods[mname]
                per_prompt = m.queries_per_prompt if FLAGS.budget == "queries" else m.samples_per_prompt
                res[mname] = run_method(pk, policy, m, P, theta_ref, pi_star, max(1, budget // per_prompt), cfg,
                                        jax.random.fold_in(key, 1000 + len(res)))
            results["settings"][setting] = {
                "equilibrium": {"kl_to_ref": float(np.mean(np.sum(pi_star * (np.log(pi_star) - np.log(pi_ref)), -1))),
                                "exploitability": float(np.mean(games.exploitability(pi_star, P))),
                                "win_rate_vs_ref": float(games.policy_win_rate(pi_star, pi_ref, P))},
                "methods": res}
            plot_setting(setting, res, FLAGS.eps, os.path.join(FLAGS.out_dir, f"{game}_{pk}.png"))
            print(f"[{time.perf_counter() - t_start:6.1f}s] {setting} done", flush=True)
    with open(os.path.join(FLAGS.out_dir, "results.json"), "w") as f:
        json.dump(results, f)
    print_table(results, FLAGS.eps)
    print(f"total {time.perf_counter() - t_start:.1f}s; outputs in {FLAGS.out_dir}")


def print_table(results, eps):
    import numpy as np

    for setting, s in results["settings"].items():
        res = s["methods"]
        ref_t = res.get("wind_sq_offset", next(iter(res.values())))["seconds_per_iteration"]
        print(f"\n== {setting}: queries (samples) to reach KL(pi*_beta||pi) <= {eps}; final metrics; time/iter "
              f"relative to wind_sq_offset. Equilibrium: {json.dumps({k: round(v, 4) for k, v in s['equilibrium'].items()})}")
        print(f"{'method':16s} {'queries':>9s} {'samples':>9s} {'final KL*':>10s} {'expl':>7s} {'win/ref':>8s} "
              f"{'KL/ref':>7s} {'t/iter':>7s}  fixed point")
        for m, r in res.items():
            kl = np.asarray(r["metrics"]["kl_to_equilibrium"]).mean(0)
            q = first_reaching(kl, r["queries"], eps)
            smp = first_reaching(kl, r["samples"], eps)
            fin = {k: float(np.asarray(v).mean(0)[-1]) for k, v in r["metrics"].items()}
            print(f"{m:16s} {q if q is not None else 'not reached':>9} {smp if smp is not None else '-':>9} "
                  f"{fin['kl_to_equilibrium']:10.4f} {fin['exploitability']:7.4f} {fin['win_rate_vs_ref']:8.4f} "
                  f"{fin['kl_to_ref']:7.3f} {r['seconds_per_iteration'] / ref_t:7.2f}  {r['fixed_point'][:60]}")


if __name__ == "__main__":
    app.run(main)

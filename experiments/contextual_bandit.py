"""Exact tabular contextual-bandit games: Figure 1 of the WIND paper in spirit, and more (MATH.md).

Run:  python -m experiments.contextual_bandit --out_dir outputs/contextual_bandit

Panels (each averaged over --num_seeds random games of --num_contexts x --num_responses):
  (a) reward (transitive) preference, no mixing: iterative BoN (working form n=2, 4; exact tie-aware reward
      BoN n=4), exact WIND (beta small) and SPPO's exact Hedge step (beta=0) approach pibar*_0 (pi_ref
      restricted to the top-reward responses); total variation distance vs iteration.
  (b) mixing: KL(pibar*_beta || pi*_beta) and KL(pibar*_beta || pi*_{beta/2}) across beta (Bradley-Terry).
  (c) exact WIND on a non-transitive preference: KL(pi*_beta || pi_t) vs t against (1 - eta beta)^t KL_0.
  (d) non-transitive preference: iterative BoN without mixing collapses (exploitability stays high) while
      exact WIND converges to pi*_beta (exploitability O(beta)); SPPO's Hedge step shown for reference.
Writes <out_dir>/panel_{a,b,c,d}.png, <out_dir>/results.json (every plotted number) and prints a summary.
All numbers come from this project's exact solvers; none are taken from the paper.
"""

from __future__ import annotations

import json
import os
import time
import warnings

from absl import app
from absl import flags
import jax
import numpy as np

_OUT_DIR = flags.DEFINE_string("out_dir", "outputs/contextual_bandit", "Output directory.")
_NUM_SEEDS = flags.DEFINE_integer("num_seeds", 3, "Random games per panel.")
_NUM_CONTEXTS = flags.DEFINE_integer("num_contexts", 32, "Contexts (prompts) X per game.")
_NUM_RESPONSES = flags.DEFINE_integer("num_responses", 10, "Responses Y per context.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 200, "Iterations of each algorithm.")
_SMALL_BETA = flags.DEFINE_float("small_beta", 0.01, "beta of exact WIND in panels (a) and (d).")
_RATE_BETA = flags.DEFINE_float("rate_beta", 0.5, "beta of panel (c).")
_ETAS = flags.DEFINE_list("etas", ["0.25", "0.5", "1.0", "1.5"], "Step sizes eta (MD form) of panel (c).")
_NONTRANSITIVE_SCALE = flags.DEFINE_float("nontransitive_scale", 4.0, "Scale of the skew-symmetric logits.")
_SEED = flags.DEFINE_integer("seed", 0, "Base PRNG seed.")


def _np(x):
    return np.asarray(x, dtype=np.float64)


def _win_rates(P, traj):  # traj [T, X, Y], P [X, Y, Y]
    return np.einsum("xyz,txz->txy", P, traj)


def _tv(p, q):
    return 0.5 * np.abs(p - q).sum(-1)


def _kl(p, q):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - np.log(q)), 0.0).sum(-1)


def panel_a(games, keys, X, Y, T, beta):
    curves = {}
    for key in keys:
        k1, k2 = jax.random.split(key)
        pi_ref = games.dirichlet_policy(k1, X, Y, 1.0)
        r, P = games.reward_preference(k2, X, Y, num_levels=Y)
        top = _np(r) == _np(r).max(-1, keepdims=True)
        target = np.where(top, _np(pi_ref), 0.0)
        target /= target.sum(-1, keepdims=True)  # pibar*_0: pi_ref restricted to the top-reward set
        runs = {
            "iterative BoN n=2": games.iterative_bon(pi_ref, P, 2, 0.0, T, return_trajectory=True),
            "iterative BoN n=4": games.iterative_bon(pi_ref, P, 4, 0.0, T, return_trajectory=True),
            "iterative BoN n=4 (exact reward BoN)": games.iterative_bon_reward(
                pi_ref, r, 4, 0.0, T, return_trajectory=True
            ),
            f"exact WIND beta={beta:g}, eta=1": games.exact_wind(
                pi_ref, P, beta, 1.0, T, return_trajectory=True
            ),
            "SPPO exact (beta=0, eta=1)": games.exact_wind(pi_ref, P, 0.0, 1.0, T, return_trajectory=True),
        }
        for name, traj in runs.items():
            curves.setdefault(name, []).append(_tv(_np(traj), target[None]).mean(-1))
    return {name: np.mean(c, axis=0).tolist() for name, c in curves.items()}


def panel_b(games, keys, X, Y, betas):
    kl_same, kl_half, res_bar = [], [], []
    for key in keys:
        k1, k2 = jax.random.split(key)
        pi_ref = games.dirichlet_policy(k1, X, Y, 1.0)
        _, P = games.bradley_terry_preference(k2, X, Y, scale=1.0)
        row_same, row_half, row_res = [], [], []
        for beta in betas:
            pibar, info = games.log_win_rate_equilibrium(pi_ref, P, beta, return_info=True)
            pi_star = games.wind_equilibrium(pi_ref, P, beta)
            pi_half = games.wind_equilibrium(pi_ref, P, beta / 2)
            row_same.append(float(np.mean(_kl(_np(pibar), _np(pi_star)))))
            row_half.append(float(np.mean(_kl(_np(pibar), _np(pi_half)))))
            row_res.append(float(info["residual"]))
        kl_same.append(row_same)
        kl_half.append(row_half)
        res_bar.append(row_res)
    return {
        "beta": list(betas),
        "kl_pibar_vs_pistar_beta": np.mean(kl_same, 0).tolist(),
        "kl_pibar_vs_pistar_half_beta": np.mean(kl_half, 0).tolist(),
        "max_residual_pibar": np.max(res_bar, 0).tolist(),
    }


def panel_c(games, keys, X, Y, T, beta, etas, scale):
    out = {"beta": beta, "eta": etas, "kl": {}, "bound": {}}
    for eta in etas:
        kls, bounds = [], []
        for key in keys:
            k1, k2 = jax.random.split(key)
            pi_ref = games.dirichlet_policy(k1, X, Y, 1.0)
            P = games.nontransitive_preference(k2, X, Y, scale=scale)
            pi_star = _np(games.wind_equilibrium(pi_ref, P, beta))
            traj = _np(games.exact_wind(pi_ref, P, beta, eta, T, return_trajectory=True))
            kl_t = _kl(pi_star[None], traj).mean(-1)
            kls.append(kl_t)
            bounds.append((1 - eta * beta) ** np.arange(T + 1) * kl_t[0])
        out["kl"][str(eta)] = np.mean(kls, 0).tolist()
        out["bound"][str(eta)] = np.mean(bounds, 0).tolist()
    return out


def panel_d(games, keys, X, Y, T, beta, scale):
    curves, kl_curves, eq_gap = {}, {}, []
    for key in keys:
        k1, k2 = jax.random.split(key)
        pi_ref = games.dirichlet_policy(k1, X, Y, 1.0)
        P = games.nontransitive_preference(k2, X, Y, scale=scale)
        pi_star = games.wind_equilibrium(pi_ref, P, beta)
        eq_gap.append(float(np.mean(games.exploitability(pi_star, P))))
        runs = {
            "iterative BoN n=2 (no mixing)": games.iterative_bon(
                pi_ref, P, 2, 0.0, T, return_trajectory=True
            ),
            "iterative BoN n=4 (no mixing)": games.iterative_bon(
                pi_ref, P, 4, 0.0, T, return_trajectory=True
            ),
            f"exact WIND beta={beta:g}, eta=1": games.exact_wind(
                pi_ref, P, beta, 1.0, T, return_trajectory=True
            ),
            "SPPO exact (beta=0, eta=1)": games.exact_wind(pi_ref, P, 0.0, 1.0, T, return_trajectory=True),
        }
        Pn = _np(P)
        for name, traj in runs.items():
            traj = _np(traj)
            curves.setdefault(name, []).append((_win_rates(Pn, traj).max(-1) - 0.5).mean(-1))
            kl_curves.setdefault(name, []).append(_kl(_np(pi_star)[None], traj).mean(-1))
    return {
        "exploitability": {k: np.mean(v, 0).tolist() for k, v in curves.items()},
        "kl_to_pistar": {k: np.mean(v, 0).tolist() for k, v in kl_curves.items()},
        "exploitability_of_pistar": float(np.mean(eq_gap)),
        "beta": beta,
    }


def _plot(results, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = results["a"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in a.items():
        ax.semilogy(np.maximum(c, 1e-16), label=name)
    ax.set(
        xlabel="iteration t",
        ylabel="TV(pi_t, pibar*_0), mean over contexts",
        title="(a) reward preference, no mixing",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "panel_a.png"), dpi=110)
    plt.close(fig)

    b = results["b"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(b["beta"], b["kl_pibar_vs_pistar_beta"], "o-", label="KL(pibar*_beta || pi*_beta)")
    ax.loglog(b["beta"], b["kl_pibar_vs_pistar_half_beta"], "s-", label="KL(pibar*_beta || pi*_{beta/2})")
    ax.set(xlabel="beta", ylabel="KL, mean over contexts", title="(b) log-win-rate vs WIND equilibria")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "panel_b.png"), dpi=110)
    plt.close(fig)

    c = results["c"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, eta in enumerate(c["eta"]):
        color = f"C{i}"
        ax.semilogy(np.maximum(c["kl"][str(eta)], 1e-17), color=color, label=f"eta={eta:g}")
        ax.semilogy(np.maximum(c["bound"][str(eta)], 1e-17), "--", color=color, alpha=0.6)
    ax.set(
        xlabel="iteration t",
        ylabel="KL(pi*_beta || pi_t)",
        title=f"(c) exact WIND, beta={c['beta']:g}; dashed: (1-eta beta)^t KL_0",
    )
    ax.set_ylim(bottom=1e-16)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "panel_c.png"), dpi=110)
    plt.close(fig)

    d = results["d"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, cur in d["exploitability"].items():
        axes[0].plot(cur, label=name)
    axes[0].axhline(d["exploitability_of_pistar"], color="k", ls=":", label="pi*_beta")
    axes[0].set(
        xlabel="iteration t", ylabel="exploitability max_y w - 1/2", title="(d) non-transitive preference"
    )
    axes[0].legend(fontsize=7)
    for name, cur in d["kl_to_pistar"].items():
        axes[1].semilogy(np.maximum(cur, 1e-16), label=name)
    axes[1].set(xlabel="iteration t", ylabel=f"KL(pi*_beta || pi_t), beta={d['beta']:g}")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "panel_d.png"), dpi=110)
    plt.close(fig)


def _summary(results, T):
    rows = []
    for name, c in results["a"].items():
        rows.append(("a", name, f"TV to pibar*_0 at t={T}", c[-1]))
    b = results["b"]
    for beta, s, h in zip(b["beta"], b["kl_pibar_vs_pistar_beta"], b["kl_pibar_vs_pistar_half_beta"]):
        rows.append(
            ("b", f"beta={beta:.3g}", "KL(pibar*||pi*_beta) / KL(pibar*||pi*_beta/2)", f"{s:.3g} / {h:.3g}")
        )
    c = results["c"]
    for eta in c["eta"]:
        kl, bound = np.array(c["kl"][str(eta)]), np.array(c["bound"][str(eta)])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.nanmax(np.where(bound[1:] > 1e-14, kl[1:] / bound[1:], np.nan))  # t >= 1
        rows.append(
            (
                "c",
                f"eta={eta:g}",
                f"KL at t={T} / max over t>=1 of KL_t/bound_t",
                f"{kl[-1]:.3g} / {ratio:.3g}",
            )
        )
    d = results["d"]
    for name, cur in d["exploitability"].items():
        rows.append(
            (
                "d",
                name,
                f"exploitability at t={T} / KL(pi*||pi_T)",
                f"{cur[-1]:.3g} / {d['kl_to_pistar'][name][-1]:.3g}",
            )
        )
    rows.append(("d", "pi*_beta", "exploitability", d["exploitability_of_pistar"]))
    width = max(len(r[1]) for r in rows)
    lines = [f"{'panel':<6}{'method':<{width + 2}}{'metric':<50}value"]
    for p, name, metric, value in rows:
        value = f"{value:.3g}" if isinstance(value, float) else value
        lines.append(f"{p:<6}{name:<{width + 2}}{metric:<50}{value}")
    return "\n".join(lines)


def main(argv):
    del argv
    jax.config.update("jax_enable_x64", True)  # float64 so KL curves resolve down to 1e-15
    from wind_jax import games  # noqa: PLC0415 (after enabling x64)

    start = time.time()
    out_dir = _OUT_DIR.value
    os.makedirs(out_dir, exist_ok=True)
    X, Y, T = _NUM_CONTEXTS.value, _NUM_RESPONSES.value, _NUM_STEPS.value
    etas = [float(e) for e in _ETAS.value]
    beta_c = _RATE_BETA.value
    if any(e * beta_c > 1 for e in etas):
        raise ValueError(f"--etas: every eta must satisfy eta * rate_beta <= 1 (rate_beta={beta_c}).")
    keys = list(jax.random.split(jax.random.key(_SEED.value), _NUM_SEEDS.value))
    betas = np.logspace(-1.5, 1.0, 8).tolist()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        results = {
            "a": panel_a(games, keys, X, Y, T, _SMALL_BETA.value),
            "b": panel_b(games, keys, X, Y, betas),
            "c": panel_c(games, keys, X, Y, T, beta_c, etas, 2.0),
            "d": panel_d(games, keys, X, Y, T, _SMALL_BETA.value * 5, _NONTRANSITIVE_SCALE.value),
        }
    results["config"] = {
        "num_seeds": len(keys),
        "num_contexts": X,
        "num_responses": Y,
        "num_steps": T,
        "small_beta": _SMALL_BETA.value,
        "rate_beta": beta_c,
        "etas": etas,
        "nontransitive_scale": _NONTRANSITIVE_SCALE.value,
        "seed": _SEED.value,
        "solver_warnings": [str(w.message) for w in caught],
    }
    _plot(results, out_dir)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(_summary(results, T))
    for w in caught:
        print("warning:", w.message)
    print(f"wrote {out_dir}/panel_[abcd].png and results.json in {time.time() - start:.1f} s")


if __name__ == "__main__":
    app.run(main)

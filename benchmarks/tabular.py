"""Exact WIND steps per second: JAX (jit + lax.scan) vs a straightforward NumPy loop, float32.

Run:  python -m benchmarks.tabular   [--sizes 64x64,256x256,1024x512]

Also times one batched matrix-vector product w = P pi of the same size (the step's dominant cost: it
reads P once) and reports effective bandwidth = bytes of P read per step / time per step.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from wind_jax import games


def numpy_wind(P, pi_ref, beta, eta, num_steps):
    """Straightforward NumPy exact WIND (MD form), float32."""
    log_ref = np.log(pi_ref)
    log_pi = log_ref.copy()
    for _ in range(num_steps):
        w = np.matmul(P, np.exp(log_pi)[..., None])[..., 0]
        logits = (1 - eta * beta) * log_pi + eta * beta * log_ref + eta * w
        logits -= logits.max(-1, keepdims=True)
        log_pi = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return np.exp(log_pi)


@jax.jit
def _matvec(P, pi):
    return jnp.einsum("xyz,xz->xy", P, pi)


def _best_time(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench(X, Y, beta=0.1, eta=1.0):
    k1, k2 = jax.random.split(jax.random.key(0))
    P = games.nontransitive_preference(k1, X, Y, dtype=jnp.float32)
    pi_ref = games.dirichlet_policy(k2, X, Y, 1.0, dtype=jnp.float32)
    P_np, ref_np = np.asarray(P), np.asarray(pi_ref)
    num_steps = max(5, min(200, int(2e8 // (X * Y * Y))))
    wind = jax.jit(lambda P, ref: games.exact_wind(ref, P, beta, eta, num_steps))  # checks skipped under jit
    wind(P, pi_ref).block_until_ready()
    t_jax = _best_time(lambda: wind(P, pi_ref).block_until_ready(), 3) / num_steps
    np_steps = max(2, num_steps // 4)
    t_np = _best_time(lambda: numpy_wind(P_np, ref_np, beta, eta, np_steps), 2) / np_steps
    _matvec(P, pi_ref).block_until_ready()
    t_mv = _best_time(lambda: _matvec(P, pi_ref).block_until_ready(), 5)
    err = float(
        np.max(
            np.abs(
                numpy_wind(P_np, ref_np, beta, eta, 3) - np.asarray(games.exact_wind(pi_ref, P, beta, eta, 3))
            )
        )
    )
    return {
        "X": X,
        "Y": Y,
        "jax_steps_per_s": 1 / t_jax,
        "numpy_steps_per_s": 1 / t_np,
        "ratio": t_np / t_jax,
        "matvec_ms": 1e3 * t_mv,
        "step_ms": 1e3 * t_jax,
        "step_over_matvec": t_jax / t_mv,
        "jax_GBps": X * Y * Y * 4 / t_jax / 1e9,
        "numpy_GBps": X * Y * Y * 4 / t_np / 1e9,
        "max_abs_diff": err,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64x64,256x256,1024x512")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.device_count()}, float32")
    head = (
        f"{'X x Y':>10} {'JAX steps/s':>12} {'NumPy steps/s':>14} {'ratio':>7} {'step ms':>9} "
        f"{'matvec ms':>10} {'step/matvec':>12} {'JAX GB/s':>9} {'NumPy GB/s':>11} {'max|diff|':>10}"
    )
    print(head)
    for size in args.sizes.split(","):
        X, Y = (int(s) for s in size.lower().split("x"))
        r = bench(X, Y)
        print(
            f"{f'{X}x{Y}':>10} {r['jax_steps_per_s']:>12.1f} {r['numpy_steps_per_s']:>14.1f} {r['ratio']:>7.2f} "
            f"{r['step_ms']:>9.3f} {r['matvec_ms']:>10.3f} {r['step_over_matvec']:>12.2f} {r['jax_GBps']:>9.2f} "
            f"{r['numpy_GBps']:>11.2f} {r['max_abs_diff']:>10.2g}",
            flush=True,
        )


if __name__ == "__main__":
    main()

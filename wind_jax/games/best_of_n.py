"""Best-of-n distributions and iterative best-of-n with mixing (MATH.md "Best-of-n", Algorithm 1).

All iterations run in log space under jax.lax.scan; win rates are floored before logs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from wind_jax.games import _ops
from wind_jax.games import _validation as v
from wind_jax.games.preferences import _log_win_rate


# ---------------------------------------------------------------- reward case (exact, ties)
@jax.jit
def _best_of_n_reward(pi, r, n):
    """BOND Thm 1: BoN_n(pi)(y) = pi(y) (F_le^n - F_lt^n) / m(y), m = F_le - F_lt (mass tied with y)."""
    le = (r[:, None, :] <= r[:, :, None]).astype(pi.dtype)  # [x, y, y'] = 1{r(y') <= r(y)}
    lt = (r[:, None, :] < r[:, :, None]).astype(pi.dtype)
    F_le = jnp.einsum("xyz,xz->xy", le, pi)
    F_lt = jnp.einsum("xyz,xz->xy", lt, pi)
    m = jnp.maximum(F_le - F_lt, 0.0)
    safe_le = jnp.where(m > 0, F_le, 1.0)
    safe_m = jnp.where(m > 0, m, 1.0)
    # F_le^n - F_lt^n = -F_le^n expm1(n log1p(-m / F_le)): no cancellation when m << F_le.
    diff = -(safe_le**n) * jnp.expm1(n * jnp.log1p(-jnp.minimum(safe_m / safe_le, 1.0)))
    out = jnp.where(m > 0, pi * diff / safe_m, 0.0)
    return out / jnp.sum(out, axis=-1, keepdims=True)


def best_of_n_reward(pi, r, n) -> jax.Array:
    """Exact best-of-n policy for a reward with ties (MATH.md; BOND Thm 1). pi, r: [X, Y] -> [X, Y]."""
    pi, r = v.as_arrays(pi, r)
    v.check_policy("pi", pi)
    v.check_reward("r", r)
    v.check_same_shape(("pi", "r"), pi, r)
    v.check_scalar("n", n, low=2, low_inclusive=True)
    return _best_of_n_reward(pi, r, n)


# ---------------------------------------------------------------- general preference (working form)
@jax.jit
def _log_best_of_n(log_pi, P, n):
    pi = jnp.exp(log_pi)
    return _ops.normalize_log(log_pi + (n - 1) * _log_win_rate(P, pi))


def best_of_n(pi, P, n) -> jax.Array:
    """Working-form best-of-n for any preference: BoN_n(pi) ∝ pi * w_pi^(n-1) (MATH.md; exact for n = 2).

    pi [X, Y], P [X, Y, Y] -> [X, Y].
    """
    pi, P = v.as_arrays(pi, P)
    v.check_game("pi", pi, P)
    v.check_scalar("n", n, low=2, low_inclusive=True)
    return jnp.exp(_log_best_of_n(_ops.log_prob(pi), P, n))


# ---------------------------------------------------------------- Algorithm 1
def _scan_policies(step, log_pi0, num_steps, return_trajectory):
    def body(log_pi, _):
        nxt = step(log_pi)
        return nxt, (jnp.exp(nxt) if return_trajectory else None)

    last, traj = jax.lax.scan(body, log_pi0, None, length=num_steps)
    if return_trajectory:
        return jnp.concatenate([jnp.exp(log_pi0)[None], traj], axis=0)
    return jnp.exp(last)


@functools.partial(jax.jit, static_argnames=("num_steps", "return_trajectory"))
def _iterative_bon(pi_ref, P, n, alpha, num_steps, return_trajectory):
    log_ref = _ops.log_prob(pi_ref)
    mix_ref = _ops.scale_log(alpha, log_ref)

    def step(log_pi):
        # log pi' = (1-alpha) log pi + alpha log ref + (1-alpha)(n-1) log w_pi - logZ
        lw = _log_win_rate(P, jnp.exp(log_pi))
        return _ops.normalize_log((1 - alpha) * (log_pi + (n - 1) * lw) + mix_ref)

    return _scan_policies(step, _ops.normalize_log(log_ref), num_steps, return_trajectory)


def _check_bon_hparams(n, alpha, num_steps):
    v.check_scalar("n", n, low=2, low_inclusive=True)
    v.check_scalar("alpha", alpha, low=0.0, high=1.0, low_inclusive=True)
    return v.check_num_steps("num_steps", num_steps)


def iterative_bon(pi_ref, P, n, alpha, num_steps: int, *, return_trajectory: bool = False):
    """Algorithm 1 with the working-form BoN: pi_{t+1} ∝ (pi_t w_{pi_t}^(n-1))^(1-alpha) pi_ref^alpha.

    Starts at pi_0 = pi_ref. alpha = 0: no mixing (Hedge on log-win-rate, step n-1); alpha in (0, 1) converges
    (when it does) to pibar*_beta with beta = alpha / ((1-alpha)(n-1)). Returns pi_T [X, Y], or the stacked
    iterates [num_steps + 1, X, Y] with return_trajectory=True.
    """
    pi_ref, P = v.as_arrays(pi_ref, P)
    v.check_game("pi_ref", pi_ref, P)
    num_steps = _check_bon_hparams(n, alpha, num_steps)
    return _iterative_bon(pi_ref, P, n, alpha, num_steps, bool(return_trajectory))


@functools.partial(jax.jit, static_argnames=("num_steps", "return_trajectory"))
def _iterative_bon_reward(pi_ref, r, n, alpha, num_steps, return_trajectory):
    log_ref = _ops.log_prob(pi_ref)
    mix_ref = _ops.scale_log(alpha, log_ref)

    def step(log_pi):
        bon = _best_of_n_reward(jnp.exp(log_pi), r, n)
        return _ops.normalize_log(_ops.scale_log(1 - alpha, _ops.log_prob(bon)) + mix_ref)

    return _scan_policies(step, _ops.normalize_log(log_ref), num_steps, return_trajectory)


def iterative_bon_reward(pi_ref, r, n, alpha, num_steps: int, *, return_trajectory: bool = False):
    """Algorithm 1 with the exact tie-aware reward BoN: pi_{t+1} ∝ BoN_n(pi_t)^(1-alpha) pi_ref^alpha."""
    pi_ref, r = v.as_arrays(pi_ref, r)
    v.check_policy("pi_ref", pi_ref)
    v.check_reward("r", r)
    v.check_same_shape(("pi_ref", "r"), pi_ref, r)
    num_steps = _check_bon_hparams(n, alpha, num_steps)
    return _iterative_bon_reward(pi_ref, r, n, alpha, num_steps, bool(return_trajectory))


def mixing_to_beta(n, alpha):
    """beta = alpha / ((1 - alpha)(n - 1)): the KL strength of the log-win-rate game solved by Algorithm 1."""
    return alpha / ((1.0 - alpha) * (n - 1.0))


def beta_to_mixing(n, beta):
    """Inverse of mixing_to_beta: alpha = beta (n-1) / (1 + beta (n-1))."""
    return beta * (n - 1.0) / (1.0 + beta * (n - 1.0))

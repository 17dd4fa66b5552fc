"""The exact optimal win-rate / KL frontier of a tabular game (MATH.md "The optimal win-rate / KL frontier").

Win rate against pi_ref is linear in the policy, P(pi > pi_ref | x) = sum_y pi(y|x) w_ref(y|x), so at every KL
budget the best policy is the tilt pi_lambda ∝ pi_ref exp(lambda w_ref), lambda >= 0, with ONE lambda shared by
all contexts (the Lagrange multiplier of the context-averaged KL budget). No policy lies above this curve.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from wind_jax.games import _ops
from wind_jax.games import _validation as v
from wind_jax.games.preferences import _win_rate


def _tilt_point(log_ref, w, lam):
    """(mean_x KL(pi_lam || pi_ref), mean_x sum_y pi_lam w) for one lambda."""
    log_pi = _ops.normalize_log(log_ref + lam * w)
    pi = jnp.exp(log_pi)
    kl = jnp.sum(jnp.where(pi > 0, pi * (log_pi - jnp.where(pi > 0, log_ref, 0.0)), 0.0), axis=-1)
    return jnp.mean(jnp.maximum(kl, 0.0)), jnp.mean(jnp.sum(pi * w, axis=-1))  # KL >= 0 up to rounding


@jax.jit
def _frontier(pi_ref, P, lambdas):
    w = _win_rate(P, pi_ref)
    return jax.vmap(lambda lam: _tilt_point(_ops.log_prob(pi_ref), w, lam))(lambdas)


def _check_lambdas(lambdas):
    lam = v.as_array(lambdas)
    if v.is_concrete(lam):
        a = np.asarray(lam)
        if a.ndim != 1 or a.size < 1:
            raise ValueError(f"`lambdas` must be a non-empty 1-D array, got shape {a.shape}.")
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError(f"`lambdas` must be finite and >= 0 (range [{a.min():.3g}, {a.max():.3g}]).")
    return lam


def win_rate_frontier(pi_ref, P, lambdas):
    """Exact frontier points (kl, win_rate), each [len(lambdas)]: for pi_lambda ∝ pi_ref exp(lambda w_ref),
    kl = mean_x KL(pi_lambda || pi_ref) and win_rate = P(pi_lambda > pi_ref), averaged uniformly over contexts.
    lambda = 0 gives (0, 1/2); as lambda grows the win rate tends to mean_x max_y w_ref (over pi_ref's support).
    """
    pi_ref, P = v.as_arrays(pi_ref, P)
    v.check_game("pi_ref", pi_ref, P)
    lam = _check_lambdas(lambdas)
    return _frontier(pi_ref, P, lam.astype(_ops.float_dtype(pi_ref, P)))


_BISECTIONS = 200


@jax.jit
def _frontier_at_kl(pi_ref, P, budgets):
    w = _win_rate(P, pi_ref)
    log_ref = _ops.log_prob(pi_ref)
    dtype = w.dtype

    def one(budget):
        # KL(pi_lambda || pi_ref) is nondecreasing in lambda: bisection on u = log lambda in [-20, 40].
        def body(_, lo_hi):
            lo, hi = lo_hi
            mid = 0.5 * (lo + hi)
            below = _tilt_point(log_ref, w, jnp.exp(mid))[0] <= budget
            return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

        lo, _ = jax.lax.fori_loop(0, _BISECTIONS, body, (jnp.asarray(-20.0, dtype), jnp.asarray(40.0, dtype)))
        lam = jnp.where(budget <= 0, 0.0, jnp.exp(lo))
        return _tilt_point(log_ref, w, lam)[1], lam

    return jax.vmap(one)(budgets)


def frontier_win_rate_at_kl(pi_ref, P, kl_budgets, *, return_lambda: bool = False):
    """The frontier's win rate at each KL budget (mean_x KL(pi || pi_ref) <= budget): the win rate of the tilt
    whose KL equals the budget (bisection on log lambda), or mean_x max_y w_ref where the budget exceeds every
    tilt's KL (lambda capped at e^40). kl_budgets [K] -> win_rate [K] (and lambda [K] with return_lambda)."""
    pi_ref, P = v.as_arrays(pi_ref, P)
    v.check_game("pi_ref", pi_ref, P)
    b = v.as_array(kl_budgets)
    if v.is_concrete(b):
        a = np.asarray(b)
        if a.ndim != 1 or not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError(f"`kl_budgets` must be a 1-D array of finite values >= 0, got {a!r}.")
    win, lam = _frontier_at_kl(pi_ref, P, b.astype(_ops.float_dtype(pi_ref, P)))
    return (win, lam) if return_lambda else win

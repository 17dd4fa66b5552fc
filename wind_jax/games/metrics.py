"""Exact tabular metrics (MATH.md "Metrics"). All per-context outputs have shape [X]."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wind_jax.games import _ops
from wind_jax.games import _validation as v
from wind_jax.games.preferences import _win_rate


@jax.jit
def _kl(p, q):
    terms = jnp.where(p > 0, p * (jnp.log(jnp.where(p > 0, p, 1.0)) - jnp.log(q)), 0.0)
    return jnp.sum(terms, axis=-1)


def kl(p, q) -> jax.Array:
    """KL(p || q) per context, sum_y p (log p - log q) with 0 log 0 = 0 (inf if p leaves q's support)."""
    p, q = v.as_arrays(p, q)
    v.check_policy_pair("p", p, "q", q)
    return _kl(p, q)


@jax.jit
def _exploitability(pi, P):
    return jnp.max(_win_rate(P, pi), axis=-1) - 0.5


def exploitability(pi, P) -> jax.Array:
    """Duality gap of the unregularized preference game: max_y w_pi(y) - 1/2, per context, in [0, 1/2]."""
    pi, P = v.as_arrays(pi, P)
    v.check_game("pi", pi, P)
    return _exploitability(pi, P)


@jax.jit
def _regularized_gap(pi, pi_ref, P, beta):
    w = _win_rate(P, pi)
    best_response = jnp.exp(_ops.normalize_log(_ops.log_prob(pi_ref) + w / beta))
    return 2.0 * beta * _kl(pi, best_response)


def regularized_gap(pi, pi_ref, P, beta) -> jax.Array:
    """Duality gap of the WIND game at (pi, pi), per context: 2 beta KL(pi || softmax(log pi_ref + w_pi/beta)).

    Equals max_p f(p, pi) - min_q f(pi, q) for f(p, q) = P(p > q) - beta KL(p||pi_ref) + beta KL(q||pi_ref)
    (using sum_y pi w_pi = 1/2); zero iff pi = pi*_beta.
    """
    pi, pi_ref, P = v.as_arrays(pi, pi_ref, P)
    v.check_policy_pair("pi", pi, "pi_ref", pi_ref, P)
    v.check_scalar("beta", beta, low=0.0)
    return _regularized_gap(pi, pi_ref, P, beta)


@jax.jit
def _policy_win_rate(pi, pi_prime, P):
    return jnp.mean(jnp.einsum("xy,xy->x", pi, _win_rate(P, pi_prime)))


def policy_win_rate(pi, pi_prime, P) -> jax.Array:
    """P(pi > pi') = E_x sum_{y,y'} pi[x,y] P[x,y,y'] pi'[x,y'] (uniform over contexts). Scalar."""
    pi, pi_prime, P = v.as_arrays(pi, pi_prime, P)
    v.check_policy_pair("pi", pi, "pi_prime", pi_prime, P)
    return _policy_win_rate(pi, pi_prime, P)


@jax.jit
def _support_size(pi, threshold):
    return jnp.sum(pi > threshold, axis=-1)


def support_size(pi, threshold: float = 1e-3) -> jax.Array:
    """Number of responses with probability above `threshold`, per context."""
    pi = v.as_array(pi)
    v.check_policy("pi", pi)
    return _support_size(pi, threshold)


@jax.jit
def _starved_mass(pi, pi_star, threshold):
    return jnp.sum(jnp.where(pi < threshold, pi_star, 0.0), axis=-1)


def starved_mass(pi, pi_star, threshold: float = 1e-3) -> jax.Array:
    """pi_star's mass on responses to which pi gives probability < `threshold`, per context (MATH.md, "What a
    learned per-prompt offset does not pin down"): the part of the target a policy has all but excluded."""
    pi, pi_star = v.as_arrays(pi, pi_star)
    v.check_policy_pair("pi", pi, "pi_star", pi_star)
    v.check_scalar("threshold", threshold, low=0.0, high=1.0)
    return _starved_mass(pi, pi_star, threshold)

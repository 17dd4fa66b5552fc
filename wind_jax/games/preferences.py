"""Tabular preferences, win rates and policy generators (MATH.md, "Notation").

Shapes: policy pi [X, Y] (rows sum to 1), preference P [X, Y, Y] with P[x, y, y'] = P(y beats y' | x) and
P + P^T = 1, reward r [X, Y].
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from wind_jax.games import _ops
from wind_jax.games import _validation as v


@jax.jit
def _win_rate(P, pi):
    return jnp.einsum("xyz,xz->xy", P, pi)


def win_rate(P, pi) -> jax.Array:
    """w_pi[x, y] = P(y > pi | x) = sum_y' P[x, y, y'] pi[x, y'] (MATH.md "Notation"). Returns [X, Y]."""
    P, pi = v.as_arrays(P, pi)
    v.check_game("pi", pi, P)
    return _win_rate(P, pi)


@jax.jit
def _log_win_rate(P, pi):
    """log w_pi with w floored at the dtype's smallest normal number (finite even if y loses to all of pi)."""
    w = _win_rate(P, pi)
    return jnp.log(jnp.maximum(w, _ops.floor_for(w.dtype)))


@jax.jit
def _reward_to_preference(r):
    d = r[:, :, None] - r[:, None, :]
    return jnp.where(d > 0, 1.0, jnp.where(d == 0, 0.5, 0.0)).astype(_ops.float_dtype(r))


def reward_to_preference(r) -> jax.Array:
    """P = 1{r > r'} + 1/2 1{r = r'} (MATH.md, reward special case). r: [X, Y] -> P [X, Y, Y]."""
    r = v.as_array(r)
    v.check_reward("r", r)
    return _reward_to_preference(r)


def _default_dtype(dtype):
    return jax.dtypes.canonicalize_dtype(jnp.float64 if dtype is None else dtype)


def _check_sizes(X, Y):
    for name, s in (("X", X), ("Y", Y)):
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"`{name}` must be a positive int, got {s!r}.")


def reward_preference(key, X: int, Y: int, *, num_levels: int | None = None, dtype=None):
    """Transitive preference from integer rewards with ties: r ~ Uniform{0..num_levels-1}.

    num_levels defaults to max(2, Y // 2), so ties occur. Returns (r [X, Y], P [X, Y, Y]).
    """
    _check_sizes(X, Y)
    num_levels = max(2, Y // 2) if num_levels is None else num_levels
    if not isinstance(num_levels, int) or num_levels < 1:
        raise ValueError(f"`num_levels` must be a positive int, got {num_levels!r}.")
    dtype = _default_dtype(dtype)
    r = jax.random.randint(key, (X, Y), 0, num_levels).astype(dtype)
    return r, _reward_to_preference(r)


def bradley_terry_preference(key, X: int, Y: int, *, scale: float = 1.0, dtype=None):
    """Bradley-Terry preference P = sigmoid(r - r') with r ~ N(0, scale^2). Returns (r, P)."""
    _check_sizes(X, Y)
    v.check_scalar("scale", scale, low=0.0, low_inclusive=True)
    dtype = _default_dtype(dtype)
    r = scale * jax.random.normal(key, (X, Y), dtype)
    P = jax.nn.sigmoid(r[:, :, None] - r[:, None, :])
    return r, P


def nontransitive_preference(key, X: int, Y: int, *, scale: float = 1.0, dtype=None) -> jax.Array:
    """Non-transitive preference P = sigmoid(A), A = scale (G - G^T) / sqrt(2) skew-symmetric, G ~ N(0, 1).

    For Y >= 3 a random tournament rarely has a Condorcet winner, so the preference game's equilibrium is
    typically mixed. Returns P [X, Y, Y] (P + P^T = 1 exactly, diagonal 1/2).
    """
    _check_sizes(X, Y)
    v.check_scalar("scale", scale, low=0.0, low_inclusive=True)
    dtype = _default_dtype(dtype)
    G = jax.random.normal(key, (X, Y, Y), dtype)
    A = scale * (G - jnp.swapaxes(G, 1, 2)) / jnp.sqrt(2.0).astype(dtype)
    P = jax.nn.sigmoid(A)
    return 0.5 * (P + 1.0 - jnp.swapaxes(P, 1, 2))  # exact complementarity in floating point


def dirichlet_policy(key, X: int, Y: int, concentration: float = 1.0, *, dtype=None) -> jax.Array:
    """Reference policies pi[x] ~ Dirichlet(concentration * 1_Y), renormalized in `dtype`. Returns [X, Y]."""
    _check_sizes(X, Y)
    v.check_scalar("concentration", concentration, low=0.0)
    dtype = _default_dtype(dtype)
    pi = jax.random.dirichlet(key, jnp.full((Y,), concentration, dtype), (X,), dtype)
    return pi / jnp.sum(pi, axis=-1, keepdims=True)

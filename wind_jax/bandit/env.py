"""Contextual-bandit environment for practical WIND (MATH.md, "Algorithm 3"): prompts, sampling, duels.

A game is a preference tensor P[x, y, y'] = P(y beats y' | x) (P + P^T = 1) over X prompts and Y responses.
Everything here is pure and jittable. Every function that draws responses or asks the preference oracle
returns a `Counts` increment computed from what it actually drew, so the outer loop counts samples and
preference queries exactly (one query = one Bernoulli duel outcome ell ~ Bernoulli(P[x, y, y'])).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Counts(NamedTuple):
    """Exact resource counters: responses drawn from a policy and preference queries (duels) made."""

    samples: jax.Array  # int32 scalar
    queries: jax.Array  # int32 scalar

    @staticmethod
    def zero() -> "Counts":
        return Counts(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def __add__(self, other: "Counts") -> "Counts":  # type: ignore[override]
        return Counts(self.samples + other.samples, self.queries + other.queries)


def validate_preference(P: jax.Array, name: str = "P") -> None:
    """Raise ValueError unless P has shape [X, Y, Y] with P + P^T = 1 and entries in [0, 1]."""
    if P.ndim != 3 or P.shape[1] != P.shape[2]:
        raise ValueError(f"{name} must have shape [X, Y, Y], got {P.shape}")
    if not bool(jnp.all(jnp.isfinite(P))):
        raise ValueError(f"{name} contains NaN or inf")
    if bool(jnp.any((P < 0) | (P > 1))):
        raise ValueError(f"{name} entries must lie in [0, 1]")
    if not bool(jnp.allclose(P + jnp.swapaxes(P, 1, 2), 1.0, atol=1e-5)):
        raise ValueError(f"{name} must satisfy P + P^T = 1 (MATH.md, Notation)")


def sample_prompts(key: jax.Array, num_contexts: int, batch_size: int) -> tuple[jax.Array, Counts]:
    """Prompts x ~ Uniform[X], shape [B]. Drawing prompts costs no response samples and no queries."""
    return jax.random.randint(key, (batch_size,), 0, num_contexts), Counts.zero()


def sample_responses(
    key: jax.Array, log_pi: jax.Array, prompts: jax.Array, num: int
) -> tuple[jax.Array, Counts]:
    """Draw `num` responses per prompt from pi(.|x) given log pi [X, Y]; returns ([B, num] int32, counts)."""
    logits = log_pi[prompts]  # [B, Y]
    ys = jax.random.categorical(key, logits[:, None, :], axis=-1, shape=(prompts.shape[0], num))
    return ys.astype(jnp.int32), Counts(jnp.asarray(ys.size, jnp.int32), jnp.zeros((), jnp.int32))


def duel(
    key: jax.Array, P: jax.Array, prompts: jax.Array, y: jax.Array, y_prime: jax.Array
) -> tuple[jax.Array, Counts]:
    """One preference query per element: ell = 1{y beats y'} ~ Bernoulli(P[x, y, y']), float32, same shape.

    `prompts` broadcasts against y / y' (e.g. prompts [B, 1] with y [B, k]).
    """
    x = jnp.broadcast_to(prompts, jnp.broadcast_shapes(prompts.shape, y.shape, y_prime.shape))
    p = P[x, y, y_prime]
    ell = (jax.random.uniform(key, p.shape) < p).astype(jnp.float32)
    return ell, Counts(jnp.zeros((), jnp.int32), jnp.asarray(ell.size, jnp.int32))


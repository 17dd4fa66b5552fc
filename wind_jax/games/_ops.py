"""Small log-space helpers shared by the tabular solvers (private)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def floor_for(dtype) -> float:
    """Floor applied to win rates before taking logs: the smallest normal number of `dtype`."""
    return float(jnp.finfo(dtype).tiny)


def log_prob(p: jax.Array) -> jax.Array:
    """log p with log 0 = -inf (zero-probability responses stay outside the support)."""
    return jnp.log(p)


def scale_log(c, log_p: jax.Array) -> jax.Array:
    """c * log_p with 0 * (-inf) = 0, so a zero coefficient removes a term even off the support."""
    return jnp.where(c == 0, jnp.zeros_like(log_p), c * log_p)


def normalize_log(logits: jax.Array) -> jax.Array:
    """Row-wise log-softmax over responses (the last axis)."""
    return jax.nn.log_softmax(logits, axis=-1)


def float_dtype(*xs):
    """Common floating dtype of the inputs (float32 unless some input is float64 under x64)."""
    return jnp.result_type(*xs, jnp.float32)

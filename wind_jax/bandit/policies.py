"""Parametric policies over a tabular bandit: pi_theta(y|x) ∝ exp(f_theta(x, y)) (MATH.md, Algorithm 3).

A policy here is a set of pure functions over a parameter pytree: `init(key) -> params`, `logits(params)`
(unnormalized f_theta [X, Y]) and `log_probs(params) -> [X, Y]` (float32 log-softmax over responses, exact
for every prompt, so metrics against wind_jax.games need no sampling). Parameters are plain pytrees, so they vmap over seeds.

- LogLinearPolicy: f = theta . phi(x, y) with fixed features phi [X, Y, D].
  `random_features(kind="realizable")` = one-hot(x, y) ++ Gaussian features: every tabular policy,
  hence the equilibrium pi*_beta, lies in the family. `kind="misspecified"`: D low-dimensional Gaussian
  features only: pi*_beta is in general NOT in the family.
- MLPPolicy: f = MLP(phi(x, y)) (Flax NNX module, split into graphdef + state; the state is the params).

Both policy classes are JAX pytrees whose only leaf is `features` (the rest is static): pass a policy as an
ARGUMENT of a jitted function and one compiled program serves every feature table of the same shape
(e.g. realizable and zero-padded misspecified features, see `pad_features`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def random_features(
    key: jax.Array, num_contexts: int, num_responses: int, kind: str = "realizable", dim: int = 8
) -> jax.Array:
    """Features phi [X, Y, D] (float32). realizable: [one-hot(x, y) (X*Y), N(0, 1/dim) (dim)];
    misspecified: N(0, 1/dim) of width `dim` only."""
    if num_contexts < 1 or num_responses < 2:
        raise ValueError(f"need num_contexts >= 1 and num_responses >= 2, got {num_contexts}, {num_responses}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if kind not in ("realizable", "misspecified"):
        raise ValueError(f"kind must be 'realizable' or 'misspecified', got {kind!r}")
    gauss = jax.random.normal(key, (num_contexts, num_responses, dim), jnp.float32) / jnp.sqrt(dim)
    if kind == "misspecified":
        return gauss
    onehot = jnp.eye(num_contexts * num_responses, dtype=jnp.float32).reshape(
        num_contexts, num_responses, num_contexts * num_responses
    )
    return jnp.concatenate([onehot, gauss], axis=-1)


def pad_features(features: jax.Array, dim: int) -> jax.Array:
    """Zero-pad features [X, Y, D] to width `dim` >= D. The policy family is unchanged: logits ignore the
    padded coordinates and their gradient is exactly zero, so they never move under any optimizer step
    that maps a zero gradient to a zero update (SGD, Adam). Lets two feature sets share compiled code."""
    if features.ndim != 3:
        raise ValueError(f"features must have shape [X, Y, D], got {features.shape}")
    if dim < features.shape[-1]:
        raise ValueError(f"dim={dim} must be >= the feature width {features.shape[-1]}")
    return jnp.pad(features, ((0, 0), (0, 0), (0, dim - features.shape[-1])))


def _check_features(features) -> None:
    # Unflattening a pytree may pass placeholders instead of arrays: validate only array-likes.
    if hasattr(features, "ndim") and features.ndim != 3:
        raise ValueError(f"features must have shape [X, Y, D], got {features.shape}")


@dataclasses.dataclass(frozen=True, eq=False)
class LogLinearPolicy:
    """pi_theta(y|x) ∝ exp(theta . phi(x, y)); params = theta [D]. Initial theta ~ N(0, init_scale^2)."""

    features: jax.Array  # [X, Y, D]
    init_scale: float = 1.0

    def __post_init__(self):
        _check_features(self.features)

    @property
    def shape(self) -> tuple[int, int]:
        return self.features.shape[0], self.features.shape[1]

    def init(self, key: jax.Array) -> jax.Array:
        return self.init_scale * jax.random.normal(key, (self.features.shape[-1],), jnp.float32)

    def logits(self, params: jax.Array) -> jax.Array:
        """Unnormalized f_theta(x, y) [X, Y]; log_probs = log_softmax(logits)."""
        return jnp.einsum("xyd,d->xy", self.features, params)

    def log_probs(self, params: jax.Array) -> jax.Array:
        return jax.nn.log_softmax(self.logits(params), axis=-1)


class _MLP(nnx.Module):
    def __init__(self, in_dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(in_dim, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, h):
        h = jnp.tanh(self.l1(h))
        h = jnp.tanh(self.l2(h))
        return self.out(h)[..., 0]


@dataclasses.dataclass(frozen=True, eq=False)
class MLPPolicy:
    """pi_theta(y|x) ∝ exp(MLP_theta(phi(x, y))), a 2-hidden-layer tanh MLP (Flax NNX); params = nnx.State.

    `logit_scale` multiplies the output so the initial policy is not near-uniform."""

    features: jax.Array  # [X, Y, D]
    hidden: int = 32
    logit_scale: float = 3.0

    def __post_init__(self):
        _check_features(self.features)
        if self.hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {self.hidden}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.features.shape[0], self.features.shape[1]

    @functools.cached_property
    def _graphdef(self):
        model = nnx.eval_shape(lambda: _MLP(self.features.shape[-1], self.hidden, rngs=nnx.Rngs(0)))
        return nnx.split(model)[0]

    def init(self, key: jax.Array) -> Any:
        model = _MLP(self.features.shape[-1], self.hidden, rngs=nnx.Rngs(params=key))
        return nnx.split(model)[1]

    def logits(self, params: Any) -> jax.Array:
        """Unnormalized f_theta(x, y) [X, Y]; log_probs = log_softmax(logits)."""
        return self.logit_scale * nnx.merge(self._graphdef, params)(self.features)

    def log_probs(self, params: Any) -> jax.Array:
        return jax.nn.log_softmax(self.logits(params), axis=-1)


jax.tree_util.register_dataclass(LogLinearPolicy, data_fields=["features"], meta_fields=["init_scale"])
jax.tree_util.register_dataclass(MLPPolicy, data_fields=["features"], meta_fields=["hidden", "logit_scale"])

"""Input checks for the public wrappers of wind_jax.games (private).

Checks run only on concrete arrays: when an argument is a tracer (the public function is being called inside
someone else's jit / vmap / grad) the check is skipped, so the jitted cores stay composable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(*xs) -> bool:
    """True when no argument is a JAX tracer."""
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def as_array(x):
    """x as a JAX array (Python lists and NumPy arrays are converted; tracers pass through unchanged)."""
    return x if not is_concrete(x) else jnp.asarray(x)


def as_arrays(*xs):
    return tuple(as_array(x) for x in xs)


def _tol(a: np.ndarray) -> float:
    """Tolerance of the row-sum and P + P^T checks, by the dtype the cores will compute in: float32 unless x64
    is on and the input is float64. The float64 tolerance (1e-6) admits float64 casts of float32 arrays
    (float32 rounding is ~1e-7) while still catching real mistakes."""
    computes_in = jax.dtypes.canonicalize_dtype(a.dtype)
    return 1e-6 if computes_in == np.float64 else 2e-4


def _array(name: str, x, ndim: int) -> np.ndarray | None:
    if not is_concrete(x):
        return None
    a = np.asarray(x)
    if a.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimensions, got shape {a.shape}.")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"`{name}` contains NaN or infinite entries.")
    return a


def check_policy(name: str, pi) -> None:
    """pi: [X, Y], nonnegative, rows summing to 1."""
    a = _array(name, pi, 2)
    if a is None:
        return
    if a.shape[1] < 1:
        raise ValueError(f"`{name}` must have at least one response, got shape {a.shape}.")
    if np.any(a < 0):
        raise ValueError(f"`{name}` has negative probabilities (min {a.min():.3g}).")
    dev = np.max(np.abs(a.sum(axis=-1) - 1.0))
    if dev > _tol(a) * max(1.0, a.shape[1] / 64):
        raise ValueError(f"rows of `{name}` must sum to 1 (largest deviation {dev:.3g}).")


def check_preference(name: str, P) -> None:
    """P: [X, Y, Y], entries in [0, 1], P + P^T = 1."""
    a = _array(name, P, 3)
    if a is None:
        return
    if a.shape[1] != a.shape[2]:
        raise ValueError(f"`{name}` must have shape [X, Y, Y], got {a.shape}.")
    if np.any(a < 0) or np.any(a > 1):
        raise ValueError(f"`{name}` entries must lie in [0, 1] (range [{a.min():.3g}, {a.max():.3g}]).")
    dev = np.max(np.abs(a + np.swapaxes(a, 1, 2) - 1.0)) if a.size else 0.0
    if dev > _tol(a):
        raise ValueError(f"`{name}` must satisfy P + P^T = 1 (largest deviation {dev:.3g}).")


def check_reward(name: str, r) -> None:
    _array(name, r, 2)


def check_same_shape(names: tuple[str, ...], *xs) -> None:
    shapes = [tuple(np.shape(x)) for x in xs]
    if len(set(shapes)) > 1:
        desc = ", ".join(f"`{n}` {s}" for n, s in zip(names, shapes))
        raise ValueError(f"shapes disagree: {desc}.")


def check_policy_pair(a_name: str, a, b_name: str, b, P=None) -> None:
    """Two policies of the same shape (and, with P, a game they are policies of)."""
    check_policy(a_name, a)
    check_policy(b_name, b)
    check_same_shape((a_name, b_name), a, b)
    if P is not None:
        check_preference("P", P)
        check_policy_preference(a_name, a, "P", P)


def check_policy_preference(pi_name: str, pi, P_name: str, P) -> None:
    ps, Ps = tuple(np.shape(pi)), tuple(np.shape(P))
    if len(ps) == 2 and len(Ps) == 3 and Ps != (ps[0], ps[1], ps[1]):
        raise ValueError(
            f"`{P_name}` shape {Ps} does not match `{pi_name}` shape {ps}: expected {(ps[0], ps[1], ps[1])}."
        )


def check_game(pi_name: str, pi, P) -> None:
    """A policy `pi_name` [X, Y] and a preference `P` [X, Y, Y], each valid, of matching shapes."""
    check_policy(pi_name, pi)
    check_preference("P", P)
    check_policy_preference(pi_name, pi, "P", P)


def check_scalar(name: str, value, *, low=None, high=None, low_inclusive=False, high_inclusive=False) -> None:
    """Bounds check for a scalar hyperparameter (skipped for tracers)."""
    if not is_concrete(value):
        return
    a = np.asarray(value)
    if a.ndim != 0:
        raise ValueError(f"`{name}` must be a scalar, got shape {a.shape}.")
    v = float(a)
    if not np.isfinite(v):
        raise ValueError(f"`{name}` must be finite, got {v}.")
    if low is not None and (v < low or (v == low and not low_inclusive)):
        op = ">=" if low_inclusive else ">"
        raise ValueError(f"`{name}` must be {op} {low}, got {v}.")
    if high is not None and (v > high or (v == high and not high_inclusive)):
        op = "<=" if high_inclusive else "<"
        raise ValueError(f"`{name}` must be {op} {high}, got {v}.")


def check_num_steps(name: str, num_steps) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 0:
        raise ValueError(f"`{name}` must be a non-negative Python int, got {num_steps!r}.")
    return int(num_steps)

"""Exact WIND (Algorithm 2, magnetic mirror descent) and the two regularized equilibria (MATH.md).

MD form:  log pi_{t+1} = (1 - eta beta) log pi_t + eta beta log pi_ref + eta w_{pi_t} - logZ,  eta beta <= 1.
MMD form: pi_{t+1} ∝ (pi_t pi_ref^(s beta) exp(s w_{pi_t}))^(1/(1 + s beta)), any s > 0; it is the MD
          update with eta = s / (1 + s beta). With parametrization="mmd" the `eta` argument is s.
Equilibria: pi*_beta = pi_ref exp(w_{pi*} / beta) / Z (WIND game) and pibar*_beta = pi_ref w_{pibar}^(1/beta) / Z
(log-win-rate game solved by Algorithm 1), found by iterating the damped update until the fixed-point
residual max |pi - T(pi)| is below `tol`.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

from wind_jax.games import _ops
from wind_jax.games import _validation as v
from wind_jax.games.best_of_n import _scan_policies
from wind_jax.games.preferences import _log_win_rate, _win_rate

PARAMETRIZATIONS = ("md", "mmd")
METHODS = ("newton", "iteration", "hybrid")


def mmd_to_md_step(s, beta):
    """eta = s / (1 + s beta): the MD step size equivalent to MMD step s."""
    return s / (1.0 + s * beta)


def md_to_mmd_step(eta, beta):
    """s = eta / (1 - eta beta): inverse of mmd_to_md_step (requires eta beta < 1)."""
    return eta / (1.0 - eta * beta)


def _md_update(log_pi, log_ref, payoff, beta, eta):
    eb = eta * beta
    return _ops.normalize_log(_ops.scale_log(1.0 - eb, log_pi) + _ops.scale_log(eb, log_ref) + eta * payoff)


def _md_eta(beta, eta, parametrization):
    return mmd_to_md_step(eta, beta) if parametrization == "mmd" else eta


def _wind_payoff(P, log_pi):
    return _win_rate(P, jnp.exp(log_pi))


def _log_wind_payoff(P, log_pi):
    return _log_win_rate(P, jnp.exp(log_pi))


def _wind_payoff_jac(P, log_pi):
    """d w_pi / d pi = P."""
    return P


def _log_wind_payoff_jac(P, log_pi):
    """d log w_pi / d pi = P / w (w floored as in the payoff)."""
    w = _win_rate(P, jnp.exp(log_pi))
    return P / jnp.maximum(w, _ops.floor_for(w.dtype))[:, :, None]


_PAYOFF_JAC = {_wind_payoff: _wind_payoff_jac, _log_wind_payoff: _log_wind_payoff_jac}


@functools.partial(jax.jit, static_argnames=("parametrization",))
def _wind_step(pi, pi_ref, P, beta, eta, parametrization):
    log_pi = _ops.log_prob(pi)
    eta = _md_eta(beta, eta, parametrization)
    return jnp.exp(_md_update(log_pi, _ops.log_prob(pi_ref), _wind_payoff(P, log_pi), beta, eta))


def _check_wind(pi_ref, P, beta, eta, parametrization, *, beta_zero_ok=False):
    v.check_game("pi_ref", pi_ref, P)
    v.check_scalar("beta", beta, low=0.0, low_inclusive=beta_zero_ok)
    v.check_scalar("eta", eta, low=0.0)
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"`parametrization` must be one of {PARAMETRIZATIONS}, got {parametrization!r}.")
    if parametrization == "md" and v.is_concrete(beta, eta) and float(eta) * float(beta) > 1.0:
        raise ValueError(
            f"MD form needs eta * beta <= 1 (got eta={float(eta)}, beta={float(beta)}); use "
            "parametrization='mmd' (any step s > 0) instead."
        )


def wind_step(pi, pi_ref, P, beta, eta, *, parametrization: str = "md") -> jax.Array:
    """One exact WIND step from pi (MATH.md Algorithm 2). beta = 0 gives SPPO's exact Hedge step."""
    pi, pi_ref, P = v.as_arrays(pi, pi_ref, P)
    _check_wind(pi_ref, P, beta, eta, parametrization, beta_zero_ok=True)
    v.check_policy("pi", pi)
    v.check_same_shape(("pi", "pi_ref"), pi, pi_ref)
    return _wind_step(pi, pi_ref, P, beta, eta, parametrization)


@functools.partial(jax.jit, static_argnames=("num_steps", "parametrization", "return_trajectory"))
def _exact_wind(pi_ref, P, beta, eta, pi_init, num_steps, parametrization, return_trajectory):
    log_ref = _ops.log_prob(pi_ref)
    eta = _md_eta(beta, eta, parametrization)

    def step(log_pi):
        return _md_update(log_pi, log_ref, _wind_payoff(P, log_pi), beta, eta)

    return _scan_policies(step, _ops.normalize_log(_ops.log_prob(pi_init)), num_steps, return_trajectory)


def exact_wind(
    pi_ref,
    P,
    beta,
    eta,
    num_steps: int,
    *,
    parametrization: str = "md",
    pi_init=None,
    return_trajectory: bool = False,
) -> jax.Array:
    """Exact WIND (MATH.md Algorithm 2) for num_steps steps from pi_init (default pi_ref).

    Returns pi_T [X, Y] or, with return_trajectory=True, the iterates [num_steps + 1, X, Y].
    beta = 0 is allowed (SPPO's exact Hedge update; no last-iterate guarantee).
    """
    pi_ref, P = v.as_arrays(pi_ref, P)
    _check_wind(pi_ref, P, beta, eta, parametrization, beta_zero_ok=True)
    if pi_init is None:
        pi_init = pi_ref
    else:
        pi_init = v.as_array(pi_init)
        v.check_policy("pi_init", pi_init)
        v.check_same_shape(("pi_init", "pi_ref"), pi_init, pi_ref)
    num_steps = v.check_num_steps("num_steps", num_steps)
    return _exact_wind(pi_ref, P, beta, eta, pi_init, num_steps, parametrization, bool(return_trajectory))


# ------------------------------------------------------------------------------------------ equilibria
def _default_tol(dtype):
    return 1e-12 if jnp.dtype(dtype) == jnp.float64 else 2e-6


def _fixed_point_residual(log_pi, log_ref, payoff_fn, P, beta):
    """max_{x,y} |pi - T(pi)| with T(pi) = softmax(log pi_ref + payoff(pi) / beta), per context."""
    target = _ops.normalize_log(log_ref + payoff_fn(P, log_pi) / beta)
    return jnp.max(jnp.abs(jnp.exp(log_pi) - jnp.exp(target)), axis=-1)


def _solve_iteration(payoff_fn, pi_ref, P, beta, eta, tol, max_steps):
    """Damped fixed-point (MD) iteration until the residual is <= tol."""
    log_ref = _ops.log_prob(pi_ref)
    log_pi0 = _ops.normalize_log(log_ref)

    def residual(log_pi):
        return jnp.max(_fixed_point_residual(log_pi, log_ref, payoff_fn, P, beta))

    def cond(state):
        _, k, res = state
        return (k < max_steps) & (res > tol)

    def body(state):
        log_pi, k, _ = state
        nxt = _md_update(log_pi, log_ref, payoff_fn(P, log_pi), beta, eta)
        return nxt, k + 1, residual(nxt)

    log_pi, k, res = jax.lax.while_loop(cond, body, (log_pi0, jnp.asarray(0), residual(log_pi0)))
    return jnp.exp(log_pi), k, res


_BACKTRACK = 12  # candidate Newton step lengths 1, 1/2, ..., 2^-11


def _solve_newton(payoff_fn, pi_ref, P, beta, tol, max_steps, pi_start=None):
    """Damped Newton on F(u) = u - payoff(softmax(log pi_ref + u)) / beta = 0, u [X, Y] (per-context solves).

    The Jacobian is I - J_payoff S / beta with S = diag(pi) - pi pi^T; for the WIND payoff J_payoff S = (P - 1/2) S
    has purely imaginary spectrum, so it is always invertible. Backtracking on ||F|| per context (the Newton
    direction descends ||F||^2), so the iteration does not cycle even for small beta.
    """
    log_ref = _ops.log_prob(pi_ref)
    eye = jnp.eye(pi_ref.shape[-1], dtype=pi_ref.dtype)

    def F(u):
        log_pi = _ops.normalize_log(log_ref + u)
        return u - payoff_fn(P, log_pi) / beta

    def jac(u):
        log_pi = _ops.normalize_log(log_ref + u)
        pi = jnp.exp(log_pi)
        jp = _PAYOFF_JAC[payoff_fn](P, log_pi)
        S = jax.vmap(jnp.diag)(pi) - pi[:, :, None] * pi[:, None, :]
        return eye - jnp.einsum("xij,xjk->xik", jp, S) / beta

    def residual(u):
        log_pi = _ops.normalize_log(log_ref + u)
        return jnp.max(_fixed_point_residual(log_pi, log_ref, payoff_fn, P, beta))

    ts = 0.5 ** jnp.arange(_BACKTRACK, dtype=pi_ref.dtype)

    def body(state):
        u, k, _ = state
        f = F(u)
        d = jnp.linalg.solve(jac(u), -f[..., None])[..., 0]
        norm0 = jnp.sum(f * f, axis=-1)
        norms = jax.vmap(lambda t: jnp.sum(jnp.square(F(u + t * d)), axis=-1))(ts)  # [T, X]
        ok = norms <= (1.0 - 1e-4 * ts[:, None]) * norm0[None]
        idx = jnp.where(jnp.any(ok, axis=0), jnp.argmax(ok, axis=0), _BACKTRACK - 1)
        u_new = u + ts[idx][:, None] * d
        u_new = jnp.where(jnp.isfinite(u_new), u_new, u)
        return u_new, k + 1, residual(u_new)

    def cond(state):
        _, k, res = state
        return (k < max_steps) & (res > tol)

    start = _ops.normalize_log(log_ref) if pi_start is None else _ops.log_prob(pi_start)
    u0 = payoff_fn(P, start) / beta
    u, k, res = jax.lax.while_loop(cond, body, (u0, jnp.asarray(0), residual(u0)))
    return jnp.exp(_ops.normalize_log(log_ref + u)), k, res


_HYBRID_NEWTON_STEPS = 50


def _solve(payoff_fn, pi_ref, P, beta, eta, tol, max_steps, method):
    if method == "newton":
        return _solve_newton(payoff_fn, pi_ref, P, beta, tol, max_steps)
    pi, k, res = _solve_iteration(payoff_fn, pi_ref, P, beta, eta, tol, max_steps)
    if method == "iteration":
        return pi, k, res
    # hybrid: the damped iteration selects the attracting fixed point, Newton polishes it.
    pi_n, k_n, res_n = _solve_newton(payoff_fn, pi_ref, P, beta, tol, _HYBRID_NEWTON_STEPS, pi_start=pi)
    better = res_n < res
    return jnp.where(better, pi_n, pi), k + k_n, jnp.minimum(res, res_n)


@functools.partial(jax.jit, static_argnames=("method",))
def _wind_equilibrium(pi_ref, P, beta, eta, tol, max_steps, method):
    return _solve(_wind_payoff, pi_ref, P, beta, eta, tol, max_steps, method)


@functools.partial(jax.jit, static_argnames=("method",))
def _log_win_rate_equilibrium(pi_ref, P, beta, eta, tol, max_steps, method):
    return _solve(_log_wind_payoff, pi_ref, P, beta, eta, tol, max_steps, method)


def _equilibrium(core, name, pi_ref, P, beta, step, tol, max_steps, method, return_info):
    pi_ref, P = v.as_arrays(pi_ref, P)
    v.check_game("pi_ref", pi_ref, P)
    v.check_scalar("beta", beta, low=0.0)
    v.check_scalar("step", step, low=0.0)
    if max_steps is None:
        max_steps = 200 if method == "newton" else 20_000
    v.check_num_steps("max_steps", max_steps)
    dtype = _ops.float_dtype(pi_ref, P)
    tol = _default_tol(dtype) if tol is None else tol
    v.check_scalar("tol", tol, low=0.0)
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    pi, k, res = core(pi_ref, P, beta, mmd_to_md_step(step, beta), tol, max_steps, method)
    info = {"residual": res, "num_steps": k, "converged": res <= tol}
    if v.is_concrete(res) and not bool(res <= tol):
        warnings.warn(
            f"{name}: fixed-point residual {float(res):.3g} > tol {tol:.3g} after {int(k)} steps; "
            "try a smaller `step`.",
            RuntimeWarning,
            stacklevel=3,
        )
    return (pi, info) if return_info else pi


def wind_equilibrium(
    pi_ref,
    P,
    beta,
    *,
    method: str = "newton",
    step: float = 1.0,
    tol: float | None = None,
    max_steps: int | None = None,
    return_info: bool = False,
):
    """pi*_beta = pi_ref exp(w_{pi*}/beta) / Z, the unique WIND-game equilibrium (MATH.md).

    method="newton" (default): damped Newton on the fixed-point equation (robust for small beta);
    method="iteration": exact WIND in MMD form with step `step` (eta = step / (1 + step beta));
    method="hybrid": the iteration, then Newton from its result. Each stops when the fixed-point residual
    max |pi - softmax(log pi_ref + w_pi / beta)| <= tol (default 2e-6 in float32, 1e-12 in float64) or after
    max_steps (default 200 Newton / 20_000 iteration steps).
    With return_info=True also returns {"residual", "num_steps", "converged"}.
    """
    return _equilibrium(
        _wind_equilibrium, "wind_equilibrium", pi_ref, P, beta, step, tol, max_steps, method, return_info
    )


def log_win_rate_equilibrium(
    pi_ref,
    P,
    beta,
    *,
    method: str = "hybrid",
    step: float = 1.0,
    tol: float | None = None,
    max_steps: int | None = None,
    return_info: bool = False,
):
    """pibar*_beta = pi_ref w_{pibar}^(1/beta) / Z, the fixed point of Algorithm 1 with mixing (MATH.md).

    Same solvers as wind_equilibrium with payoff log w (floored); residual as there. Default "hybrid": the
    damped iteration (Algorithm 1's dynamics) picks the attracting fixed point (with 0/1 preferences
    there are repelling interior ones that plain Newton may approach), then Newton polishes it. The
    log-win-rate game is not zero-sum: for small beta and non-transitive P the iteration may cycle; check
    info["residual"] (a RuntimeWarning is raised when tol is not met).
    """
    return _equilibrium(
        _log_win_rate_equilibrium,
        "log_win_rate_equilibrium",
        pi_ref,
        P,
        beta,
        step,
        tol,
        max_steps,
        method,
        return_info,
    )

"""Exact WIND (Algorithm 2), equilibria, metrics and input validation (MATH.md)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.games import _reference as ref
from wind_jax import games


@pytest.mark.parametrize("parametrization", ["md", "mmd"])
def test_exact_wind_steps_match_numpy(x64, parametrization):
    pi_ref, P, _ = ref.random_problem(20, 4, 6)
    beta, eta = 0.3, 0.8
    numpy_step = ref.wind_md_step if parametrization == "md" else ref.wind_mmd_step
    pi_init = ref.random_problem(21, 4, 6)[0]
    traj = np.asarray(
        games.exact_wind(
            pi_ref, P, beta, eta, 3, parametrization=parametrization, pi_init=pi_init, return_trajectory=True
        )
    )
    assert traj.shape == (4, 4, 6)
    np.testing.assert_allclose(traj[0], pi_init, atol=1e-13)
    for t in range(3):
        np.testing.assert_allclose(traj[t + 1], numpy_step(traj[t], pi_ref, P, beta, eta), atol=1e-12)
    np.testing.assert_allclose(
        games.wind_step(pi_init, pi_ref, P, beta, eta, parametrization=parametrization), traj[1], atol=1e-13
    )


def test_md_and_mmd_are_the_same_update(x64):
    pi_ref, P, _ = ref.random_problem(22, 3, 5)
    beta, s = 0.5, 1.5
    eta = games.mmd_to_md_step(s, beta)
    np.testing.assert_allclose(games.md_to_mmd_step(eta, beta), s)
    a = games.exact_wind(pi_ref, P, beta, s, 7, parametrization="mmd")
    b = games.exact_wind(pi_ref, P, beta, eta, 7, parametrization="md")
    np.testing.assert_allclose(a, b, atol=1e-12)


@pytest.fixture(scope="module")
def equilibrium_problem():
    with jax.enable_x64(True):
        pi_ref, P, _ = ref.random_problem(23, 5, 7, scale=2.0)
        out = {}
        for beta in (0.05, 0.5):
            out[beta] = (
                games.wind_equilibrium(pi_ref, P, beta, return_info=True),
                games.log_win_rate_equilibrium(pi_ref, P, beta, return_info=True),
            )
    return pi_ref, P, out


def test_equilibrium_fixed_point_residuals_numpy(equilibrium_problem):
    pi_ref, P, out = equilibrium_problem
    for beta, ((pi_star, info), (pibar, info_bar)) in out.items():
        pi_star, pibar = np.asarray(pi_star), np.asarray(pibar)
        assert pi_star.dtype == np.float64
        assert bool(info["converged"]) and float(info["residual"]) <= 1e-12
        np.testing.assert_allclose(
            pi_star, ref.softmax(np.log(pi_ref) + ref.win_rate(P, pi_star) / beta), atol=1e-11
        )
        assert bool(info_bar["converged"])
        np.testing.assert_allclose(
            pibar, ref.softmax(np.log(pi_ref) + np.log(ref.win_rate(P, pibar)) / beta), atol=1e-11
        )
        with jax.enable_x64(True):
            assert np.max(np.asarray(games.regularized_gap(pi_star, pi_ref, P, beta))) < 1e-12
            assert np.min(np.asarray(games.regularized_gap(pibar, pi_ref, P, beta))) > 0


def test_linear_convergence_rate_bound(equilibrium_problem):
    # Theorem 3 shape: KL(pi* || pi_t) <= (1 - eta beta)^t KL(pi* || pi_0) for s <= beta (MMD step).
    pi_ref, P, out = equilibrium_problem
    beta = 0.5
    pi_star = np.asarray(out[beta][0][0])
    with jax.enable_x64(True):
        for s in (0.25, 0.5):
            eta = games.mmd_to_md_step(s, beta)
            traj = np.asarray(games.exact_wind(pi_ref, P, beta, eta, 40, return_trajectory=True))
            kls = ref.kl(pi_star[None], traj)  # [T+1, X]
            bound = (1 - eta * beta) ** np.arange(41)[:, None] * kls[0][None]
            assert np.all(kls <= bound * (1 + 1e-9) + 1e-14)
            assert kls[-1].max() < 1e-3 * kls[0].max()  # and it really converges


def test_regularized_gap_equals_best_response_value_gap(x64):
    pi_ref, P, _ = ref.random_problem(24, 4, 6)
    pi = ref.random_problem(25, 4, 6)[0]
    beta = 0.7
    w = ref.win_rate(P, pi)
    best_value = beta * np.log((pi_ref * np.exp(w / beta)).sum(-1))  # max_p <p, w> - beta KL(p || ref)
    own_value = (pi * w).sum(-1) - beta * ref.kl(pi, pi_ref)
    np.testing.assert_allclose(
        games.regularized_gap(pi, pi_ref, P, beta), 2 * (best_value - own_value), atol=1e-12
    )


def test_metrics_numpy(x64):
    pi, P, _ = ref.random_problem(26, 4, 6)
    q = ref.random_problem(27, 4, 6)[0]
    np.testing.assert_allclose(games.kl(pi, q), ref.kl(pi, q), atol=1e-12)
    np.testing.assert_allclose(games.exploitability(pi, P), ref.win_rate(P, pi).max(-1) - 0.5, atol=1e-12)
    expected = np.mean([pi[x] @ P[x] @ q[x] for x in range(4)])
    np.testing.assert_allclose(games.policy_win_rate(pi, q, P), expected, atol=1e-12)
    np.testing.assert_allclose(
        games.policy_win_rate(pi, q, P) + games.policy_win_rate(q, pi, P), 1.0, atol=1e-12
    )


def test_wind_converges_on_nontransitive_where_bon_collapses():
    key = jax.random.key(0)
    P = games.nontransitive_preference(key, 8, 6, scale=4.0)
    pi_ref = jnp.full((8, 6), 1 / 6)
    bon = games.iterative_bon(pi_ref, P, 2, 0.0, 300)
    wind = games.exact_wind(pi_ref, P, 0.05, 1.0, 300)
    pi_star = games.wind_equilibrium(pi_ref, P, 0.05)
    condorcet = np.any(np.all(np.asarray(P) >= 0.5, axis=-1), axis=-1)  # some y beats every y'
    assert not np.all(condorcet)
    bon_gap = np.asarray(games.exploitability(bon, P))
    assert np.all(bon_gap[~condorcet] > 0.2)  # collapsed onto a response that is beaten by another
    assert np.all(np.asarray(games.support_size(bon))[~condorcet] <= 2)
    assert np.all(np.asarray(games.exploitability(wind, P)) < 0.2)
    assert float(jnp.max(games.kl(pi_star, wind))) < 1e-3


def test_no_nan_for_extreme_inputs():
    Y = 5
    one_hot = jnp.eye(Y)[jnp.array([0, 3])]
    hard_P = games.reward_to_preference(jnp.array([[0.0, 1, 1, 2, 3], [3.0, 3, 0, 1, 2]]))
    for beta, eta in ((1e-4, 1.0), (1e3, 1e-3), (1.0, 1.0)):
        for pi_ref in (one_hot, jnp.full((2, Y), 1 / Y)):
            outs = [
                games.exact_wind(pi_ref, hard_P, beta, eta, 50),
                games.exact_wind(pi_ref, hard_P, beta, 50.0, 50, parametrization="mmd"),
                games.iterative_bon(pi_ref, hard_P, 64, 0.0, 50),
                games.iterative_bon(pi_ref, hard_P, 64, 0.9, 50),
                games.best_of_n_reward(pi_ref, jnp.array([[0.0, 1, 1, 2, 3], [3.0, 3, 0, 1, 2]]), 64),
            ]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                outs.append(games.wind_equilibrium(pi_ref, hard_P, beta, max_steps=50))
                outs.append(games.log_win_rate_equilibrium(pi_ref, hard_P, max(beta, 1e-2), max_steps=200))
            for o in outs:
                assert np.all(np.isfinite(o)) and np.allclose(np.sum(o, -1), 1.0, atol=1e-5)
            assert np.all(np.isfinite(games.regularized_gap(outs[0], pi_ref, hard_P, beta)))
    # support is preserved: responses outside pi_ref's support stay at exactly zero
    assert np.all(np.asarray(games.exact_wind(one_hot, hard_P, 1e-4, 1.0, 20))[one_hot == 0] == 0)


def test_public_functions_compose_under_jit():
    pi_ref, P, _ = ref.random_problem(28, 3, 4)
    pi_ref, P = pi_ref.astype(np.float32), P.astype(np.float32)

    @jax.jit
    def f(pi_ref, P, beta):
        pi = games.exact_wind(pi_ref, P, beta, 1.0, 5)
        return games.regularized_gap(pi, pi_ref, P, beta), games.wind_equilibrium(pi_ref, P, beta)

    gap, _ = f(pi_ref, P, 0.5)
    np.testing.assert_allclose(
        gap, games.regularized_gap(games.exact_wind(pi_ref, P, 0.5, 1.0, 5), pi_ref, P, 0.5), rtol=1e-5
    )


def test_generators_are_valid():
    k = jax.random.split(jax.random.key(1), 4)
    r, P = games.reward_preference(k[0], 3, 8)
    assert P.shape == (3, 8, 8) and np.allclose(P + np.swapaxes(P, 1, 2), 1)
    assert any(len(set(np.asarray(row).tolist())) < 8 for row in r)  # ties present
    r, P = games.bradley_terry_preference(k[1], 3, 8)
    np.testing.assert_allclose(P, jax.nn.sigmoid(r[:, :, None] - r[:, None, :]), atol=1e-6)
    P = games.nontransitive_preference(k[2], 3, 8)
    assert np.all(P + np.swapaxes(P, 1, 2) == 1)
    pi = games.dirichlet_policy(k[3], 3, 8, 0.5)
    assert np.allclose(pi.sum(-1), 1) and np.all(pi >= 0)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda pi, P, r: games.win_rate(P, pi * 2), "rows of `pi` must sum to 1"),
        (lambda pi, P, r: games.win_rate(P + 0.1 * np.eye(4), pi), "P \\+ P\\^T = 1"),
        (lambda pi, P, r: games.exact_wind(pi, P, 0.0 - 1.0, 0.5, 3), "`beta` must be >= 0"),
        (lambda pi, P, r: games.wind_equilibrium(pi, P, 0.0), "`beta` must be > 0"),
        (lambda pi, P, r: games.best_of_n(pi, P, 1), "`n` must be >= 2"),
        (lambda pi, P, r: games.best_of_n_reward(pi, r, 1), "`n` must be >= 2"),
        (lambda pi, P, r: games.win_rate(P, pi[:, :3] / pi[:, :3].sum(-1, keepdims=True)), "does not match"),
        (lambda pi, P, r: games.best_of_n_reward(pi, r[:, :3], 2), "shapes disagree"),
        (lambda pi, P, r: games.iterative_bon(pi, P, 2, 1.0, 3), "`alpha` must be < 1"),
        (lambda pi, P, r: games.iterative_bon(pi, P, 2, 0.1, -1), "`num_steps`"),
        (lambda pi, P, r: games.exact_wind(pi, P, 1.0, 2.0, 3), "eta \\* beta <= 1"),
        (lambda pi, P, r: games.exact_wind(pi, P, 1.0, 0.5, 3, parametrization="xx"), "`parametrization`"),
        (lambda pi, P, r: games.kl(pi, np.full_like(pi, np.nan)), "NaN"),
        (lambda pi, P, r: games.win_rate(P[0], pi), "`P` must have 3 dimensions"),
    ],
)
def test_invalid_input_raises(call, match):
    pi, P, r = ref.random_problem(29, 2, 4, kind="reward")
    with pytest.raises(ValueError, match=match):
        call(pi, P, r)


def test_float64_casts_of_float32_inputs_and_python_lists(x64):
    """Issue 14: float32 policies / preferences cast to float64 pass validation (float32 rounding, ~1e-7, is
    within the float64 tolerance), Python lists are accepted, and a real float64 error is still caught."""
    pi32 = np.asarray(games.dirichlet_policy(jax.random.key(3), 3, 50, dtype=jnp.float32))
    P32 = np.asarray(games.nontransitive_preference(jax.random.key(4), 3, 50, dtype=jnp.float32))
    P32 = jax.nn.sigmoid(jnp.log(P32) - jnp.log1p(-P32))  # float32 sigmoid output: P + P^T = 1 up to rounding
    pi64, P64 = pi32.astype(np.float64), np.asarray(P32).astype(np.float64)
    assert np.max(np.abs(pi64.sum(-1) - 1)) > 1e-8 or np.max(np.abs(P64 + np.swapaxes(P64, 1, 2) - 1)) > 1e-8
    w = games.win_rate(P64, pi64)
    np.testing.assert_allclose(w, ref.win_rate(P64, pi64), atol=1e-12)
    e_list = games.exploitability(pi64.tolist(), P64.tolist())
    np.testing.assert_allclose(e_list, ref.win_rate(P64, pi64).max(-1) - 0.5, atol=1e-12)
    ints = games.win_rate([[[0.5, 1], [0, 0.5]]], [[1, 0]])  # integer entries in lists
    np.testing.assert_allclose(ints, [[0.5, 0.0]])
    with pytest.raises(ValueError, match="rows of `pi` must sum to 1"):
        games.win_rate(P64, pi64 * (1 + 1e-4))


def test_python_lists_without_x64():
    pi, P, _ = ref.random_problem(30, 2, 3)
    out = games.exact_wind(pi.tolist(), P.tolist(), 0.5, 1.0, 2, pi_init=pi.tolist())
    np.testing.assert_allclose(out, games.exact_wind(pi.astype(np.float32), P.astype(np.float32), 0.5, 1.0, 2),
                               atol=1e-6)


def test_starved_mass_numpy():
    pi = np.array([[0.5, 0.4995, 0.0005], [1e-4, 0.9998, 1e-4]])
    star = np.array([[0.2, 0.3, 0.5], [0.25, 0.5, 0.25]])
    np.testing.assert_allclose(games.starved_mass(pi, star), [0.5, 0.5], atol=1e-7)
    np.testing.assert_allclose(games.starved_mass(pi, star, threshold=1e-5), [0.0, 0.0], atol=1e-7)
    with pytest.raises(ValueError, match="threshold"):
        games.starved_mass(pi, star, threshold=2.0)

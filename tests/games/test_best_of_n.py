"""Best-of-n closed forms and Algorithm 1 against enumeration, Monte Carlo and NumPy float64 (MATH.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests.games import _reference as ref
from wind_jax import games


def test_win_rate_identity_and_numpy(x64):
    pi, P, _ = ref.random_problem(0, 5, 7)
    w = np.asarray(games.win_rate(P, pi))
    np.testing.assert_allclose(w, ref.win_rate(P, pi), atol=1e-12)
    np.testing.assert_allclose((pi * w).sum(-1), 0.5, atol=1e-12)  # sum_y pi w = 1/2


def test_best_of_n_reward_matches_enumeration_with_ties(x64):
    pi, _, r = ref.random_problem(1, 4, 5, kind="reward")
    assert any(len(set(row)) < len(row) for row in r)  # the instance has ties
    for n in (2, 3, 4):
        got = np.asarray(games.best_of_n_reward(pi, r, n))
        np.testing.assert_allclose(got, ref.bon_reward_enumerate(pi, r, n), atol=1e-12)


def test_best_of_n_reward_monte_carlo_with_ties():
    pi, _, r = ref.random_problem(2, 3, 6, kind="reward")
    n, N = 4, 200_000
    mc = ref.bon_reward_monte_carlo(np.random.default_rng(0), pi, r, n, N)
    got = np.asarray(games.best_of_n_reward(pi.astype(np.float32), r.astype(np.float32), n))
    sigma = np.sqrt(np.maximum(got * (1 - got), 1e-12) / N)
    assert np.all(np.abs(mc - got) <= 5 * sigma + 1e-4), np.max(np.abs(mc - got) / (sigma + 1e-12))


def test_best_of_two_is_one_duel_monte_carlo():
    pi, P, _ = ref.random_problem(3, 3, 5)
    N = 200_000
    mc = ref.duel_monte_carlo(np.random.default_rng(1), pi, P, N)
    got = np.asarray(games.best_of_n(pi.astype(np.float32), P.astype(np.float32), 2))
    sigma = np.sqrt(np.maximum(got * (1 - got), 1e-12) / N)
    assert np.all(np.abs(mc - got) <= 5 * sigma + 1e-4)


def test_best_of_two_equals_two_pi_w(x64):
    pi, P, _ = ref.random_problem(4, 6, 8)
    got = np.asarray(games.best_of_n(pi, P, 2))
    np.testing.assert_allclose(got, 2 * pi * ref.win_rate(P, pi), atol=1e-12)
    # reward case: the tie-aware closed form and the preference working form agree at n = 2
    pi, P, r = ref.random_problem(5, 6, 8, kind="reward")
    np.testing.assert_allclose(games.best_of_n_reward(pi, r, 2), 2 * pi * ref.win_rate(P, pi), atol=1e-12)


@pytest.mark.parametrize("n,m", [(2, 2), (2, 3), (3, 4)])
def test_best_of_n_reward_composition(x64, n, m):
    pi, _, r = ref.random_problem(6, 5, 9, kind="reward")
    lhs = games.best_of_n_reward(games.best_of_n_reward(pi, r, m), r, n)
    np.testing.assert_allclose(lhs, games.best_of_n_reward(pi, r, n * m), atol=1e-11)


def test_bonbon_win_rate_continuous_reward(x64):
    # continuous rewards (no ties): P(BoN_n > pi) = n / (n + 1) up to the 1/Y discreteness; exact here:
    Y = 400
    r = np.arange(Y, dtype=np.float64)[None]
    pi = np.full((1, Y), 1.0 / Y)
    P = np.asarray(games.reward_to_preference(r))
    for n in (2, 4, 8):
        bon = games.best_of_n_reward(pi, r, n)
        wr = float(games.policy_win_rate(bon, pi, P))
        assert abs(wr - n / (n + 1)) < 2.0 / Y


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_iterative_bon_one_step_numpy(x64, alpha):
    pi_ref, P, _ = ref.random_problem(7, 4, 6)
    traj = np.asarray(games.iterative_bon(pi_ref, P, 4, alpha, 3, return_trajectory=True))
    assert traj.shape == (4, 4, 6)
    np.testing.assert_allclose(traj[0], pi_ref, atol=1e-13)
    for t in range(3):
        np.testing.assert_allclose(
            traj[t + 1], ref.iterative_bon_step(traj[t], pi_ref, P, 4, alpha), atol=1e-12
        )
    np.testing.assert_allclose(games.iterative_bon(pi_ref, P, 4, alpha, 3), traj[-1], atol=1e-13)


def test_iterative_bon_reward_one_step_numpy(x64):
    pi_ref, _, r = ref.random_problem(8, 3, 5, kind="reward")
    alpha, n = 0.25, 3
    traj = np.asarray(games.iterative_bon_reward(pi_ref, r, n, alpha, 2, return_trajectory=True))
    for t in range(2):
        bon = ref.bon_reward_enumerate(traj[t], r, n)
        expected = bon ** (1 - alpha) * pi_ref**alpha
        np.testing.assert_allclose(traj[t + 1], expected / expected.sum(-1, keepdims=True), atol=1e-12)


def test_iterative_bon_fixed_point_is_log_win_rate_equilibrium(x64):
    pi_ref, P, _ = ref.random_problem(9, 4, 6, kind="bradley_terry", scale=1.0)
    n, alpha = 4, 0.5
    beta = games.mixing_to_beta(n, alpha)
    np.testing.assert_allclose(games.beta_to_mixing(n, beta), alpha)
    limit = games.iterative_bon(pi_ref, P, n, alpha, 400)
    pibar = games.log_win_rate_equilibrium(pi_ref, P, beta)
    np.testing.assert_allclose(limit, pibar, atol=1e-9)


def test_iterative_bon_no_mixing_reward_reaches_top_set(x64):
    pi_ref, P, r = ref.random_problem(10, 5, 8, kind="reward")
    top = r == r.max(-1, keepdims=True)
    target = np.where(top, pi_ref, 0.0)
    target /= target.sum(-1, keepdims=True)
    for final in (
        games.iterative_bon(pi_ref, P, 2, 0.0, 200),
        games.iterative_bon_reward(pi_ref, r, 2, 0.0, 60),
    ):
        np.testing.assert_allclose(final, target, atol=1e-6)


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    X=st.sampled_from([1, 3]),
    Y=st.sampled_from([2, 5, 8]),
    n=st.integers(2, 6),
    kind=st.sampled_from(["reward", "nontransitive", "bradley_terry"]),
)
def test_property_best_of_n_is_a_policy_and_matches_numpy(seed, X, Y, n, kind):
    with jax.enable_x64(True):
        pi, P, r = ref.random_problem(seed, X, Y, kind=kind)
        out = np.asarray(games.best_of_n(pi, P, n))
        expected = pi * ref.win_rate(P, pi) ** (n - 1)
        np.testing.assert_allclose(out, expected / expected.sum(-1, keepdims=True), atol=1e-10)
        if r is not None:
            bon = np.asarray(games.best_of_n_reward(pi, r, n))
            assert np.all(bon >= 0) and np.allclose(bon.sum(-1), 1.0)
            # BoN never lowers the expected reward
            assert np.all((bon * r).sum(-1) >= (pi * r).sum(-1) - 1e-12)


def test_float32_and_float64_dtypes():
    pi, P, r = ref.random_problem(11, 3, 4, kind="reward")
    out32 = games.iterative_bon(pi.astype(np.float32), P.astype(np.float32), 3, 0.2, 5)
    assert out32.dtype == jnp.float32
    with jax.enable_x64(True):
        out64 = games.iterative_bon(pi, P, 3, 0.2, 5)
        assert out64.dtype == jnp.float64
    np.testing.assert_allclose(out32, out64, atol=1e-5)

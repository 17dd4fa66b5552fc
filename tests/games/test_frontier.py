"""The exact win-rate / KL frontier (MATH.md "The optimal win-rate / KL frontier"): NumPy reference, its
inverse, and that no policy of the tabular solvers lies above it (a point above it would be a bug)."""

import warnings

import numpy as np
import pytest

from tests.games import _reference as ref
from wind_jax import monte_carlo_frontier as mc
from wind_jax import games


def _numpy_frontier(pi_ref, P, lambdas):
    w = ref.win_rate(P, pi_ref)
    kls, wins = [], []
    for lam in lambdas:
        pi = ref.softmax(np.log(pi_ref) + lam * w)
        kls.append(ref.kl(pi, pi_ref).mean())
        wins.append(np.sum(pi * w, axis=-1).mean())
    return np.array(kls), np.array(wins)


@pytest.mark.parametrize("kind", ["nontransitive", "bradley_terry", "reward"])
def test_win_rate_frontier_matches_numpy(x64, kind):
    pi_ref, P, _ = ref.random_problem(40, 3, 7, kind=kind)
    lambdas = np.array([0.0, 0.3, 2.0, 10.0, 80.0])
    kl, win = games.win_rate_frontier(pi_ref, P, lambdas)
    kl_np, win_np = _numpy_frontier(pi_ref, P, lambdas)
    np.testing.assert_allclose(kl, kl_np, atol=1e-12)
    np.testing.assert_allclose(win, win_np, atol=1e-12)
    assert abs(float(kl[0])) < 1e-12 and abs(float(win[0]) - 0.5) < 1e-12  # lambda = 0 is pi_ref
    assert np.all(np.diff(np.asarray(kl)) > 0) and np.all(np.diff(np.asarray(win)) > 0)
    top = ref.win_rate(P, pi_ref).max(axis=-1).mean()  # lambda -> inf: the best response's win rate
    assert float(games.win_rate_frontier(pi_ref, P, [1e4])[1][0]) == pytest.approx(top, abs=1e-6)


def test_frontier_at_kl_inverts_the_frontier(x64):
    pi_ref, P, _ = ref.random_problem(41, 4, 6)
    lambdas = np.array([0.5, 3.0, 12.0])
    kl, win = games.win_rate_frontier(pi_ref, P, lambdas)
    win_at, lam_at = games.frontier_win_rate_at_kl(pi_ref, P, np.asarray(kl), return_lambda=True)
    np.testing.assert_allclose(win_at, win, atol=1e-9)
    np.testing.assert_allclose(lam_at, lambdas, rtol=1e-6)
    assert float(games.frontier_win_rate_at_kl(pi_ref, P, [0.0])[0]) == pytest.approx(0.5, abs=1e-12)


def _points(pi_list, pi_ref, P):
    w = ref.win_rate(P, pi_ref)
    kl = np.array([ref.kl(np.asarray(p), pi_ref).mean() for p in pi_list])
    win = np.array([np.sum(np.asarray(p) * w, axis=-1).mean() for p in pi_list])
    return kl, win


@pytest.mark.parametrize("kind", ["nontransitive", "bradley_terry", "reward"])
def test_no_tabular_policy_beats_the_frontier(x64, kind):
    """Exact WIND iterates and equilibria, SPPO's Hedge (beta = 0), Alg. 1 (with and without mixing), BoN_n of
    pi_ref and random policies all lie on or below the frontier at their own KL; the tilts lie on it."""
    pi_ref, P, r = ref.random_problem(42, 4, 8, kind=kind, concentration=0.7)
    rng = np.random.default_rng(0)
    pols = []
    for beta in (0.02, 0.1, 0.5):
        pols.append(games.wind_equilibrium(pi_ref, P, beta))
        with warnings.catch_warnings():  # a non-converged iterate is still a policy: it must lie below too
            warnings.simplefilter("ignore", RuntimeWarning)
            pols.append(games.log_win_rate_equilibrium(pi_ref, P, beta, max_steps=2000))
        pols.extend(games.exact_wind(pi_ref, P, beta, 1.0, 12, return_trajectory=True)[1::3])
    pols.extend(games.exact_wind(pi_ref, P, 0.0, 2.0, 12, return_trajectory=True)[1::3])
    for n, alpha in ((2, 0.0), (4, 0.0), (4, 0.3)):
        pols.extend(games.iterative_bon(pi_ref, P, n, alpha, 6, return_trajectory=True)[1:])
        pols.append(games.best_of_n(pi_ref, P, n))
    if r is not None:
        pols.extend(games.best_of_n_reward(pi_ref, r, n) for n in (2, 3, 8))
    pols.extend(rng.dirichlet(np.ones(8), size=4) for _ in range(10))
    kl, win = _points(pols, pi_ref, P)
    front = np.asarray(games.frontier_win_rate_at_kl(pi_ref, P, kl))
    assert np.all(win <= front + 1e-9), np.max(win - front)
    # The check is tight: the tilts themselves are on the frontier.
    w = ref.win_rate(P, pi_ref)
    tilts = [ref.softmax(np.log(pi_ref) + lam * w) for lam in (0.7, 4.0, 20.0)]
    kl_t, win_t = _points(tilts, pi_ref, P)
    np.testing.assert_allclose(games.frontier_win_rate_at_kl(pi_ref, P, kl_t), win_t, atol=1e-9)


def test_best_of_n_kl_for_distinct_rewards(x64):
    """KL(BoN_n(pi) || pi) -> log n - (n-1)/n for distinct rewards as pi's atoms get small (Y = 1500 uniform),
    and BoN_n lies just below the frontier (BoNBoN's near-optimality), not above it."""
    Y = 1500
    pi_ref = np.full((1, Y), 1.0 / Y)
    r = np.arange(Y, dtype=np.float64)[None]
    d = r[:, :, None] - r[:, None, :]
    P = np.where(d > 0, 1.0, np.where(d == 0, 0.5, 0.0))
    for n in (2, 4, 8):
        bon = games.best_of_n_reward(pi_ref, r, n)
        kl = float(games.kl(bon, pi_ref)[0])
        assert kl == pytest.approx(float(mc.best_of_n_kl(n)), abs=2e-3)
        win = float(games.policy_win_rate(bon, pi_ref, P))
        assert win == pytest.approx(n / (n + 1), abs=1e-3)  # BoNBoN: win rate n / (n + 1)
        gap = float(games.frontier_win_rate_at_kl(pi_ref, P, [kl])[0]) - win
        assert 0.0 <= gap < 0.02, gap


def test_frontier_accepts_lists_and_rejects_bad_lambdas():
    pi_ref, P, _ = ref.random_problem(43, 2, 3)
    kl, win = games.win_rate_frontier(pi_ref.tolist(), P.tolist(), [0.0, 1.0])
    assert kl.shape == win.shape == (2,)
    with pytest.raises(ValueError, match="lambdas"):
        games.win_rate_frontier(pi_ref, P, [-1.0])
    with pytest.raises(ValueError, match="lambdas"):
        games.win_rate_frontier(pi_ref, P, [[1.0]])
    with pytest.raises(ValueError, match="kl_budgets"):
        games.frontier_win_rate_at_kl(pi_ref, P, [np.nan])
    with pytest.raises(ValueError, match="P"):
        games.win_rate_frontier(pi_ref, P[:, :2, :2], [1.0])

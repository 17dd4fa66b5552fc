"""Monte Carlo frontier (wind_jax.monte_carlo_frontier) against the exact tabular frontier (wind_jax.games), calibration of
its delta-method standard errors by repetition, and the best-of-n points against exact tabular BoN."""

import numpy as np
import pytest

from tests.games import _reference as ref
from wind_jax import monte_carlo_frontier as mc
from wind_jax import games

LAMBDAS = np.array([0.0, 1.0, 4.0, 10.0, 25.0])


def _draw(rng, pi_ref, w_ref, M):
    """M samples per prompt from pi_ref and their exact w_ref values: [X, M]."""
    idx = np.stack([rng.choice(pi_ref.shape[1], size=M, p=p) for p in pi_ref])
    return np.take_along_axis(w_ref, idx, axis=1)


@pytest.mark.parametrize("kind", ["nontransitive", "bradley_terry"])
def test_mc_frontier_matches_exact_within_error_bars(x64, kind):
    pi_ref, P, _ = ref.random_problem(50, 6, 12, kind=kind, concentration=0.5)
    w_ref = ref.win_rate(P, pi_ref)
    est = mc.mc_frontier(_draw(np.random.default_rng(1), pi_ref, w_ref, 3000), LAMBDAS)
    kl, win = (np.asarray(a) for a in games.win_rate_frontier(pi_ref, P, LAMBDAS))
    assert np.all(np.abs(est.kl - kl) <= 4 * est.kl_se + 1e-12), (est.kl - kl) / np.maximum(est.kl_se, 1e-300)
    assert np.all(np.abs(est.win_rate - win) <= 4 * est.win_rate_se + 1e-12)
    assert est.kl_se[0] == 0 and est.kl[0] == 0  # lambda = 0: pi_ref itself
    assert np.all(est.kl_se[1:] > 0) and np.all(est.kl_se[1:] < 0.05)


@pytest.mark.parametrize("duels", [None, 6])
def test_standard_errors_are_calibrated(duels):
    """Over 400 independent repetitions the spread of the estimates matches the reported SE (within 20 %),
    with exact w_ref and with w estimated from `duels` fresh Bernoulli duels per sample (i.i.d. pairs, so
    the influence-function SE already contains the duel noise)."""
    pi_ref, P, _ = ref.random_problem(51, 2, 10, kind="bradley_terry", concentration=0.6)
    w_ref = ref.win_rate(P, pi_ref)
    rng = np.random.default_rng(2)
    lam = np.array([3.0, 12.0])
    ests, kl_se, win_se = [], [], []
    for _ in range(400):
        w = _draw(rng, pi_ref, w_ref, 150)
        if duels is not None:
            w = rng.binomial(duels, w) / duels
        e = mc.mc_frontier(w, lam)
        ests.append((e.kl, e.win_rate))
        kl_se.append(e.kl_se)
        win_se.append(e.win_rate_se)
    ests = np.asarray(ests)  # [R, 2, L]
    ratio_kl = ests[:, 0].std(0) / np.sqrt(np.mean(np.square(kl_se), 0))
    ratio_win = ests[:, 1].std(0) / np.sqrt(np.mean(np.square(win_se), 0))
    assert np.all((ratio_kl > 0.8) & (ratio_kl < 1.25)), ratio_kl
    assert np.all((ratio_win > 0.8) & (ratio_win < 1.25)), ratio_win


def test_bracket_from_duel_counts_contains_the_exact_frontier(x64):
    """With w_ref estimated from k = 4 duels per sample, the self-evaluated tilt lies ABOVE the exact frontier
    (winner's curse) and the cross-fitted one (exact hypergeometric split of the duels) lies BELOW it."""
    pi_ref, P, _ = ref.random_problem(52, 8, 12, kind="nontransitive", concentration=0.5)
    w_ref = ref.win_rate(P, pi_ref)
    rng = np.random.default_rng(3)
    w = _draw(rng, pi_ref, w_ref, 2000)
    k = np.full(w.shape, 4)
    wins = rng.binomial(k, w)
    lam = np.array([2.0, 6.0, 15.0])
    upper, lower = mc.mc_frontier_bracket(wins, k, lam)
    front_up = np.asarray(games.frontier_win_rate_at_kl(pi_ref, P, upper.kl))
    front_lo = np.asarray(games.frontier_win_rate_at_kl(pi_ref, P, lower.kl))
    assert np.all(upper.win_rate >= front_up - 3 * upper.win_rate_se), upper.win_rate - front_up
    assert np.all(lower.win_rate <= front_lo + 3 * lower.win_rate_se), lower.win_rate - front_lo
    w_a, w_b = mc.split_duels(wins, k, np.random.default_rng(0))
    np.testing.assert_allclose(2 * w_a + 2 * w_b, wins)  # the halves add up to the observed wins
    assert abs(np.corrcoef((w_a - w).ravel(), (w_b - w).ravel())[0, 1]) < 0.02  # independent given w


def test_best_of_n_points_match_exact_tabular_bon(x64):
    """Distinct rewards (w_ref strictly increasing in r): the U-statistic BoN win rate matches the exact
    BoN_n(pi_ref) win rate (BOND Thm 1, wind_jax.games) within 4 SE; the KL is log n - (n-1)/n."""
    rng = np.random.default_rng(4)
    X, Y = 40, 30
    pi_ref = rng.dirichlet(np.ones(Y), size=X)
    r = rng.standard_normal((X, Y))
    d = r[:, :, None] - r[:, None, :]
    P = np.where(d > 0, 1.0, np.where(d == 0, 0.5, 0.0))
    w_ref = ref.win_rate(P, pi_ref)
    ns = [2, 4, 16]
    pts = mc.best_of_n_points(_draw(rng, pi_ref, w_ref, 64), ns)
    for n, win, se in zip(ns, pts.win_rate, pts.win_rate_se):
        exact = float(games.policy_win_rate(games.best_of_n_reward(pi_ref, r, n), pi_ref, P))
        assert abs(win - exact) <= 4 * se, (n, win, exact, se)
    np.testing.assert_allclose(pts.kl, [np.log(n) - (n - 1) / n for n in ns])
    # With M = n the U-statistic is the per-prompt maximum.
    w = rng.random((3, 5))
    np.testing.assert_allclose(mc.best_of_n_points(w, [5]).win_rate, w.max(-1).mean())


def test_gap_below_frontier_and_validation():
    fk, fw = np.array([0.0, 1.0, 2.0]), np.array([0.5, 0.7, 0.8])
    np.testing.assert_allclose(mc.gap_below_frontier([0.5, 1.5], [0.55, 0.8], fk, fw), [0.05, -0.05])
    assert np.isnan(mc.gap_below_frontier([3.0], [0.5], fk, fw)[0])
    with pytest.raises(ValueError, match="win_rates"):
        mc.mc_frontier(np.full((2, 3), 1.5), [1.0])
    with pytest.raises(ValueError, match="lambdas"):
        mc.mc_frontier(np.full((2, 3), 0.5), [-1.0])
    with pytest.raises(ValueError, match="duel_counts"):
        mc.split_duels(np.ones((2, 3)), np.ones((2, 3)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="eval_win_rates"):
        mc.mc_frontier(np.full((2, 3), 0.5), [1.0], eval_win_rates=np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="ns"):
        mc.best_of_n_points(np.full((2, 3), 0.5), [4])
    with pytest.raises(ValueError, match="frontier_kl"):
        mc.gap_below_frontier([1.0], [0.5], [1.0, 0.0], [0.5, 0.6])

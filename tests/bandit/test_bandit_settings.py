"""wind_jax.bandit.settings: the bandit study's games and policy classes, and the exact references."""
import os

import jax
import numpy as np
import pytest

from wind_jax import games
from wind_jax.bandit import settings


@pytest.mark.slow  # equilibria and a floor fit per game: ~10 s each
@pytest.mark.parametrize("game", settings.GAMES)
def test_settings_give_a_valid_game_and_their_policy_class(game):
    X, Y = 3, 5
    key = jax.random.key(0)
    for kind in settings.POLICIES:
        P, policy, theta = settings.make_setting(game, kind, key, X, Y, 2.0, misspecified_dim=6)
        P = np.asarray(P)
        assert P.shape == (X, Y, Y) and np.all((P >= 0) & (P <= 1))
        np.testing.assert_array_equal(P + np.swapaxes(P, 1, 2), 1.0)  # exactly, in float32
        logp = np.asarray(policy.log_probs(theta))
        assert logp.shape == (X, Y) and np.allclose(np.exp(logp).sum(-1), 1.0, atol=1e-5)
        if kind == "misspecified":   # padded to the realizable width; theta is zero on the padding
            assert theta.shape == (X * Y + 8,) and not np.any(np.asarray(theta)[6:])
    # the features do not depend on the game: the same policy (and theta_ref's key differs only by the game)
    other = settings.GAMES[1 - settings.GAMES.index(game)]
    f1 = settings.make_setting(game, "realizable", key, X, Y, 2.0)[1]
    f2 = settings.make_setting(other, "realizable", key, X, Y, 2.0)[1]
    np.testing.assert_array_equal(np.asarray(f1.features), np.asarray(f2.features))


def test_unknown_settings_and_bad_dimensions_are_refused():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="game must be one of"):
        settings.make_setting("tournament", "realizable", key, 3, 5, 2.0)
    with pytest.raises(ValueError, match="policy one of"):
        settings.make_setting("nontransitive", "linear", key, 3, 5, 2.0)
    with pytest.raises(ValueError, match="misspecified_dim"):
        settings.make_setting("nontransitive", "misspecified", key, 3, 5, 2.0, misspecified_dim=24)


def test_equilibrium_is_the_wind_fixed_point_of_the_policy_at_theta_ref():
    P, policy, theta = settings.make_setting("bradley_terry", "realizable", jax.random.key(1), 3, 5, 2.0)
    pi_ref, pi_star = settings.equilibrium(policy, theta, P, beta=0.2)
    assert pi_ref.dtype == pi_star.dtype == np.float64
    np.testing.assert_allclose(pi_ref, np.exp(np.asarray(policy.log_probs(theta))), rtol=1e-5)
    np.testing.assert_allclose(pi_star.sum(-1), 1.0, atol=1e-12)
    with jax.enable_x64(True):   # exact WIND started at pi*_beta stays there
        step = np.asarray(games.exact_wind(pi_ref, np.asarray(P, np.float64), 0.2, 1.0, 1, pi_init=pi_star))
    np.testing.assert_allclose(step, pi_star, atol=1e-8)
    assert not np.allclose(pi_star, pi_ref, atol=1e-3)   # the preference moved it


def test_cheap_codegen_adds_its_flags_once(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    settings.use_cheap_codegen()
    settings.use_cheap_codegen()
    flags = os.environ["XLA_FLAGS"].split()
    assert flags == ["--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0",
                     "--xla_llvm_disable_expensive_passes=true"]

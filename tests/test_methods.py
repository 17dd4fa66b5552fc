"""wind_jax.methods: for fixed tiny inputs, the exact rows, targets and query counts of every record."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wind_jax import losses
from wind_jax import methods as M


def _np(rows):
    return ({k: np.asarray(v) for k, v in rows.index.items()}, {k: np.asarray(v) for k, v in rows.values.items()})


def test_counts_per_prompt():
    """(samples, queries) per prompt at each method's default n, and round robins at other n."""
    expected = {"wind_sq": (2, 1), "wind_sq_offset": (2, 1), "wind_kl": (2, 1), "wind_nce": (2, 1),
                "sppo": (5, 10), "sppo_beta": (5, 10), "jbond": (3, 3), "bonbon": (8, 28), "dpo": (2, 1),
                "bon_distill": (4, 6), "bon_knockout": (4, 3), "bonbon_best_worst": (8, 10),
                "dpo_best_worst": (4, 4), "sppo_hard": (5, 10), "bonbon_sigmoid": (8, 28), "ipo": (2, 1)}
    assert set(expected) == set(M.METHODS)
    for name, (samples, queries) in expected.items():
        m = M.get_method(name)
        n = m.n()
        assert (m.total_samples(n), m.queries(n)) == (samples, queries), name
    for k in (2, 3, 6):
        assert M.get_method("dpo").queries(k) == k * (k - 1) // 2 == len(set(M.round_robin(k)))
    for k in (2, 4, 8):
        assert M.get_method("bon_knockout").queries(k) == k - 1
        assert M.get_method("dpo_best_worst").queries(k) == 3 * k // 2 - 2
    with pytest.raises(ValueError, match="exactly 2"):
        M.get_method("wind_sq").n(4)
    with pytest.raises(ValueError, match="unknown method"):
        M.get_method("nope")


def test_offset_and_sources_follow_the_loss():
    for m in M.METHODS.values():
        assert m.needs_offset == ("offset" in losses.get_loss(m.loss).policy_keys)
        names = [k for k in m.spec.policy_keys if k != "offset"]
        assert set(names) <= set(m.sources), m.name
    assert [m.name for m in M.METHODS.values() if m.needs_offset] == ["wind_sq_offset", "wind_nce"]
    assert dict(M.get_method("sppo").fixed_hparams) == {"beta": 0.0}
    assert not M.get_method("sppo_beta").fixed_hparams


def test_wind_rows_both_duellists():
    pref = jnp.asarray([[1.0], [0.0], [0.3]])
    index, values = _np(M.get_method("wind_sq").assemble(M.Tournament(pref), 2, {}))
    np.testing.assert_array_equal(index["y"], [[0, 1]] * 3)
    np.testing.assert_allclose(values["target"], [[1.0, 0.0], [0.0, 1.0], [0.3, 0.7]])
    index, values = _np(M.get_method("wind_kl").assemble(M.Tournament(pref), 2, {}))
    np.testing.assert_array_equal(index["y"], [[0]] * 3)
    np.testing.assert_array_equal(index["y_prime"], [[1]] * 3)
    np.testing.assert_allclose(values["target"], [[1.0], [0.0], [0.3]])


def _pref_from_matrix(W):
    """[B, K, K] 'i beats j' matrices -> the [B, Q] answers of the round-robin pairs."""
    K = W.shape[1]
    return jnp.asarray([[W[b, i, j] for i, j in M.round_robin(K)] for b in range(W.shape[0])], jnp.float32)


def test_round_robin_rows_by_hand():
    # prompt 0: sample 2 beats everyone, sample 0 loses to everyone; prompt 1: soft probabilities
    hard = np.array([[0.5, 0, 0], [1, 0.5, 0], [1, 1, 0.5]])
    soft = np.array([[0.5, 0.7, 0.4], [0.3, 0.5, 0.2], [0.6, 0.8, 0.5]])
    pref = _pref_from_matrix(np.stack([hard, soft]))
    w = np.asarray(M.win_rates(pref, 3))
    np.testing.assert_allclose(w, np.stack([hard, soft]).mean(2), atol=1e-7)  # diagonal 1/2 included
    index, values = _np(M.get_method("sppo").assemble(M.Tournament(pref), 3, {}))
    np.testing.assert_array_equal(index["chosen"], [[2], [2]])
    np.testing.assert_array_equal(index["rejected"], [[0], [1]])
    np.testing.assert_allclose(values["target_chosen"], [[2.5 / 3], [1.9 / 3]], atol=1e-6)
    np.testing.assert_allclose(values["target_rejected"], [[0.5 / 3], [1.0 / 3]], atol=1e-6)
    for name in ("dpo", "bonbon"):
        index, values = _np(M.get_method(name).assemble(M.Tournament(pref), 3, {}))
        np.testing.assert_array_equal(index["chosen"], [[2], [2]])
        np.testing.assert_array_equal(index["rejected"], [[0], [1]])
        assert not values
    index, values = _np(M.get_method("bon_distill").assemble(M.Tournament(pref), 3, {}))
    np.testing.assert_array_equal(index["y"], [[2], [2]])
    np.testing.assert_allclose(values["target"], [[2.5 / 3], [1.9 / 3]], atol=1e-6)


def test_win_matrix_is_antisymmetric():
    rng = np.random.default_rng(0)
    pref = jnp.asarray(rng.uniform(size=(4, 10)), jnp.float32)
    W = np.asarray(M.win_matrix(pref, 5))
    np.testing.assert_allclose(W + W.transpose(0, 2, 1), 1.0, atol=1e-7)
    for q, (i, j) in enumerate(itertools.combinations(range(5), 2)):
        np.testing.assert_allclose(W[:, i, j], np.asarray(pref[:, q]))


def test_jbond_rows():
    # pairs: (y, a1), (y, a2), (a1, a2)
    pref = jnp.asarray([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.2, 0.5, 0.5]])
    index, values = _np(M.get_method("jbond").assemble(M.Tournament(pref), 3, {}))
    np.testing.assert_array_equal(index["y"], [[0], [0], [0]])
    np.testing.assert_array_equal(index["best"], [[1], [2], [1]])   # a1 wins ties at 1/2
    np.testing.assert_allclose(values["lost_to_both"], [[1.0], [0.0], [0.4]], atol=1e-7)


def test_bon_mixing_weight_is_alg1_importance_weight():
    """weight ∝ (pi_ref / (pi_t w^(n-1)))^alpha (MATH.md Alg. 1, working form), up to a constant."""
    rng = np.random.default_rng(1)
    prev, ref = rng.normal(-5, 1, 6), rng.normal(-5, 1, 6)
    w = rng.uniform(0.2, 0.9, 6)
    batch = {"prev_y": jnp.asarray(prev), "ref_y": jnp.asarray(ref), "target": jnp.asarray(w)}
    for alpha in (0.0, 0.3):
        got = np.asarray(M.get_method("bon_distill").weight(batch, {"alpha": alpha, "n": 4.0}))
        want = np.exp(alpha * (ref - prev - 3 * np.log(w)))
        np.testing.assert_allclose(got / got.sum(), want / want.sum(), rtol=1e-5)
    assert math.isclose(float(np.ptp(np.asarray(M.get_method("bon_distill").weight(batch, {"alpha": 0.0, "n": 4.0})))),
                        0.0, abs_tol=1e-7)


def _reward_duel(reward):
    """duel(key, i, j) of a deterministic reward preference over sample indices (ties: a coin)."""
    def duel(key, i, j):
        ri, rj = reward[np.arange(len(reward))[:, None], i], reward[np.arange(len(reward))[:, None], j]
        coin = jax.random.bernoulli(key, 0.5, ri.shape)
        return jnp.where(ri == rj, coin, ri > rj).astype(jnp.float32)
    return duel


@pytest.mark.parametrize("n", [2, 4, 8])
def test_tournaments_are_exact_under_a_deterministic_reward(n):
    """Knockout -> the best sample; best-vs-worst -> the best and the worst, with the derived duel counts."""
    rng = np.random.default_rng(n)
    reward = jnp.asarray(np.stack([rng.permutation(n) for _ in range(16)]), jnp.float32)
    calls = []
    duel = _reward_duel(reward)
    counting = lambda k, i, j: (calls.append(i.shape[1]), duel(k, i, j))[1]  # noqa: E731
    t = M.KNOCKOUT.run(counting, jax.random.key(0), n, 16)
    np.testing.assert_array_equal(np.asarray(t.best), np.argmax(reward, 1))
    assert sum(calls) == M.KNOCKOUT.queries(n) == n - 1
    calls.clear()
    t = M.BEST_VS_WORST.run(counting, jax.random.key(1), n, 16)
    np.testing.assert_array_equal(np.asarray(t.best), np.argmax(reward, 1))
    np.testing.assert_array_equal(np.asarray(t.worst), np.argmin(reward, 1))
    assert sum(calls) == M.BEST_VS_WORST.queries(n) == 3 * n // 2 - 2
    rows = M.get_method("dpo_best_worst").assemble(t, n, {})
    np.testing.assert_array_equal(np.asarray(rows.index["chosen"])[:, 0], np.argmax(reward, 1))


def test_knockout_of_two_is_bon2_in_distribution():
    """n = 2: the winner is a BoN_2 sample, P(winner = i) = P(i beats the other) (Monte Carlo, 4 sigma)."""
    p = 0.8  # sample 0 beats sample 1 with probability p
    duel = lambda key, i, j: jax.random.bernoulli(key, jnp.where(i == 0, p, 1 - p)).astype(jnp.float32)  # noqa: E731
    t = M.KNOCKOUT.run(duel, jax.random.key(3), 2, 20000)
    freq = float(np.mean(np.asarray(t.best) == 0))
    assert abs(freq - p) < 4 * np.sqrt(p * (1 - p) / 20000)


def test_method_ranges_are_checked_naming_the_hparam():
    with pytest.raises(ValueError, match="beta=0"):
        M.get_method("dpo").check_hparams({"beta": 0.0})
    with pytest.raises(ValueError, match="alpha=1"):
        M.get_method("bon_distill").check_hparams({"alpha": 1.0})
    M.get_method("sppo").check_hparams({"beta": 0.0})
    M.get_method("bon_distill").check_hparams({"alpha": 0.0})

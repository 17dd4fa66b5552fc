"""Tests of wind_jax.bandit: exact counting, the Bernoulli oracle, the fitted WIND step, a short run."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wind_jax import games, losses
from wind_jax.bandit import algorithms, env, policies

X, Y = 3, 5


def _bt_game(key, X=X, Y=Y, scale=2.0):
    _, P = games.bradley_terry_preference(key, X, Y, scale=scale)
    return 0.5 * (P + 1.0 - jnp.swapaxes(P, 1, 2))


def _nt_game(key, X=X, Y=Y):
    return games.nontransitive_preference(key, X, Y, scale=2.0)


# ------------------------------------------------------------------------------------------ the oracle
def test_duel_frequencies_match_preference():
    """ell ~ Bernoulli(P[x, y, y']): empirical frequencies within 5 standard errors (N draws per pair)."""
    P = _nt_game(jax.random.key(0))
    x, y, yp = jnp.meshgrid(jnp.arange(X), jnp.arange(Y), jnp.arange(Y), indexing="ij")
    N = 4000
    ells, counts = jax.jit(jax.vmap(lambda k: env.duel(k, P, x, y, yp)))(jax.random.split(jax.random.key(1), N))
    freq = np.asarray(ells).mean(0)
    p = np.asarray(P, np.float64)
    se = np.sqrt(np.maximum(p * (1 - p), 1e-12) / N)
    assert np.all(np.abs(freq - p) <= 5 * se + 1e-12)
    assert int(counts.queries[0]) == X * Y * Y and int(counts.samples[0]) == 0


def test_sampling_and_knockout_frequencies():
    """Responses follow pi; the winner of one duel between two pi-samples follows BoN_2(pi) = 2 pi w_pi."""
    P = _nt_game(jax.random.key(2))
    pi = games.dirichlet_policy(jax.random.key(3), X, Y, 1.0)
    log_pi = jnp.log(pi)
    N = 20000
    prompts = jnp.repeat(jnp.arange(X), N)

    @jax.jit
    def draw(k):
        k1, k2 = jax.random.split(k)
        ys, c = env.sample_responses(k1, log_pi, prompts, 2)
        return ys, c, *env.knockout_winner(k2, P, prompts, ys)

    ys, c, winner, cw = draw(jax.random.key(4))
    assert int(c.samples) == ys.size == 2 * X * N and int(c.queries) == 0
    assert int(cw.queries) == X * N and int(cw.samples) == 0
    for sample, expected in ((ys[:, 0], pi), (winner, games.best_of_n(pi, P, 2))):
        freq = np.zeros((X, Y))
        np.add.at(freq, (np.asarray(prompts), np.asarray(sample)), 1.0 / N)
        q = np.asarray(expected, np.float64)
        assert np.all(np.abs(freq - q) <= 5 * np.sqrt(q * (1 - q) / N) + 1e-3 / N)


def test_best_and_worst_exact_for_deterministic_reward():
    r, P = games.reward_preference(jax.random.key(6), 2, 16, num_levels=1000)
    ys = jax.random.randint(jax.random.key(7), (2, 8), 0, 16)
    prompts = jnp.arange(2)
    best, worst, c = jax.jit(env.best_and_worst)(jax.random.key(8), P, prompts, ys)
    rr = np.asarray(r)[np.arange(2)[:, None], np.asarray(ys)]
    np.testing.assert_array_equal(np.asarray(r)[np.arange(2), np.asarray(best)], rr.max(1))
    np.testing.assert_array_equal(np.asarray(r)[np.arange(2), np.asarray(worst)], rr.min(1))
    assert int(c.queries) == 2 * (3 * 8 // 2 - 2)
    L, cr = jax.jit(env.round_robin)(jax.random.key(9), P, prompts, ys[:, :5])
    np.testing.assert_allclose(np.asarray(L + jnp.swapaxes(L, 1, 2)), 1.0)
    assert int(cr.queries) == 2 * 10


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="kind"):
        policies.random_features(jax.random.key(0), 2, 3, kind="tabular")
    with pytest.raises(ValueError, match="power-of-2"):
        env.knockout_winner(jax.random.key(0), _bt_game(jax.random.key(0)), jnp.arange(2), jnp.zeros((2, 3), int))
    with pytest.raises(ValueError, match="beta"):
        algorithms.make_methods(0.0, 1.0)
    with pytest.raises(ValueError, match="P \\+ P\\^T"):
        env.validate_preference(jnp.full((1, 2, 2), 0.7))
    pol = policies.LogLinearPolicy(policies.random_features(jax.random.key(0), X, Y, "misspecified", 3))
    m = algorithms.make_methods(0.2, 1.0)["wind_sq"]
    bad = algorithms.Method("bad", "wind_sq", m.draw, 2, 1, "", {"gamma": 1.0})
    with pytest.raises(ValueError, match="gamma"):
        algorithms.make_outer_step(pol, bad, 4, optax.adam(0.1), 2)
    with pytest.raises(ValueError, match="batch_size"):
        algorithms.make_outer_step(pol, m, 0, optax.adam(0.1), 2)


# ------------------------------------------------------------------------------------- exact counting
def test_every_method_counts_exactly(monkeypatch):
    """Counts returned by each method's draw equal (a) what the sampler and the oracle actually produced
    (instrumented independently) and (b) the documented per-prompt costs times the number of prompts."""
    produced = {"samples": 0, "queries": 0}
    real_sample, real_duel = env.sample_responses, env.duel

    def sample(*a, **k):
        ys, c = real_sample(*a, **k)
        produced["samples"] += ys.size
        return ys, c

    def duel(*a, **k):
        ell, c = real_duel(*a, **k)
        produced["queries"] += ell.size
        return ell, c

    monkeypatch.setattr(env, "sample_responses", sample)
    monkeypatch.setattr(env, "duel", duel)
    P = _bt_game(jax.random.key(0))
    log_pi = jnp.log(games.dirichlet_policy(jax.random.key(1), X, Y, 1.0))
    B = 7
    prompts = jax.random.randint(jax.random.key(2), (B,), 0, X)
    for name, m in algorithms.make_methods(0.2, 1.0).items():
        produced.update(samples=0, queries=0)
        draw = jax.jit(lambda *a, d=m.draw: d(*a))(jax.random.key(3), P, prompts, log_pi, log_pi, log_pi)  # counted while tracing
        assert int(draw.counts.samples) == produced["samples"] == B * m.samples_per_prompt, name
        assert int(draw.counts.queries) == produced["queries"] == B * m.queries_per_prompt, name
        spec = losses.get_loss(m.loss)
        batch = algorithms.assemble_batch(draw, {"prev": log_pi, "ref": log_pi, "anchor": log_pi}, spec.batch_keys)
        logps = algorithms.policy_logps(log_pi, jnp.zeros(X), draw, spec.policy_keys)
        losses.compute_loss(spec, logps, batch, m.hparams)  # keys, shapes, target ranges validated


# ------------------------------------------------------------------------- fitted step = exact WIND step
def test_fit_wind_sq_offset_reproduces_exact_wind_step():
    """Exact win-rate targets on every (x, y), a realizable log-linear policy, pi_t != pi_ref: the fitted
    pi_{t+1} equals games.wind_step (and a NumPy float64 re-derivation of the MD step)."""
    beta, eta = 0.3, 1.0
    P = _nt_game(jax.random.key(10))
    pol = policies.LogLinearPolicy(policies.random_features(jax.random.key(11), X, Y, "realizable", 4))
    theta_ref, theta_t = pol.init(jax.random.key(12)), pol.init(jax.random.key(13))
    log_ref, log_t = pol.log_probs(theta_ref), pol.log_probs(theta_t)
    pi_t, pi_ref = jnp.exp(log_t), jnp.exp(log_ref)
    w = games.win_rate(P, pi_t)
    xs, ys = jnp.meshgrid(jnp.arange(X), jnp.arange(Y), indexing="ij")
    draw = algorithms.Draw(xs.ravel(), {"y": ys.ravel()}, {"target": w[xs, ys].ravel()}, env.Counts.zero())
    spec = losses.get_loss("wind_sq_offset")
    batch = algorithms.assemble_batch(draw, {"prev": log_t, "ref": log_ref}, spec.batch_keys)
    params = {"policy": theta_t, "offset": jnp.zeros(X)}
    fitted, trace = jax.jit(lambda p: algorithms.fit(
        pol, p, draw, batch, spec, {"beta": beta, "eta": eta}, optax.lbfgs(), 300))(params)
    assert float(trace[-1]) < 1e-9
    pi_fit = np.exp(np.asarray(pol.log_probs(fitted["policy"]), np.float64))
    np.testing.assert_allclose(pi_fit, np.asarray(games.wind_step(pi_t, pi_ref, P, beta, eta)), atol=2e-5)
    # independent float64 reference of the MD step (MATH.md, Alg. 2)
    lt, lr, w64 = (np.asarray(a, np.float64) for a in (log_t, log_ref, w))
    logits = (1 - eta * beta) * lt + eta * beta * lr + eta * w64
    ref_step = np.exp(logits - logits.max(-1, keepdims=True))
    ref_step /= ref_step.sum(-1, keepdims=True)
    np.testing.assert_allclose(pi_fit, ref_step, atol=2e-5)


def test_reference_mixing_is_geometric_for_log_linear():
    pol = policies.LogLinearPolicy(policies.random_features(jax.random.key(0), X, Y, "misspecified", 3))
    a, th, th_ref = 0.3, pol.init(jax.random.key(1)), pol.init(jax.random.key(2))
    mixed = pol.log_probs((1 - a) * th + a * th_ref)
    geo = jax.nn.log_softmax((1 - a) * pol.log_probs(th) + a * pol.log_probs(th_ref), axis=-1)
    np.testing.assert_allclose(mixed, geo, atol=1e-5)
    for n in (2, 4):
        assert algorithms.bon_mixing_for(0.2, n) == pytest.approx(games.beta_to_mixing(n, 0.4))


def test_mlp_policy_normalized_and_vmappable():
    pol = policies.MLPPolicy(policies.random_features(jax.random.key(0), X, Y, "misspecified", 4), hidden=8)
    states = jax.vmap(pol.init)(jax.random.split(jax.random.key(1), 2))
    lp = jax.jit(jax.vmap(pol.log_probs))(states)
    assert lp.shape == (2, X, Y)
    np.testing.assert_allclose(np.exp(np.asarray(lp)).sum(-1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------------- short WIND run
@pytest.mark.parametrize("name", ["wind_sq_offset", "wind_kl"])
def test_short_wind_run_decreases_kl_to_equilibrium(name):
    """Alg. 3 with single Bernoulli duels on a small BT game, realizable policy, 3 vmapped seeds:
    KL(pi*_beta || pi_T) falls below a third of KL(pi*_beta || pi_ref); counts add up exactly."""
    beta, eta, B, T = 0.3, 1.0, 256, 12
    P = _bt_game(jax.random.key(20), X=2, Y=4)
    pol = policies.LogLinearPolicy(policies.random_features(jax.random.key(21), 2, 4, "realizable", 2))
    theta_ref = pol.init(jax.random.key(22))
    pi_ref = jnp.exp(pol.log_probs(theta_ref))
    pi_star = games.wind_equilibrium(pi_ref, P, beta)
    m = algorithms.make_methods(beta, eta)[name]
    step = jax.jit(jax.vmap(algorithms.make_outer_step(pol, m, B, optax.adam(0.05), 30), in_axes=(0, None, None)))
    state = jax.vmap(lambda k: algorithms.init_state(theta_ref, 2, k))(jax.random.split(jax.random.key(23), 3))

    def kl_star(st):
        return jax.vmap(lambda th: algorithms.exact_metrics(pol.log_probs(th), jnp.log(pi_ref), P, pi_star)[
            "kl_to_equilibrium"])(st.params["policy"])

    kl0 = np.asarray(kl_star(state))
    for _ in range(T):
        state, info = step(state, P, theta_ref)
    klT = np.asarray(kl_star(state))
    assert np.all(klT < kl0 / 3), (kl0, klT)
    np.testing.assert_array_equal(np.asarray(state.counts.samples), T * B * 2)
    np.testing.assert_array_equal(np.asarray(state.counts.queries), T * B * 1)

"""Tests of wind_jax.bandit: exact counting, the Bernoulli oracle, the fitted WIND step, whole compiled runs
(equal to the step-by-step loop, one compilation for every game / feature table / method_params), the
best-in-class KL. Compile time dominates these tests: programs are compiled with cheap CPU codegen (same
math) and shared through module-scoped fixtures."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wind_jax import games, losses, methods
from wind_jax.bandit import algorithms, env, policies

X, Y = 3, 5
# Cheaper XLA:CPU code generation: compile time dominates tiny programs; the math is unchanged.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                   "xla_llvm_disable_expensive_passes": True})


# Inputs are built by cheaply compiled functions: eager random ops would each compile threefry at the
# default optimization level (seconds apiece on a shared 2-core machine).
@functools.partial(jit, static_argnums=(1, 2))
def _bt_game(key, X=X, Y=Y):
    _, P = games.bradley_terry_preference(key, X, Y, scale=2.0)
    return 0.5 * (P + 1.0 - jnp.swapaxes(P, 1, 2))


@functools.partial(jit, static_argnums=(1, 2))
def _nt_game(key, X=X, Y=Y):
    return games.nontransitive_preference(key, X, Y, scale=2.0)


_features = jit(policies.random_features, static_argnums=(1, 2, 3, 4))
_init = jit(lambda pol, key: pol.init(key))  # the policy is a pytree argument
_dirichlet = jit(games.dirichlet_policy, static_argnums=(1, 2, 3))
_randint = jit(jax.random.randint, static_argnums=(1, 2, 3))
_normal = jit(jax.random.normal, static_argnums=(1,))
_equilibrium = jit(games.wind_equilibrium, static_argnums=(2,))


# ------------------------------------------------------------------------------------------ the oracle
def test_duel_frequencies_match_preference():
    """ell ~ Bernoulli(P[x, y, y']): empirical frequencies within 5 standard errors (N draws per pair)."""
    P = _nt_game(jax.random.key(0))
    x, y, yp = jnp.meshgrid(jnp.arange(X), jnp.arange(Y), jnp.arange(Y), indexing="ij")
    N = 4000
    ells, counts = jit(jax.vmap(lambda k: env.duel(k, P, x, y, yp)))(jax.random.split(jax.random.key(1), N))
    freq = np.asarray(ells).mean(0)
    p = np.asarray(P, np.float64)
    se = np.sqrt(np.maximum(p * (1 - p), 1e-12) / N)
    assert np.all(np.abs(freq - p) <= 5 * se + 1e-12)
    assert int(counts.queries[0]) == X * Y * Y and int(counts.samples[0]) == 0


def test_sampling_and_knockout_frequencies():
    """Responses follow pi; the winner of one duel between two pi-samples follows BoN_2(pi) = 2 pi w_pi."""
    P = _nt_game(jax.random.key(2))
    pi = _dirichlet(jax.random.key(3), X, Y, 1.0)
    log_pi = jnp.log(pi)
    N = 20000
    prompts = jnp.repeat(jnp.arange(X), N)

    @jit
    def draw(k):
        k1, k2 = jax.random.split(k)
        ys, c = env.sample_responses(k1, log_pi, prompts, 2)
        pick = lambda i: jnp.take_along_axis(ys, i, 1)  # noqa: E731
        t = methods.KNOCKOUT.run(lambda k, i, j: env.duel(k, P, prompts[:, None], pick(i), pick(j))[0], k2, 2,
                                 prompts.shape[0])
        return ys, c, ys[jnp.arange(ys.shape[0]), t.best]

    ys, c, winner = draw(jax.random.key(4))
    assert int(c.samples) == ys.size == 2 * X * N and int(c.queries) == 0
    for sample, expected in ((ys[:, 0], pi), (winner, games.best_of_n(pi, P, 2))):
        freq = np.zeros((X, Y))
        np.add.at(freq, (np.asarray(prompts), np.asarray(sample)), 1.0 / N)
        q = np.asarray(expected, np.float64)
        assert np.all(np.abs(freq - q) <= 5 * np.sqrt(q * (1 - q) / N) + 1e-3 / N)


def test_best_and_worst_exact_for_deterministic_reward():
    r, P = jit(functools.partial(games.reward_preference, num_levels=1000), static_argnums=(1, 2))(
        jax.random.key(6), 2, 16)
    ys = _randint(jax.random.key(7), (2, 8), 0, 16)
    prompts = jnp.arange(2)
    asked = []

    def duel(k, i, j):
        asked.append(i.size)
        pick = lambda i: jnp.take_along_axis(ys, i, 1)  # noqa: E731
        return env.duel(k, P, prompts[:, None], pick(i), pick(j))[0]

    t = methods.BEST_VS_WORST.run(duel, jax.random.key(8), 8, 2)
    best, worst = ys[jnp.arange(2), t.best], ys[jnp.arange(2), t.worst]
    rr = np.asarray(r)[np.arange(2)[:, None], np.asarray(ys)]
    np.testing.assert_array_equal(np.asarray(r)[np.arange(2), np.asarray(best)], rr.max(1))
    np.testing.assert_array_equal(np.asarray(r)[np.arange(2), np.asarray(worst)], rr.min(1))
    assert sum(asked) == 2 * (3 * 8 // 2 - 2)
    asked.clear()
    t = methods.ROUND_ROBIN.run(duel, jax.random.key(9), 5, 2)
    L = methods.win_matrix(t.outcome, 5)
    np.testing.assert_allclose(np.asarray(L + jnp.swapaxes(L, 1, 2)), 1.0)
    assert sum(asked) == 2 * 10


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="kind"):
        policies.random_features(jax.random.key(0), 2, 3, kind="tabular")
    with pytest.raises(ValueError, match="power-of-2"):
        methods.KNOCKOUT.run(lambda k, i, j: jnp.zeros(i.shape), jax.random.key(0), 3, 2)
    with pytest.raises(ValueError, match="beta"):
        algorithms.make_methods(0.0, 1.0)
    with pytest.raises(ValueError, match="P \\+ P\\^T"):
        env.validate_preference(jnp.full((1, 2, 2), 0.7))
    pol = policies.LogLinearPolicy(jnp.zeros((X, Y, 3)))
    m = algorithms.make_methods(0.2, 1.0)["wind_sq"]
    bad = algorithms.Method("bad", m.record, 2, "", {"gamma": 1.0})
    with pytest.raises(ValueError, match="gamma"):
        algorithms.make_outer_step(pol, bad, 4, optax.adam(0.1), 2)
    with pytest.raises(ValueError, match="batch_size"):
        algorithms.make_outer_step(pol, m, 0, optax.adam(0.1), 2)
    with pytest.raises(ValueError, match="num_outer"):
        algorithms.make_run(m, 4, optax.adam(0.1), 2, 0)
    with pytest.raises(ValueError, match="num_inner"):
        algorithms.make_run(m, 4, optax.adam(0.1), 0, 2)
    with pytest.raises(ValueError, match="num_steps"):
        algorithms.best_in_class_kl(pol, jnp.zeros(3), jnp.full((X, Y), 1.0 / Y), num_steps=0)
    with pytest.raises(ValueError, match="features"):
        policies.LogLinearPolicy(jnp.zeros((2, 3)))


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
    log_pi = jnp.log(_dirichlet(jax.random.key(1), X, Y, 1.0))
    B = 7
    prompts = _randint(jax.random.key(2), (B,), 0, X)
    methods = algorithms.make_methods(0.2, 1.0)
    traced = {}  # what each method's draw produced, recorded while tracing (one program for all draws)

    @jit
    def all_draws(key):
        out = {}
        for name, m in methods.items():
            produced.update(samples=0, queries=0)
            draw = algorithms.draw(m, key, P, prompts, {"policy": log_pi, "reference": log_pi, "anchor": log_pi})
            traced[name] = dict(produced)
            spec = losses.get_loss(m.loss)
            batch = algorithms.assemble_batch(draw, {"prev": log_pi, "ref": log_pi, "anchor": log_pi},
                                              spec.batch_keys)
            out[name] = (draw, batch, algorithms.policy_logps(log_pi, jnp.zeros(X), draw, spec.policy_keys))
        return out

    for name, (draw, batch, logps) in all_draws(jax.random.key(3)).items():
        m = methods[name]
        assert int(draw.counts.samples) == traced[name]["samples"] == B * m.samples_per_prompt, name
        assert int(draw.counts.queries) == traced[name]["queries"] == B * m.queries_per_prompt, name
        losses.compute_loss(m.loss, logps, batch, m.hparams)  # keys, shapes, target ranges validated


# ------------------------------------------------------------------------- fitted step = exact WIND step
def test_fit_wind_sq_offset_reproduces_exact_wind_step():
    """Exact win-rate targets on every (x, y), a realizable log-linear policy, pi_t != pi_ref: the fitted
    pi_{t+1} equals games.wind_step (and a NumPy float64 re-derivation of the MD step)."""
    beta, eta = 0.3, 1.0
    P = _nt_game(jax.random.key(10))
    pol = policies.LogLinearPolicy(_features(jax.random.key(11), X, Y, "realizable", 4))
    theta_ref, theta_t = _init(pol, jax.random.key(12)), _init(pol, jax.random.key(13))
    log_ref, log_t = pol.log_probs(theta_ref), pol.log_probs(theta_t)
    pi_t, pi_ref = jnp.exp(log_t), jnp.exp(log_ref)
    w = games.win_rate(P, pi_t)
    xs, ys = jnp.meshgrid(jnp.arange(X), jnp.arange(Y), indexing="ij")
    draw = algorithms.Draw(xs.ravel(), {"y": ys.ravel()}, {"target": w[xs, ys].ravel()}, env.Counts.zero())
    spec = losses.get_loss("wind_sq_offset")
    batch = algorithms.assemble_batch(draw, {"prev": log_t, "ref": log_ref}, spec.batch_keys)
    params = {"policy": theta_t, "offset": jnp.zeros(X)}
    fitted, trace = jit(lambda p: algorithms.fit(
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
    pol = policies.LogLinearPolicy(_features(jax.random.key(0), X, Y, "misspecified", 3))
    a, th, th_ref = 0.3, _init(pol, jax.random.key(1)), _init(pol, jax.random.key(2))
    mixed = pol.log_probs((1 - a) * th + a * th_ref)
    geo = jax.nn.log_softmax((1 - a) * pol.log_probs(th) + a * pol.log_probs(th_ref), axis=-1)
    np.testing.assert_allclose(mixed, geo, atol=1e-5)
    for n in (2, 4):
        assert algorithms.bon_mixing_for(0.2, n) == pytest.approx(games.beta_to_mixing(n, 0.4))


def test_mlp_policy_normalized_and_vmappable():
    pol = policies.MLPPolicy(_features(jax.random.key(0), X, Y, "misspecified", 4), hidden=8)
    states = jit(jax.vmap(pol.init))(jax.random.split(jax.random.key(1), 2))
    lp = jit(jax.vmap(pol.log_probs))(states)
    assert lp.shape == (2, X, Y)
    np.testing.assert_allclose(np.exp(np.asarray(lp)).sum(-1), 1.0, atol=1e-5)


# ------------------------------------------------------------------------------- whole compiled runs
SHORT = dict(beta=0.3, eta=1.0, B=256, T=12, inner=30, seeds=3)


@pytest.fixture(scope="module")
def short_game():
    """A small BT game (X=2, Y=4), realizable log-linear policy, pi*_beta from wind_jax.games."""
    P = _bt_game(jax.random.key(20), X=2, Y=4)
    pol = policies.LogLinearPolicy(_features(jax.random.key(21), 2, 4, "realizable", 2))
    theta_ref = _init(pol, jax.random.key(22))
    pi_ref = jnp.exp(pol.log_probs(theta_ref))
    pi_star = _equilibrium(pi_ref, P, SHORT["beta"]).astype(jnp.float32)
    states = jax.vmap(lambda k: algorithms.init_state(theta_ref, 2, k))(
        jax.random.split(jax.random.key(23), SHORT["seeds"]))
    return P, pol, theta_ref, pi_star, states


@pytest.fixture(scope="module")
def short_runs(short_game):
    """One compiled whole run per WIND method (scan over T iterations, vmap over 3 seeds), shared by tests."""
    P, pol, theta_ref, pi_star, states = short_game
    out = {}
    for name in ("wind_sq_offset", "wind_kl"):
        m = algorithms.make_methods(SHORT["beta"], SHORT["eta"])[name]
        run = jit(algorithms.make_run(m, SHORT["B"], optax.adam(0.05), SHORT["inner"], SHORT["T"]))
        out[name] = (m, run, run(pol, algorithms.method_params(m), states, P, theta_ref, pi_star,
                                 jnp.asarray(True), jnp.asarray(SHORT["T"])))
    return out


@pytest.mark.parametrize("name", ["wind_sq_offset", "wind_kl"])
def test_short_wind_run_decreases_kl_to_equilibrium(name, short_game, short_runs):
    """Alg. 3 with single Bernoulli duels on a small BT game, realizable policy, 3 vmapped seeds:
    KL(pi*_beta || pi_T) falls below a third of KL(pi*_beta || pi_ref); counts add up exactly; the recorded
    metrics are exact_metrics of the final state."""
    P, pol, theta_ref, pi_star, _ = short_game
    B, T = SHORT["B"], SHORT["T"]
    _, _, out = short_runs[name]
    kl = np.asarray(out.metrics["kl_to_equilibrium"])  # [seeds, T + 1]
    assert kl.shape == (SHORT["seeds"], T + 1)
    assert np.all(kl[:, -1] < kl[:, 0] / 3), kl
    np.testing.assert_array_equal(np.asarray(out.samples), np.arange(T + 1)[None].repeat(3, 0) * B * 2)
    np.testing.assert_array_equal(np.asarray(out.queries), np.arange(T + 1)[None].repeat(3, 0) * B * 1)
    final = jit(jax.vmap(lambda th: algorithms.exact_metrics(pol.log_probs(th), pol.log_probs(theta_ref), P,
                                                             pi_star)))(out.state.params["policy"])
    for k in algorithms.METRICS:
        np.testing.assert_allclose(np.asarray(out.metrics[k])[:, -1], np.asarray(final[k]), rtol=1e-5, atol=1e-6)


def test_run_equals_step_by_step_loop(short_game, short_runs):
    """make_run's scan = T calls of make_outer_step's step (same keys, same draws, same fits)."""
    P, pol, theta_ref, pi_star, states = short_game
    m, _, out = short_runs["wind_sq_offset"]
    step = jit(jax.vmap(algorithms.make_outer_step(pol, m, SHORT["B"], optax.adam(0.05), SHORT["inner"]),
                        in_axes=(0, None, None)))
    st = states
    for _ in range(SHORT["T"]):
        st, _ = step(st, P, theta_ref)
    np.testing.assert_allclose(np.asarray(st.params["policy"]), np.asarray(out.state.params["policy"]),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(st.counts.queries), np.asarray(out.queries)[:, -1])
    np.testing.assert_array_equal(jax.random.key_data(st.key), jax.random.key_data(out.state.key))


def test_one_compilation_serves_games_features_and_method_params():
    """The run is traced (= compiled) once for 2 games x {realizable, zero-padded misspecified} features x
    {sppo, sppo_beta} params x record on/off x any num_iterations; skipped iterations change nothing."""
    Xs, Ys, B, T = 2, 4, 3, 3
    methods = algorithms.make_methods(0.2, 1.0)
    assert algorithms.compile_key(methods["sppo"]) == algorithms.compile_key(methods["sppo_beta"])
    traces = []
    run = algorithms.make_run(methods["sppo"], B, optax.adam(0.05), 2, T)

    def counted(*args):
        traces.append(1)
        return run(*args)

    f = jit(counted)
    real = _features(jax.random.key(0), Xs, Ys, "realizable", 2)
    miss = policies.pad_features(_features(jax.random.key(1), Xs, Ys, "misspecified", 3),
                                 real.shape[-1])
    for gi, game in enumerate((_bt_game(jax.random.key(2), Xs, Ys), _nt_game(jax.random.key(3), Xs, Ys))):
        for feats in (real, miss):
            pol = policies.LogLinearPolicy(feats)
            theta_ref = _init(pol, jax.random.key(4 + gi))
            pi_star = _equilibrium(jnp.exp(pol.log_probs(theta_ref)), game, 0.2).astype(jnp.float32)
            states = jax.vmap(lambda k: algorithms.init_state(theta_ref, Xs, k))(jax.random.split(jax.random.key(5), 2))
            for name in ("sppo", "sppo_beta"):
                mp = algorithms.method_params(methods[name])
                full = f(pol, mp, states, game, theta_ref, pi_star, jnp.asarray(True), jnp.asarray(T))
                part = f(pol, mp, states, game, theta_ref, pi_star, jnp.asarray(False), jnp.asarray(1))
                np.testing.assert_array_equal(np.asarray(full.queries)[0], np.arange(T + 1) * B * 10)
                np.testing.assert_array_equal(np.asarray(part.queries)[0], [0, B * 10, B * 10, B * 10])
                assert np.all(np.asarray(part.metrics["kl_to_equilibrium"]) == 0.0)  # record=False
                assert np.all(np.asarray(full.metrics["kl_to_equilibrium"]) > 0.0)
    assert len(traces) == 1


# ------------------------------------------------------------------------------------ best in class
def test_best_in_class_kl():
    """min_theta KL(pi* || pi_theta): ~0 for realizable features; for misspecified features the returned value
    is the float64 KL of the returned theta, satisfies the optimality condition of this convex problem
    (moment matching: mean_x sum_y (pi_theta - pi*) phi = 0) and lies below KL(pi* || pi_ref)."""
    P = _nt_game(jax.random.key(30))
    fit = jit(algorithms.best_in_class_kl, static_argnames=("num_steps",))
    for kind, dim in (("realizable", 2), ("misspecified", 3)):
        feats = policies.pad_features(_features(jax.random.key(31), X, Y, kind, dim), X * Y + 2)  # 1 compile
        pol = policies.LogLinearPolicy(feats)
        theta_ref = _init(pol, jax.random.key(32))
        pi_ref = np.exp(np.asarray(pol.log_probs(theta_ref), np.float64))
        star = np.asarray(_equilibrium(jnp.asarray(pi_ref, jnp.float32), P, 0.2), np.float64)
        theta, kl = fit(pol, theta_ref, jnp.asarray(star, jnp.float32), num_steps=2000)
        phi = np.asarray(feats, np.float64)
        logits = phi @ np.asarray(theta, np.float64)
        log_pi = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
            logits.max(-1, keepdims=True)
        kl64 = np.mean(np.sum(star * (np.log(star) - log_pi), -1))
        kl_ref = np.mean(np.sum(star * (np.log(star) - np.log(pi_ref)), -1))
        np.testing.assert_allclose(float(kl), kl64, atol=1e-5)
        grad = np.einsum("xy,xyd->d", np.exp(log_pi) - star, phi) / X
        if kind == "realizable":
            assert kl64 < 1e-4
        else:
            assert kl64 > 1e-3 and kl64 < kl_ref
            assert np.max(np.abs(grad)) < 1e-4, grad


def test_pad_features_leaves_policy_family_unchanged():
    feats = _features(jax.random.key(0), X, Y, "misspecified", 3)
    padded = policies.pad_features(feats, 7)
    theta = _normal(jax.random.key(1), (7,))
    small, big = policies.LogLinearPolicy(feats), policies.LogLinearPolicy(padded)
    np.testing.assert_allclose(big.log_probs(theta), small.log_probs(theta[:3]), atol=1e-6)
    g = jax.grad(lambda th: jnp.sum(big.log_probs(th)[:, 0]))(theta)
    np.testing.assert_array_equal(np.asarray(g[3:]), 0.0)
    leaves, treedef = jax.tree.flatten(big)
    assert len(leaves) == 1 and jax.tree.unflatten(treedef, leaves).init_scale == big.init_scale
    with pytest.raises(ValueError, match="dim"):
        policies.pad_features(feats, 2)


def test_learning_rate_and_inner_steps_are_arguments(short_game, short_runs):
    """With an optimizer factory, the learning rate and the active inner steps enter as arguments: lr 0.05 and
    all 30 steps reproduce the fixed-optimizer program; lr = 0 leaves the policy at pi_ref; fewer steps differ."""
    P, pol, theta_ref, pi_star, states = short_game
    m, _, ref_out = short_runs["wind_sq_offset"]
    run = jit(algorithms.make_run(m, SHORT["B"], optax.adam, SHORT["inner"], SHORT["T"]))
    args = (states, P, theta_ref, pi_star, jnp.asarray(True), jnp.asarray(SHORT["T"]))
    same = run(pol, algorithms.method_params(m, learning_rate=0.05), *args)
    np.testing.assert_allclose(same.metrics["kl_to_equilibrium"], ref_out.metrics["kl_to_equilibrium"], rtol=1e-5)
    frozen = run(pol, algorithms.method_params(m, learning_rate=0.0), *args)
    np.testing.assert_allclose(frozen.state.params["policy"], np.broadcast_to(theta_ref, (SHORT["seeds"],) +
                                                                              theta_ref.shape), atol=0)
    fewer = run(pol, algorithms.method_params(m, learning_rate=0.05, num_inner=3), *args)
    assert not np.allclose(fewer.metrics["kl_to_equilibrium"], ref_out.metrics["kl_to_equilibrium"])
    with pytest.raises(ValueError, match="num_inner"):
        algorithms.method_params(m, num_inner=0)


def test_log_normalizer_offset_reduces_starved_mass_after_reset():
    """MATH.md "What a learned per-prompt offset does not pin down": resetting wind_sq_offset's b(x) to 0 every
    iteration drains the logits of unsampled responses, so pi*_beta's mass where pi < 1e-3 grows; the
    log-normalizer offset (no free b) keeps it at least 2x smaller, and KL(pi*_beta || pi) lower, on every seed
    (non-transitive 4 x 16 game, realizable policy, 10 iterations of 240 duels)."""
    Xg, Yg, beta, T = 4, 16, 0.2, 10
    P = _nt_game(jax.random.key(1), Xg, Yg)
    pol = policies.LogLinearPolicy(_features(jax.random.key(2), Xg, Yg, "realizable", 8))
    theta_ref = _init(pol, jax.random.key(3))
    pi_star = _equilibrium(jnp.exp(pol.log_probs(theta_ref)), P, beta).astype(jnp.float32)
    states = jax.vmap(lambda k: algorithms.init_state(theta_ref, Xg, k))(jax.random.split(jax.random.key(4), 2))
    base = algorithms.make_methods(beta, 1.0)["wind_sq_offset"]
    final = {}
    for mode in ("reset", "log_normalizer"):
        m = algorithms.with_offset(base, mode)
        run = jit(algorithms.make_run(m, 240, optax.adam(0.05), 40, T))
        out = run(pol, algorithms.method_params(m), states, P, theta_ref, pi_star, jnp.asarray(True), jnp.asarray(T))
        final[mode] = {k: np.asarray(out.metrics[k])[:, -1] for k in ("starved_mass", "kl_to_equilibrium")}
    starved = games.starved_mass(np.exp(np.asarray(pol.log_probs(theta_ref))), np.asarray(pi_star))
    assert float(np.mean(starved)) < 1e-3  # nothing is starved at pi_ref
    assert np.all(final["reset"]["starved_mass"] > 0.02), final
    assert np.all(final["log_normalizer"]["starved_mass"] < final["reset"]["starved_mass"] / 2), final
    assert np.all(final["log_normalizer"]["kl_to_equilibrium"] < final["reset"]["kl_to_equilibrium"]), final
    with pytest.raises(ValueError, match="offset_mode"):
        algorithms.with_offset(base, "free")


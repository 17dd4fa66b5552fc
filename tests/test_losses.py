"""Tests for wind_jax.losses against independent NumPy float64 references (MATH.md Alg. 3 and Baselines).

The tabular references (win rates, the exact WIND step, the Hedge step, the reverse-KL gradient) are written
here in NumPy; wind_jax.games is deliberately not imported.
"""
import math

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from wind_jax import losses as L
from wind_jax import methods as M

REQUIRED = ["wind_sq", "wind_sq_offset", "wind_kl", "wind_nce", "sppo", "sppo_hard", "jbond", "bonbon",
            "dpo", "ipo", "bon_distill"]


# ------------------------------------------------------------------------------ NumPy float64 references


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _game(seed, X=3, Y=4, scale=2.0):
    """pi_t, pi_ref (full support) and a general (non-transitive) P = sigmoid(A), A skew-symmetric."""
    rng = np.random.default_rng(seed)
    pi_t = _softmax(rng.normal(size=(X, Y)))
    pi_ref = _softmax(rng.normal(size=(X, Y)))
    a = rng.normal(size=(X, Y, Y)) * scale
    a = a - np.swapaxes(a, 1, 2)
    P = 1.0 / (1.0 + np.exp(-a))
    return pi_t, pi_ref, P


def _win_rate(P, pi):
    return np.einsum("xyz,xz->xy", P, pi)


def _wind_step(pi_t, pi_ref, P, beta, eta):
    """Exact WIND step, MD form (MATH.md Alg. 2): (1-eta beta) log pi_t + eta beta log pi_ref + eta w - logZ."""
    return _softmax((1 - eta * beta) * np.log(pi_t) + eta * beta * np.log(pi_ref) + eta * _win_rate(P, pi_t))


def _newton_minimize(f, x0, iters=40):
    """Damped Newton with a least-squares step (the gauge theta[x] + c is a null direction), float64."""
    grad, hess = jax.jit(jax.grad(f)), jax.jit(jax.hessian(f))
    fj = jax.jit(f)
    x = jnp.asarray(x0, jnp.float64)
    for _ in range(iters):
        g = np.asarray(grad(x))
        if np.max(np.abs(g)) < 1e-13:
            break
        step = np.linalg.lstsq(np.asarray(hess(x)), -g, rcond=1e-12)[0]
        t, f0 = 1.0, float(fj(x))
        while float(fj(x + t * step)) > f0 + 1e-14 and t > 1e-6:
            t *= 0.5
        x = x + t * step
    return x, np.asarray(grad(x))


def _flat_xy(X, Y):
    xs, ys = np.meshgrid(np.arange(X), np.arange(Y), indexing="ij")
    return xs.ravel(), ys.ravel()


def _flat_duels(X, Y):
    """All (x, y, y', ell) tuples of one duel, flattened."""
    xs, ys, yps, ells = np.meshgrid(np.arange(X), np.arange(Y), np.arange(Y), np.arange(2), indexing="ij")
    return xs.ravel(), ys.ravel(), yps.ravel(), ells.ravel().astype(np.float64)


# ----------------------------------------------------------------- tabular minimizers = exact steps


@pytest.mark.parametrize("targets", ["exact_win_rates", "enumerated_duels"])
def test_wind_sq_offset_minimizer_is_exact_wind_step(x64, targets):
    X, Y, beta, eta = 3, 4, 0.3, 0.8
    pi_t, pi_ref, P = _game(0, X, Y)
    if targets == "exact_win_rates":
        xs, ys = _flat_xy(X, Y)
        weight = pi_t[xs, ys]
        target = _win_rate(P, pi_t)[xs, ys]
    else:  # expected loss over one duel: y, y' ~ pi_t, ell ~ Bernoulli(P(y > y'))
        xs, ys, yps, ell = _flat_duels(X, Y)
        p = P[xs, ys, yps]
        weight = pi_t[xs, ys] * pi_t[xs, yps] * np.where(ell == 1, p, 1 - p)
        target = ell
    batch = {"prev_y": np.log(pi_t[xs, ys]), "ref_y": np.log(pi_ref[xs, ys]), "target": target}

    def objective(params):
        theta, b = params[: X * Y].reshape(X, Y), params[X * Y:]
        logp = jax.nn.log_softmax(theta, axis=-1)
        loss, _ = L.compute_loss("wind_sq_offset", {"y": logp[xs, ys], "offset": b[xs]}, batch,
                                 {"beta": beta, "eta": eta})
        return jnp.sum(weight * loss)

    x0 = np.concatenate([np.log(pi_t).ravel(), np.zeros(X)])
    params, g = _newton_minimize(objective, x0)
    assert np.max(np.abs(g)) < 1e-10
    pi_fit = _softmax(np.asarray(params[: X * Y]).reshape(X, Y))
    expected = _wind_step(pi_t, pi_ref, P, beta, eta)
    np.testing.assert_allclose(pi_fit, expected, atol=1e-6, rtol=0)
    # the offset is the log-partition function: b(x) = logZ_t(x)
    logz = np.log(np.sum(pi_t ** (1 - eta * beta) * pi_ref ** (eta * beta) * np.exp(eta * _win_rate(P, pi_t)), -1))
    np.testing.assert_allclose(np.asarray(params[X * Y:]), logz, atol=1e-6)


def test_wind_sq_without_offset_is_biased_for_beta_positive(x64):
    """The same fit with wind_sq (logZ ~ eta/2) misses the exact step: the test above can tell them apart."""
    X, Y, beta, eta = 3, 4, 0.3, 0.8
    pi_t, pi_ref, P = _game(0, X, Y)
    xs, ys = _flat_xy(X, Y)
    batch = {"prev_y": np.log(pi_t[xs, ys]), "ref_y": np.log(pi_ref[xs, ys]),
             "target": _win_rate(P, pi_t)[xs, ys]}

    def objective(theta):
        logp = jax.nn.log_softmax(theta.reshape(X, Y), axis=-1)
        loss, _ = L.compute_loss("wind_sq", {"y": logp[xs, ys]}, batch, {"beta": beta, "eta": eta})
        return jnp.sum(pi_t[xs, ys] * loss)

    theta, g = _newton_minimize(objective, np.log(pi_t).ravel())
    assert np.max(np.abs(g)) < 1e-10
    gap = np.max(np.abs(_softmax(np.asarray(theta).reshape(X, Y)) - _wind_step(pi_t, pi_ref, P, beta, eta)))
    assert gap > 1e-4


def test_wind_kl_pairwise_minimizer_is_exact_wind_step(x64):
    """Off-policy use of wind_kl (pairs from pi_t, enumerated duel outcomes) still fits the exact step."""
    X, Y, beta, eta = 2, 4, 0.5, 1.2
    pi_t, pi_ref, P = _game(1, X, Y)
    xs, ys, yps, ell = _flat_duels(X, Y)
    p = P[xs, ys, yps]
    weight = pi_t[xs, ys] * pi_t[xs, yps] * np.where(ell == 1, p, 1 - p)
    batch = {"prev_y": np.log(pi_t[xs, ys]), "ref_y": np.log(pi_ref[xs, ys]),
             "prev_y_prime": np.log(pi_t[xs, yps]), "ref_y_prime": np.log(pi_ref[xs, yps]), "target": ell}

    def objective(theta):
        logp = jax.nn.log_softmax(theta.reshape(X, Y), axis=-1)
        loss, _ = L.compute_loss("wind_kl", {"y": logp[xs, ys], "y_prime": logp[xs, yps]}, batch,
                                 {"beta": beta, "eta": eta})
        return jnp.sum(weight * loss)

    theta, g = _newton_minimize(objective, np.log(pi_t).ravel())
    assert np.max(np.abs(g)) < 1e-10
    np.testing.assert_allclose(_softmax(np.asarray(theta).reshape(X, Y)), _wind_step(pi_t, pi_ref, P, beta, eta),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("pseudo_count", [0.0, 0.5])
def test_wind_nce_minimizer_is_log_win_rate_step(x64, pseudo_count):
    """wind_nce's documented optimum: pi ∝ pi_t^(1-eta beta) pi_ref^(eta beta) w_a^(eta/2), with the
    pseudo-count-shrunk win rate w_a = (w + a) / (1 + 2a) (w_0 = w)."""
    X, Y, beta, eta = 3, 4, 0.3, 0.8
    pi_t, pi_ref, P = _game(2, X, Y)
    xs, ys = _flat_xy(X, Y)
    w = _win_rate(P, pi_t)
    batch = {"prev_y": np.log(pi_t[xs, ys]), "ref_y": np.log(pi_ref[xs, ys]), "target": w[xs, ys]}

    def objective(params):
        theta, b = params[: X * Y].reshape(X, Y), params[X * Y:]
        logp = jax.nn.log_softmax(theta, axis=-1)
        loss, _ = L.compute_loss("wind_nce", {"y": logp[xs, ys], "offset": b[xs]}, batch,
                                 {"beta": beta, "eta": eta, "pseudo_count": pseudo_count})
        return jnp.sum(pi_t[xs, ys] * loss)

    params, g = _newton_minimize(objective, np.concatenate([np.log(pi_t).ravel(), np.zeros(X)]))
    assert np.max(np.abs(g)) < 1e-10
    w_a = (w + pseudo_count) / (1 + 2 * pseudo_count)
    expected = _softmax((1 - eta * beta) * np.log(pi_t) + eta * beta * np.log(pi_ref) + 0.5 * eta * np.log(w_a))
    np.testing.assert_allclose(_softmax(np.asarray(params[: X * Y]).reshape(X, Y)), expected, atol=1e-6, rtol=0)


# ----------------------------------------------------------- wind_kl: unbiased gradient with one duel


def _wind_kl_mc(x64_seed, target_kind, *, biased=False, n=40_000):
    """Per-pair gradients of wind_kl wrt tabular logits at theta = log pi_t, and the exact reference."""
    X, Y, beta, eta = 2, 4, 0.4, 1.5
    pi_t, pi_ref, P = _game(x64_seed, X, Y, scale=3.0)
    rng = np.random.default_rng(100 + x64_seed)
    xs = np.repeat(np.arange(X), n)
    ys = np.array([rng.choice(Y, size=n, p=pi_t[x]) for x in range(X)]).ravel()
    yps = np.array([rng.choice(Y, size=n, p=pi_t[x]) for x in range(X)]).ravel()
    p = P[xs, ys, yps]
    if target_kind == "single_duel":  # one Bernoulli duel outcome per pair
        p = np.asarray(jax.random.bernoulli(jax.random.key(x64_seed), p), np.float64)
    # else: the soft target P(y > y') from a preference model. WIND's rows of the duel (wind_jax.methods):
    rows = M.get_method("wind_sq").assemble(M.Tournament(jnp.asarray(p)[:, None]), 2, {}).values["target"]
    ell, ell_partner = rows[:, 0], rows[:, 1]
    np.testing.assert_allclose(np.asarray(ell) + np.asarray(ell_partner), 1.0)
    batch = {"prev_y": np.log(pi_t[xs, ys]), "ref_y": np.log(pi_ref[xs, ys]),
             "prev_y_prime": np.log(pi_t[xs, yps]), "ref_y_prime": np.log(pi_ref[xs, yps]),
             "target": 2.0 * ell - 0.5 if biased else ell}
    spec = L.get_loss("wind_kl")
    xs, ys, yps = jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(yps)

    def pair_loss(theta, i):
        logp = jax.nn.log_softmax(theta, axis=-1)
        lp = {"y": logp[xs[i], ys[i]][None], "y_prime": logp[xs[i], yps[i]][None]}
        b = {k: jnp.asarray(v)[i][None] for k, v in batch.items()}
        return spec.fn(lp, b, {"beta": beta, "eta": eta})[0][0]

    theta0 = jnp.log(jnp.asarray(pi_t))
    per_pair = jax.jit(jax.vmap(jax.grad(pair_loss), in_axes=(None, 0)))(theta0, jnp.arange(X * n))
    per_pair = np.asarray(per_pair).reshape(X, n, X, Y)[np.arange(X), :, np.arange(X), :]  # own context
    # exact: grad_theta KL(pi_theta || pi_target) at pi_theta = pi_t; each pair carries two samples
    log_q = np.log(_wind_step(pi_t, pi_ref, P, beta, eta))
    diff = np.log(pi_t) - log_q
    kl = np.sum(pi_t * diff, -1, keepdims=True)
    exact = 2.0 * pi_t * (diff - kl)
    mean = per_pair.mean(1)
    se = per_pair.std(1) / math.sqrt(n)
    return mean, se, exact


@pytest.mark.parametrize("target_kind", ["single_duel", "soft_probability"])
def test_wind_kl_expected_gradient_equals_exact_reverse_kl_gradient(x64, target_kind):
    mean, se, exact = _wind_kl_mc(3, target_kind)
    # 5 standard errors per coordinate (8 coordinates: false-alarm rate < 1e-5)
    z = np.abs(mean - exact) / (se + 1e-15)
    assert np.all(z < 5.0), (mean, exact, z)
    assert np.max(np.abs(exact)) > 0.05  # the reference is not trivially zero


def test_wind_kl_mc_test_detects_a_biased_baseline(x64):
    """A baseline using the partner's outcome (c = h(y') - eta (1 - ell)) doubles the step: rejected."""
    mean, se, exact = _wind_kl_mc(3, "single_duel", biased=True)
    assert np.max(np.abs(mean - exact) / se) > 8.0


# ------------------------------------------------------------------------------- SPPO versus Hedge


def test_sppo_beta0_is_hedge_up_to_logz_approximation(x64):
    """At beta = 0, evaluated at the exact Hedge step pi_t exp(eta w)/Z, every SPPO residual equals
    eta/2 - logZ_t(x) (SPPO replaces logZ_t by eta/2), so the per-example loss is (logZ_t - eta/2)^2 for
    every (chosen, rejected) pair, and Hoeffding's lemma bounds the gap: 0 <= logZ_t - eta/2 <= eta^2/8."""
    X, Y, eta = 3, 5, 0.7
    pi_t, pi_ref, P = _game(4, X, Y)
    w = _win_rate(P, pi_t)
    logz = np.log(np.sum(pi_t * np.exp(eta * w), -1))
    log_hedge = np.log(pi_t) + eta * w - logz[:, None]
    xs, yc, yr = np.meshgrid(np.arange(X), np.arange(Y), np.arange(Y), indexing="ij")
    xs, yc, yr = xs.ravel(), yc.ravel(), yr.ravel()
    logps = {"chosen": log_hedge[xs, yc], "rejected": log_hedge[xs, yr]}
    batch = {"prev_chosen": np.log(pi_t[xs, yc]), "prev_rejected": np.log(pi_t[xs, yr]),
             "ref_chosen": np.log(pi_ref[xs, yc]), "ref_rejected": np.log(pi_ref[xs, yr]),
             "target_chosen": w[xs, yc], "target_rejected": w[xs, yr]}
    loss, _ = L.compute_loss("sppo", logps, batch, {"beta": 0.0, "eta": eta})
    np.testing.assert_allclose(np.asarray(loss), (logz[xs] - eta / 2) ** 2, rtol=1e-10, atol=1e-14)
    assert np.all(logz - eta / 2 >= 0) and np.all(logz - eta / 2 <= eta ** 2 / 8)
    assert np.all(logz - eta / 2 > 1e-4)  # the approximation error is real, not zero
    # the policy with zero SPPO loss is the unnormalized pi_t exp(eta (w - 1/2)); normalizing it gives Hedge
    np.testing.assert_allclose(_softmax(np.log(pi_t) + eta * (w - 0.5)), np.exp(log_hedge), atol=1e-12)


def _bt_pref(s):
    """Bradley-Terry answers sigmoid(s_i - s_j) of the round-robin pairs of scores s [K]."""
    return jnp.asarray([[1.0 / (1.0 + np.exp(-(s[i] - s[j]))) for i, j in M.round_robin(len(s))]], jnp.float32)


def test_round_robin_win_rates_bradley_terry_with_diagonal():
    """SPPO's estimator (wind_jax.methods.win_rates): w_i = mean_j P[i, j] with P[i, i] = 1/2 included."""
    s = np.array([0.3, -1.2, 2.0, 0.0, 0.7])
    w = M.win_rates(_bt_pref(s), 5)
    ref = 1.0 / (1.0 + np.exp(-(s[:, None] - s[None, :])))
    np.testing.assert_allclose(np.asarray(w[0]), ref.mean(1), rtol=1e-6)
    assert abs(float(w.mean()) - 0.5) < 1e-6


# ---------------------------------------------------------------------- hand-computed values


def test_bonbon_margin():
    assert abs(L.bonbon_margin(8) - 18.15) < 1e-2
    assert L.bonbon_margin(2) == 1.0 and abs(L.bonbon_margin(3) - 3.0) < 1e-12
    with pytest.raises(ValueError, match="n"):
        L.bonbon_margin(1)


PAIR = {"chosen": np.array([-10.0]), "rejected": np.array([-12.0])}
PAIR_REF = {"ref_chosen": np.array([-11.0]), "ref_rejected": np.array([-11.0])}  # rho_w = 1, rho_l = -1


def test_dpo_hand_computed():
    loss, m = L.compute_loss("dpo", PAIR, PAIR_REF, {"beta": 0.5})
    assert abs(float(loss[0]) - math.log1p(math.exp(-1.0))) < 1e-6  # -log sigmoid(0.5 * 2)
    assert abs(float(m["rewards/chosen"]) - 0.5) < 1e-6 and abs(float(m["rewards/rejected"]) + 0.5) < 1e-6
    assert abs(float(m["rewards/margins"]) - 1.0) < 1e-6 and float(m["rewards/accuracies"]) == 1.0
    assert float(m["logps/chosen"]) == -10.0 and float(m["logps/rejected"]) == -12.0


def test_ipo_hand_computed():
    loss, _ = L.compute_loss("ipo", PAIR, PAIR_REF, {"tau": 0.1})
    assert abs(float(loss[0]) - 9.0) < 1e-5  # (2 - 1/(2*0.1))^2


def test_bonbon_hand_computed():
    loss, _ = L.compute_loss("bonbon", PAIR, PAIR_REF, {"alpha": 0.2, "n": 3})
    assert abs(float(loss[0]) - (0.2 * 10.0 + 0.8 * (2.0 - 3.0) ** 2)) < 1e-5
    loss, _ = L.compute_loss("bonbon", PAIR, PAIR_REF, {"alpha": 0.2, "sigmoid": 1.0, "beta_sigmoid": 0.5})
    assert abs(float(loss[0]) - (0.2 * 10.0 + 0.8 * math.log1p(math.exp(-1.0)))) < 1e-5
    alias, _ = L.compute_loss("bonbon_sigmoid", PAIR, PAIR_REF, {"alpha": 0.2, "beta_sigmoid": 0.5})
    assert abs(float(alias[0]) - float(loss[0])) < 1e-6


def test_bonbon_sigmoid_default_temperature_is_tied_to_n():
    """Default temperature = BoNBoN's released-code 1 / (2 (n-1) H_{n-1}): 0.0275 for n = 8, recomputed here from
    the harmonic number; it follows n (n = 4: 1 / (2 * 3 * 11/6) = 1/11) unless beta_sigmoid > 0 is given."""
    assert L.bonbon_temperature(8) == pytest.approx(1.0 / (2 * 7 * sum(1.0 / k for k in range(1, 8))), rel=1e-12)
    assert round(L.bonbon_temperature(8), 4) == 0.0275
    margin = 2.0  # rho_w - rho_l of PAIR / PAIR_REF
    for n, tau in ((8, L.bonbon_temperature(8)), (4, 1.0 / 11.0)):
        loss, _ = L.compute_loss("bonbon_sigmoid", PAIR, PAIR_REF, {"alpha": 0.0, "n": n})
        assert float(loss[0]) == pytest.approx(math.log1p(math.exp(-tau * margin)), rel=1e-6)
    with pytest.raises(ValueError, match="beta_sigmoid"):
        L.compute_loss("bonbon_sigmoid", PAIR, PAIR_REF, {"beta_sigmoid": -1.0})


def test_wind_sq_and_offset_hand_computed():
    lp = {"y": np.array([-3.0]), "offset": np.array([0.25])}
    batch = {"prev_y": np.array([-2.0]), "ref_y": np.array([-4.0]), "target": np.array([1.0])}
    h = -3.0 - 0.8 * -2.0 - 0.2 * -4.0  # eta beta = 0.2
    sq, _ = L.compute_loss("wind_sq", lp, batch, {"eta": 0.5, "beta": 0.4})
    off, _ = L.compute_loss("wind_sq_offset", lp, batch, {"eta": 0.5, "beta": 0.4})
    assert abs(float(sq[0]) - (h - 0.25) ** 2) < 1e-5
    assert abs(float(off[0]) - (h + 0.25 - 0.5) ** 2) < 1e-5


def test_jbond_gradient_is_the_documented_surrogate():
    lp = {"y": jnp.array([-5.0, -6.0]), "best": jnp.array([-4.0, -3.0])}
    batch = {"anchor_y": jnp.array([-5.5, -6.0]), "lost_to_both": jnp.array([1.0, 0.0])}
    hp = {"mix": 0.3, "gamma": 0.1}
    g = jax.grad(lambda p: L.compute_loss("jbond", p, batch, hp)[0].sum())(lp)
    pen = math.log(16.0)
    np.testing.assert_allclose(np.asarray(g["best"]), [-0.7, -0.7], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g["y"]), [0.3 * (pen + 0.1 * 0.5), 0.3 * 0.0], rtol=1e-6)


def test_bon_distill_is_nll():
    loss, _ = L.compute_loss("bon_distill", {"y": np.array([-2.5, -7.0])}, {})
    np.testing.assert_allclose(np.asarray(loss), [2.5, 7.0])


# ---------------------------------------------------------------- extreme inputs, jit, properties


def _inputs(spec, B, rng, scale):
    logps = {k: rng.uniform(-1.0, 0.0, B).astype(np.float32) * scale for k in spec.policy_keys}
    if "offset" in logps:
        logps["offset"] = rng.normal(size=B).astype(np.float32) * scale / 10
    batch = {k: (rng.integers(0, 2, B).astype(np.float32) if k in spec.target_keys
                 else rng.uniform(-1.0, 0.0, B).astype(np.float32) * scale) for k in spec.batch_keys}
    return logps, batch


@pytest.mark.parametrize("name", sorted(L.LOSSES))
@pytest.mark.parametrize("scale", [5000.0, 1e4])
def test_finite_loss_and_gradient_at_extreme_logprobs(name, scale):
    spec = L.get_loss(name)
    logps, batch = _inputs(spec, 16, np.random.default_rng(0), scale)
    logps["_unused"] = np.zeros(16, np.float32)  # extra keys are ignored
    f = jax.jit(lambda lp, b: jnp.sum(L.compute_loss(name, lp, b)[0]))
    val, grads = jax.value_and_grad(f)(logps, batch)
    assert val.dtype == jnp.float32 and np.isfinite(float(val))
    for k in spec.policy_keys:
        assert np.all(np.isfinite(np.asarray(grads[k]))), k
    _, metrics = L.compute_loss(name, logps, batch)
    assert all(np.isfinite(float(v)) for v in metrics.values())


def test_registry_has_required_losses():
    assert set(REQUIRED) <= set(L.LOSSES)
    for name, spec in L.LOSSES.items():
        assert spec.name == name and set(spec.target_keys) <= set(spec.batch_keys)


_f = st.floats(-50.0, 50.0, allow_nan=False)


@settings(max_examples=30, deadline=None)
@given(_f, _f, _f, _f, st.floats(0.01, 5.0))
def test_dpo_properties(c, r, rc, rr, beta):
    """loss >= 0 and -log sig(z) - (-log sig(-z)) = -z (swap chosen/rejected)."""
    lp, ref = {"chosen": np.array([c]), "rejected": np.array([r])}, {"ref_chosen": np.array([rc]),
                                                                   "ref_rejected": np.array([rr])}
    swapped = {"chosen": np.array([r]), "rejected": np.array([c])}
    swapped_ref = {"ref_chosen": np.array([rr]), "ref_rejected": np.array([rc])}
    a = float(L.compute_loss("dpo", lp, ref, {"beta": beta})[0][0])
    b = float(L.compute_loss("dpo", swapped, swapped_ref, {"beta": beta})[0][0])
    z = beta * ((c - rc) - (r - rr))
    assert a >= 0 and abs((a - b) + z) < 1e-3 * (1 + abs(z))


@settings(max_examples=30, deadline=None)
@given(st.lists(_f, min_size=6, max_size=6), st.floats(0.0, 1.0), st.floats(0.05, 2.0), st.floats(0.0, 0.5))
def test_wind_kl_swap_symmetry_and_offset_invariance(v, t, eta, beta):
    """wind_kl is symmetric under (y, ell) <-> (y', 1 - ell); wind_sq_offset only sees h + b."""
    lp = {"y": np.array([v[0]]), "y_prime": np.array([v[1]])}
    batch = {"prev_y": np.array([v[2]]), "ref_y": np.array([v[3]]), "prev_y_prime": np.array([v[4]]),
             "ref_y_prime": np.array([v[5]]), "target": np.array([t])}
    sw_lp = {"y": lp["y_prime"], "y_prime": lp["y"]}
    sw = {"prev_y": batch["prev_y_prime"], "ref_y": batch["ref_y_prime"], "prev_y_prime": batch["prev_y"],
          "ref_y_prime": batch["ref_y"], "target": 1.0 - batch["target"]}
    hp = {"eta": eta, "beta": beta}
    a = float(L.compute_loss("wind_kl", lp, batch, hp)[0][0])
    b = float(L.compute_loss("wind_kl", sw_lp, sw, hp)[0][0])
    assert abs(a - b) <= 1e-4 * (1 + abs(a))
    base = {"prev_y": batch["prev_y"], "ref_y": batch["ref_y"], "target": batch["target"]}
    c1 = float(L.compute_loss("wind_sq_offset", {"y": lp["y"], "offset": np.array([0.0])}, base, hp)[0][0])
    c2 = float(L.compute_loss("wind_sq_offset", {"y": lp["y"] + 3.0, "offset": np.array([-3.0])}, base, hp)[0][0])
    assert abs(c1 - c2) <= 1e-4 * (1 + abs(c1))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-20.0, 20.0), min_size=5, max_size=5), st.floats(-100.0, 100.0))
def test_round_robin_win_rates_properties(scores, shift):
    s = np.array(scores, np.float64)
    W = np.asarray(M.win_matrix(_bt_pref(s), 5))[0]
    np.testing.assert_allclose(W + W.T, 1.0, atol=1e-6)
    w, w2 = M.win_rates(_bt_pref(s), 5), M.win_rates(_bt_pref(s + shift), 5)
    assert abs(float(w.mean()) - 0.5) < 1e-5
    np.testing.assert_allclose(np.asarray(w), np.asarray(w2), atol=1e-4)


# -------------------------------------------------------------------------------------------- errors


def _valid(name="wind_sq", B=3):
    return _inputs(L.get_loss(name), B, np.random.default_rng(1), 10.0)


def test_unknown_loss_name():
    with pytest.raises(ValueError, match="unknown loss name 'wnd_sq'.*wind_sq"):
        L.get_loss("wnd_sq")
    with pytest.raises(ValueError, match="known losses"):
        L.compute_loss("nope", {}, {})


def test_bad_shapes_and_keys():
    logps, batch = _valid()
    with pytest.raises(ValueError, match=r"batch\['target'\].*shape \[B\]"):
        L.compute_loss("wind_sq", logps, {**batch, "target": np.zeros((3, 1))})
    with pytest.raises(ValueError, match="disagree on the batch size"):
        L.compute_loss("wind_sq", logps, {**batch, "ref_y": np.zeros(4)})
    with pytest.raises(ValueError, match=r"logps is missing key\(s\) \['y'\]"):
        L.compute_loss("wind_sq", {}, batch)
    with pytest.raises(ValueError, match=r"batch is missing key\(s\) \['prev_y'\]"):
        L.compute_loss("wind_sq", logps, {k: v for k, v in batch.items() if k != "prev_y"})


def test_nan_and_out_of_range_targets():
    logps, batch = _valid()
    with pytest.raises(ValueError, match=r"batch\['target'\] contains NaN"):
        L.compute_loss("wind_sq", logps, {**batch, "target": np.array([0.0, np.nan, 1.0])})
    with pytest.raises(ValueError, match=r"batch\['target'\].*\[0, 1\]"):
        L.compute_loss("wind_sq", logps, {**batch, "target": np.array([0.0, 1.5, 1.0])})
    with pytest.raises(ValueError, match=r"logps\['y'\] contains NaN"):
        L.compute_loss("wind_sq", {"y": np.array([0.0, np.nan, 1.0])}, batch)


def test_bad_hparams():
    logps, batch = _valid()
    with pytest.raises(ValueError, match=r"unknown hparams \['tau'\]"):
        L.compute_loss("wind_sq", logps, batch, {"tau": 1.0})
    with pytest.raises(ValueError, match="eta\\*beta"):
        L.compute_loss("wind_sq", logps, batch, {"eta": 2.0, "beta": 1.0})
    with pytest.raises(ValueError, match="eta"):
        L.compute_loss("wind_sq", logps, batch, {"eta": 0.0})
    with pytest.raises(ValueError, match="n="):
        L.compute_loss("bonbon", *_valid("bonbon"), {"n": 2.5})


def test_jit_with_traced_inputs_matches_eager():
    logps, batch = _valid("wind_kl", B=5)
    eager, _ = L.compute_loss("wind_kl", logps, batch, {"eta": 0.5})
    jitted = jax.jit(lambda lp, b, eta: L.compute_loss("wind_kl", lp, b, {"eta": eta})[0])(logps, batch, 0.5)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), rtol=1e-6)

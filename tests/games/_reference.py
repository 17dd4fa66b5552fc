"""Independent NumPy float64 re-derivations of the tabular formulas (MATH.md), for the games tests."""

import itertools

import numpy as np


def softmax(logits):
    z = logits - np.max(logits, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def win_rate(P, pi):
    return np.array([P[x] @ pi[x] for x in range(pi.shape[0])])


def bon_reward_enumerate(pi, r, n):
    """Exact BoN_n for a reward by enumerating all n-tuples; ties broken uniformly among the maximal draws."""
    X, Y = pi.shape
    out = np.zeros((X, Y))
    for x in range(X):
        for tup in itertools.product(range(Y), repeat=n):
            prob = np.prod([pi[x, y] for y in tup])
            if prob == 0:
                continue
            rmax = max(r[x, y] for y in tup)
            winners = [y for y in tup if r[x, y] == rmax]
            for y in winners:
                out[x, y] += prob / len(winners)
    return out


def bon_reward_monte_carlo(rng, pi, r, n, num_samples):
    """Monte Carlo BoN_n: draw n responses, keep one of the highest-reward draws uniformly at random."""
    X, Y = pi.shape
    out = np.zeros((X, Y))
    for x in range(X):
        draws = rng.choice(Y, size=(num_samples, n), p=pi[x])
        rewards = r[x][draws] + 1e-9 * rng.random((num_samples, n))  # random tie-break among equal rewards
        picked = draws[np.arange(num_samples), np.argmax(rewards, axis=1)]
        out[x] = np.bincount(picked, minlength=Y) / num_samples
    return out


def duel_monte_carlo(rng, pi, P, num_samples):
    """Draw y, y' ~ pi, one Bernoulli duel with P(y beats y'), keep the winner."""
    X, Y = pi.shape
    out = np.zeros((X, Y))
    for x in range(X):
        y = rng.choice(Y, size=num_samples, p=pi[x])
        yp = rng.choice(Y, size=num_samples, p=pi[x])
        y_wins = rng.random(num_samples) < P[x][y, yp]
        winner = np.where(y_wins, y, yp)
        out[x] = np.bincount(winner, minlength=Y) / num_samples
    return out


def iterative_bon_step(pi, pi_ref, P, n, alpha):
    w = win_rate(P, pi)
    unnorm = (pi * w ** (n - 1)) ** (1 - alpha) * pi_ref**alpha
    return unnorm / unnorm.sum(axis=-1, keepdims=True)


def wind_md_step(pi, pi_ref, P, beta, eta):
    w = win_rate(P, pi)
    unnorm = pi ** (1 - eta * beta) * pi_ref ** (eta * beta) * np.exp(eta * w)
    return unnorm / unnorm.sum(axis=-1, keepdims=True)


def wind_mmd_step(pi, pi_ref, P, beta, s):
    w = win_rate(P, pi)
    unnorm = (pi * pi_ref ** (s * beta) * np.exp(s * w)) ** (1.0 / (1.0 + s * beta))
    return unnorm / unnorm.sum(axis=-1, keepdims=True)


def kl(p, q):
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return t.sum(axis=-1)


def random_problem(seed, X, Y, *, kind="nontransitive", concentration=1.0, scale=2.0):
    rng = np.random.default_rng(seed)
    pi_ref = rng.dirichlet(np.full(Y, concentration), size=X)
    if kind == "reward":
        r = rng.integers(0, max(2, Y // 2), size=(X, Y)).astype(np.float64)
        d = r[:, :, None] - r[:, None, :]
        P = np.where(d > 0, 1.0, np.where(d == 0, 0.5, 0.0))
        return pi_ref, P, r
    G = scale * rng.standard_normal((X, Y, Y))
    A = (G - np.swapaxes(G, 1, 2)) / np.sqrt(2)
    if kind == "bradley_terry":
        r = scale * rng.standard_normal((X, Y))
        A = r[:, :, None] - r[:, None, :]
    P = 1 / (1 + np.exp(-A))
    P = 0.5 * (P + 1 - np.swapaxes(P, 1, 2))
    return pi_ref, P, None

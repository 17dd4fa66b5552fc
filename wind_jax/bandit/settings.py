"""Contextual-bandit settings of the bandit study (benchmarks/bandit_study.py): a preference game and a policy
class per setting "GAME/POLICY", the exact references pi_ref and pi*_beta (wind_jax.games), and cheaper
XLA:CPU code generation for the study's many small compiled runs.

    P, policy, theta_ref = make_setting("nontransitive", "realizable", key, X=8, Y=16, pref_scale=2.0)
    pi_ref, pi_star = equilibrium(policy, theta_ref, P, beta=0.2)
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from wind_jax import games
from wind_jax.bandit import policies

__all__ = ["GAMES", "POLICIES", "make_setting", "equilibrium", "use_cheap_codegen"]

GAMES = ("bradley_terry", "nontransitive")
POLICIES = ("realizable", "misspecified", "mlp")


def make_setting(game: str, policy_kind: str, key, X: int, Y: int, pref_scale: float, misspecified_dim: int = 32):
    """(P [X, Y, Y] with exact P + P^T = 1, policy, theta_ref) of one game of the setting game/policy_kind.

    The game (Bradley-Terry or non-transitive preferences) and theta_ref come from `key`; the features come
    from one key for every game. Realizable: log-linear on one-hot (x, y) features plus 8 random ones;
    misspecified: log-linear on `misspecified_dim` random features, zero-padded to the realizable width (the
    same family; theta on the padding starts at zero and stays inert); mlp: an MLP on 8 random features.
    """
    if game not in GAMES or policy_kind not in POLICIES:
        raise ValueError(f"setting {game}/{policy_kind}: game must be one of {GAMES}, policy one of {POLICIES}")
    k_game, k_ref = jax.random.split(jax.random.fold_in(key, GAMES.index(game)))
    k_feat = jax.random.fold_in(key, 777)  # the same features for every game
    if game == "bradley_terry":
        _, P = games.bradley_terry_preference(k_game, X, Y, scale=pref_scale)
    else:
        P = games.nontransitive_preference(k_game, X, Y, scale=pref_scale)
    P = 0.5 * (P + 1.0 - jnp.swapaxes(P, 1, 2))  # exact P + P^T = 1 in float32 (sigmoid rounding)
    realizable_dim = X * Y + 8
    if policy_kind == "realizable":
        policy = policies.LogLinearPolicy(policies.random_features(k_feat, X, Y, "realizable", dim=8))
    elif policy_kind == "misspecified":
        if not 1 <= misspecified_dim <= realizable_dim:
            raise ValueError(f"misspecified_dim must lie in [1, {realizable_dim}], got {misspecified_dim}")
        feats = policies.random_features(k_feat, X, Y, "misspecified", dim=misspecified_dim)
        policy = policies.LogLinearPolicy(policies.pad_features(feats, realizable_dim))
    else:
        policy = policies.MLPPolicy(policies.random_features(k_feat, X, Y, "misspecified", dim=8), hidden=32)
    theta_ref = policy.init(k_ref)
    if policy_kind == "misspecified":
        theta_ref = theta_ref.at[misspecified_dim:].set(0.0)
    return P, policy, theta_ref


def equilibrium(policy, theta_ref, P, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """(pi_ref, pi*_beta) [X, Y] as float64 NumPy arrays: pi_ref = the policy at theta_ref, pi*_beta = the
    WIND game's equilibrium (games.wind_equilibrium) computed in float64 from P made exactly antisymmetric."""
    pi_ref = np.exp(np.asarray(policy.log_probs(theta_ref), np.float64))
    pi_ref /= pi_ref.sum(-1, keepdims=True)
    with jax.enable_x64(True):
        P64 = np.asarray(P, np.float64)
        P64 = 0.5 * (P64 + 1.0 - np.swapaxes(P64, 1, 2))
        pi_star = np.asarray(games.wind_equilibrium(pi_ref, P64, beta))
    return pi_ref, pi_star


def use_cheap_codegen() -> None:
    """Compile time dominates these tiny programs: cheaper XLA:CPU codegen (about 4x faster compiles, about 2x
    slower MLP steps; the same math). Call before the first JAX computation (it sets XLA_FLAGS)."""
    if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                                   " --xla_llvm_disable_expensive_passes=true").strip()

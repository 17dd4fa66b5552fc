"""Exact tabular games for WIND and iterative best-of-n (MATH.md). All cores are jitted and batched over
contexts; public functions validate concrete inputs (ValueError) and skip checks under tracing.

Shapes: pi [X, Y] (rows sum to 1), P [X, Y, Y] with P + P^T = 1, reward r [X, Y].
"""

from wind_jax.games.best_of_n import (
    best_of_n,
    best_of_n_reward,
    beta_to_mixing,
    iterative_bon,
    iterative_bon_reward,
    mixing_to_beta,
)
from wind_jax.games.frontier import frontier_win_rate_at_kl, win_rate_frontier
from wind_jax.games.metrics import (
    exploitability,
    kl,
    policy_win_rate,
    regularized_gap,
    starved_mass,
    support_size,
)
from wind_jax.games.preferences import (
    bradley_terry_preference,
    dirichlet_policy,
    nontransitive_preference,
    reward_preference,
    reward_to_preference,
    win_rate,
)
from wind_jax.games.wind import (
    PARAMETRIZATIONS,
    exact_wind,
    log_win_rate_equilibrium,
    md_to_mmd_step,
    mmd_to_md_step,
    wind_equilibrium,
    wind_step,
)

__all__ = [
    "PARAMETRIZATIONS",
    "best_of_n",
    "best_of_n_reward",
    "beta_to_mixing",
    "bradley_terry_preference",
    "dirichlet_policy",
    "exact_wind",
    "exploitability",
    "frontier_win_rate_at_kl",
    "iterative_bon",
    "iterative_bon_reward",
    "kl",
    "log_win_rate_equilibrium",
    "md_to_mmd_step",
    "mixing_to_beta",
    "mmd_to_md_step",
    "nontransitive_preference",
    "policy_win_rate",
    "regularized_gap",
    "reward_preference",
    "reward_to_preference",
    "starved_mass",
    "support_size",
    "win_rate",
    "win_rate_frontier",
    "wind_equilibrium",
    "wind_step",
]

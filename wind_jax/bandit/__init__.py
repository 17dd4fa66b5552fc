"""Practical WIND (MATH.md, Algorithm 3) and its baselines on contextual bandits with function approximation.

env: sampling and Bernoulli duels with exact sample / query counts. policies: log-linear and MLP policies
(pytrees: pass them as jit arguments). algorithms: the methods of the comparison, one outer iteration
(`make_outer_step`), a whole compiled run (`make_run`), exact metrics against wind_jax.games, and the
best-in-class KL of a policy class (`best_in_class_kl`).
"""
from wind_jax.bandit.algorithms import (
    METRICS,
    OFFSET_MODES,
    Draw,
    LoopState,
    Method,
    MethodParams,
    RunOutput,
    assemble_batch,
    best_in_class_kl,
    bon_mixing_for,
    compile_key,
    draw,
    exact_metrics,
    fit,
    init_state,
    make_methods,
    make_outer_step,
    make_run,
    method_params,
    policy_logps,
    with_offset,
)
from wind_jax.bandit.env import (
    Counts,
    duel,
    sample_prompts,
    sample_responses,
    validate_preference,
)
from wind_jax.bandit.policies import LogLinearPolicy, MLPPolicy, pad_features, random_features

__all__ = [
    "METRICS",
    "OFFSET_MODES",
    "Counts",
    "Draw",
    "LogLinearPolicy",
    "LoopState",
    "MLPPolicy",
    "Method",
    "MethodParams",
    "RunOutput",
    "assemble_batch",
    "best_in_class_kl",
    "bon_mixing_for",
    "compile_key",
    "draw",
    "duel",
    "exact_metrics",
    "fit",
    "init_state",
    "make_methods",
    "make_outer_step",
    "make_run",
    "method_params",
    "pad_features",
    "policy_logps",
    "random_features",
    "sample_prompts",
    "sample_responses",
    "validate_preference",
    "with_offset",
]

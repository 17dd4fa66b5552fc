"""Training: pure sharded steps (steps.py). The outer loop and oracles add their exports below."""
from wind_jax.train.steps import (
    OptimizerConfig,
    PolicyWithOffset,
    init_optimizer_state,
    jit_logprob_step,
    jit_policy_step,
    jit_reward_step,
    logprob_step,
    make_optimizer,
    pair_logits,
    policy_outputs,
    policy_step,
    response_logprobs,
    reward_step,
)

__all__ = [
    "OptimizerConfig",
    "PolicyWithOffset",
    "init_optimizer_state",
    "jit_logprob_step",
    "jit_policy_step",
    "jit_reward_step",
    "logprob_step",
    "make_optimizer",
    "pair_logits",
    "policy_outputs",
    "policy_step",
    "response_logprobs",
    "reward_step",
]

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

# outer loop, oracles, checkpoints, metrics, synthetic language (train.loop engineer)
from wind_jax.train.checkpoint import CheckpointConfigError, Checkpointer, check_compatible  # noqa: E402
from wind_jax.train.loop import METHODS, AlignmentLoop, ArrayPrompts, FunctionPrompts, LoopConfig  # noqa: E402
from wind_jax.train.metrics import MetricsLogger, plot_summary  # noqa: E402
from wind_jax.train.oracle import (GoldOracle, HeadOracle, JudgeOracle, JudgeTemplate,  # noqa: E402
                                   PreferenceOracle, Tokens)
from wind_jax.train.synthetic import SyntheticLanguage  # noqa: E402

__all__ += ["CheckpointConfigError", "Checkpointer", "check_compatible", "METHODS", "AlignmentLoop",
            "ArrayPrompts", "FunctionPrompts", "LoopConfig", "MetricsLogger", "plot_summary", "GoldOracle",
            "HeadOracle", "JudgeOracle", "JudgeTemplate", "PreferenceOracle", "Tokens", "SyntheticLanguage"]

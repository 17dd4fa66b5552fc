"""Training: pure sharded steps (steps.py), the outer loop (config, rollout, evaluate, loop), oracles."""
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

# the outer loop and its parts, oracles, checkpoints, metrics, the synthetic language
from wind_jax.methods import METHODS  # noqa: E402
from wind_jax.train.checkpoint import CheckpointConfigError, Checkpointer, check_compatible  # noqa: E402
from wind_jax.train.config import ConfigError, LoopConfig  # noqa: E402
from wind_jax.train.loop import AlignmentLoop, LoopResult  # noqa: E402
from wind_jax.train.metrics import MetricsLogger, plot_summary  # noqa: E402
from wind_jax.train.oracle import (GoldOracle, HeadOracle, JudgeOracle, JudgeTemplate,  # noqa: E402
                                   PreferenceOracle, Tokens)
from wind_jax.train.rollout import ArrayPrompts, FunctionPrompts, NonFiniteError, OracleError  # noqa: E402
from wind_jax.train.synthetic import SyntheticLanguage  # noqa: E402

__all__ += ["CheckpointConfigError", "ConfigError", "Checkpointer", "check_compatible", "METHODS", "AlignmentLoop", "LoopResult",
            "ArrayPrompts", "FunctionPrompts", "LoopConfig", "MetricsLogger", "plot_summary", "GoldOracle",
            "HeadOracle", "JudgeOracle", "JudgeTemplate", "NonFiniteError", "OracleError", "PreferenceOracle",
            "Tokens", "SyntheticLanguage"]

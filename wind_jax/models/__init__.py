"""The one decoder (Llama, Mistral, Qwen2/3, Gemma 2/3 are configurations of it) as a policy (Flax NNX),
reward / preference heads, LoRA, Hugging Face / GGUF checkpoints, tokenizer."""
from wind_jax.models.attention import AttentionMask, attention
from wind_jax.models.config import DecoderConfig, LlamaConfig, rope_inv_frequencies
from wind_jax.models.heads import (
    PolicyWithOffset,
    PreferenceHead,
    RewardHead,
    bradley_terry_loss,
    last_token_index,
    pool_last,
    reward_prob_fn,
)
from wind_jax.models.transformer import (
    CACHE_AXES,
    SHARDING_METADATA_KEY,
    KVCache,
    Transformer,
    positions_from_mask,
    sequence_logprobs,
    token_logprobs,
)
from wind_jax.models.convert import (export_hf, import_gguf, import_hf, import_reward_model, load_gguf,
                                     write_generation_config)
from wind_jax.models.lora import LORA, LoraTransformer, apply_lora, lora_state, merge_lora
from wind_jax.models.tokenizer import Tokenizer

__all__ = [
    "DecoderConfig",
    "LlamaConfig",
    "rope_inv_frequencies",
    "attention",
    "AttentionMask",
    "CACHE_AXES",
    "SHARDING_METADATA_KEY",
    "KVCache",
    "Transformer",
    "positions_from_mask",
    "sequence_logprobs",
    "token_logprobs",
    "RewardHead",
    "PreferenceHead",
    "PolicyWithOffset",
    "reward_prob_fn",
    "bradley_terry_loss",
    "last_token_index",
    "pool_last",
    "Tokenizer",
    "export_hf",
    "import_gguf",
    "import_hf",
    "load_gguf",
    "import_reward_model",
    "write_generation_config",
    "LORA",
    "LoraTransformer",
    "apply_lora",
    "lora_state",
    "merge_lora",
]

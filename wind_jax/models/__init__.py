"""Llama-family policy (Flax NNX), reward / preference heads, Hugging Face / GGUF checkpoints, tokenizer."""
from wind_jax.models.attention import AttentionMask, attention
from wind_jax.models.config import LlamaConfig, rope_inv_frequencies
from wind_jax.models.heads import (
    PreferenceHead,
    RewardHead,
    bradley_terry_loss,
    last_token_index,
    pool_last,
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
from wind_jax.models.convert import export_hf, import_gguf, import_hf, load_gguf
from wind_jax.models.tokenizer import Tokenizer

__all__ = [
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
    "bradley_terry_loss",
    "last_token_index",
    "pool_last",
    "Tokenizer",
    "export_hf",
    "import_gguf",
    "import_hf",
    "load_gguf",
]

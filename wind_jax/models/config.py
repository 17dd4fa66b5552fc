"""LlamaConfig: the frozen, hashable configuration of a Llama-family decoder.

Field semantics follow Hugging Face's `LlamaConfig` (so checkpoints map one to one); `from_hf_dict` /
`to_hf_dict` translate. `rope_scaling` is stored as an immutable mapping so the config stays hashable
(it is static data of the NNX graph and of jitted functions).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from flax.core import FrozenDict

_DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots")
ATTENTION_IMPLS = ("reference", "xla", "cudnn", "splash")
_ROPE_TYPES = ("default", "linear", "llama3")
_ROPE_REQUIRED = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def _normalize_rope_scaling(rope_scaling: Mapping[str, Any] | None) -> FrozenDict | None:
    """Validate a HF-style rope_scaling dict; returns a FrozenDict with key 'rope_type' (or None)."""
    if rope_scaling is None:
        return None
    if not isinstance(rope_scaling, Mapping):
        raise ValueError(f"rope_scaling must be a mapping or None, got {type(rope_scaling).__name__}")
    d = dict(rope_scaling)
    rope_type = d.pop("rope_type", None) or d.pop("type", None) or "default"
    d.pop("type", None)
    d.pop("rope_theta", None)  # transformers>=5 keeps theta inside rope_parameters; we keep it apart
    if rope_type not in _ROPE_TYPES:
        raise ValueError(f"rope_scaling: unsupported rope_type {rope_type!r}; supported: {_ROPE_TYPES}")
    for key in _ROPE_REQUIRED[rope_type]:
        if key not in d:
            raise ValueError(f"rope_scaling: rope_type {rope_type!r} needs field {key!r}")
    if rope_type == "default":
        return None
    if float(d["factor"]) <= 0:
        raise ValueError(f"rope_scaling.factor must be > 0, got {d['factor']}")
    if rope_type == "llama3" and not float(d["high_freq_factor"]) > float(d["low_freq_factor"]):
        raise ValueError("rope_scaling: high_freq_factor must exceed low_freq_factor")
    d["rope_type"] = rope_type
    return FrozenDict(d)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture + dtype policy of a Llama-family causal decoder.

    dtype: compute dtype of matmuls/activations ("float32" or "bfloat16"); norms, softmax, logits and
    log-softmax are always float32. param_dtype: storage dtype of parameters (default float32).
    attention_bias: bias on q/k/v/o projections (HF Llama `attention_bias` semantics).

    Execution knobs (no effect on the function computed, not part of the HF config):
    scan_layers: run the stacked decoder layers with one jax.lax.scan (True) or a Python loop over the
    same stacked parameters (False). remat: what the backward pass keeps per layer, "none" (everything),
    "full" (only the layer input; the layer is recomputed) or "dots" (matmul outputs without batch
    dimensions, i.e. the projections; attention and elementwise ops are recomputed).
    attention: "reference" (einsum, materializes the [B, H, T, S] scores), "xla" / "cudnn"
    (jax.nn.dot_product_attention) or "splash" (Pallas TPU splash kernel; TPU only, cache-free calls).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rope_scaling: Mapping[str, Any] | None = None
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_bias: bool = False
    initializer_range: float = 0.02
    scan_layers: bool = True
    remat: str = "none"
    attention: str = "reference"

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"LlamaConfig.{name} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"LlamaConfig.num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"LlamaConfig.hidden_size ({self.hidden_size}) is not divisible by num_heads "
                    f"({self.num_heads}); set head_dim explicitly")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if not isinstance(self.head_dim, int) or self.head_dim <= 0 or self.head_dim % 2:
            raise ValueError(f"LlamaConfig.head_dim must be a positive even int, got {self.head_dim!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"LlamaConfig.rope_theta must be > 0, got {self.rope_theta}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"LlamaConfig.rms_norm_eps must be > 0, got {self.rms_norm_eps}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"LlamaConfig.{name} must be one of {_DTYPES}, got {getattr(self, name)!r}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"LlamaConfig.remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"LlamaConfig.attention must be one of {ATTENTION_IMPLS}, got {self.attention!r}")
        if not isinstance(self.scan_layers, bool):
            raise ValueError(f"LlamaConfig.scan_layers must be a bool, got {self.scan_layers!r}")
        object.__setattr__(self, "rope_scaling", _normalize_rope_scaling(self.rope_scaling))
        object.__setattr__(self, "rope_theta", float(self.rope_theta))
        object.__setattr__(self, "rms_norm_eps", float(self.rms_norm_eps))

    def replace(self, **changes) -> LlamaConfig:
        return dataclasses.replace(self, **changes)

    @property
    def num_params(self) -> int:
        """Closed-form parameter count (matches the module tree)."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_heads * hd, self.num_kv_heads * hd
        attn = d * q + 2 * d * kv + q * d
        if self.attention_bias:
            attn += q + 2 * kv + d
        layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else d * self.vocab_size
        return self.vocab_size * d + self.num_layers * layer + d + head

    # ----------------------------------------------------------------- presets
    @classmethod
    def tiny(cls, **overrides) -> LlamaConfig:
        """A test-sized model (vocab 128, hidden 64, 2 layers, GQA 4 heads / 2 kv heads)."""
        base = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                    num_kv_heads=2, rope_theta=10000.0, max_position_embeddings=256)
        return cls(**{**base, **overrides})

    @classmethod
    def smollm2_135m(cls, **overrides) -> LlamaConfig:
        """HuggingFaceTB/SmolLM2-135M architecture (tied embeddings, theta 1e5)."""
        base = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                    num_kv_heads=3, rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                    max_position_embeddings=8192)
        return cls(**{**base, **overrides})

    @classmethod
    def llama3_8b(cls, **overrides) -> LlamaConfig:
        """Meta-Llama-3-8B architecture (8.03e9 parameters, untied)."""
        base = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
                    num_heads=32, num_kv_heads=8, rope_theta=500000.0, rms_norm_eps=1e-5,
                    tie_word_embeddings=False, max_position_embeddings=8192)
        return cls(**{**base, **overrides})

    @classmethod
    def llama31_8b(cls, **overrides) -> LlamaConfig:
        """Llama-3.1-8B: llama3_8b with "llama3" RoPE scaling to 131072 positions."""
        base = dict(max_position_embeddings=131072,
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
        return cls.llama3_8b(**{**base, **overrides})

    # ---------------------------------------------------------- HF round trip
    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], **overrides) -> LlamaConfig:
        """Build from a Hugging Face config.json dict (Llama architecture)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"from_hf_dict expects a mapping, got {type(d).__name__}")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads"):
            if key not in d:
                raise ValueError(f"HF config is missing field {key!r}")
        act = d.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ValueError(f"HF config hidden_act={act!r} is not supported (only silu)")
        if d.get("mlp_bias", False):
            raise ValueError("HF config mlp_bias=True is not supported")
        rope_params = d.get("rope_parameters") or None
        rope_scaling = d.get("rope_scaling")
        rope_theta = d.get("rope_theta")
        if rope_params is not None:  # transformers>=5 layout
            rope_theta = rope_params.get("rope_theta", rope_theta)
            if rope_scaling is None:
                rope_scaling = rope_params
        kwargs = dict(
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_layers=int(d["num_hidden_layers"]),
            num_heads=int(d["num_attention_heads"]),
            num_kv_heads=int(d.get("num_key_value_heads") or d["num_attention_heads"]),
            head_dim=int(d["head_dim"]) if d.get("head_dim") else None,
            rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
            rope_scaling=rope_scaling,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            attention_bias=bool(d.get("attention_bias", False)),
            initializer_range=float(d.get("initializer_range", 0.02)),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json dict that transformers' LlamaConfig reads (legacy rope_theta/rope_scaling keys)."""
        rope_scaling = None if self.rope_scaling is None else dict(self.rope_scaling)
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "attention_bias": self.attention_bias,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "initializer_range": self.initializer_range,
            "torch_dtype": self.param_dtype,
        }


def rope_inv_frequencies(config: LlamaConfig):
    """Inverse frequencies [head_dim/2] (float32 numpy), HF Llama semantics incl. linear/llama3 scaling."""
    import numpy as np

    dim = config.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (np.float32(1.0) / (np.float32(config.rope_theta) ** exponents)).astype(np.float32)
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return (inv_freq / np.float32(factor)).astype(np.float32)
    # "llama3": keep high frequencies, divide low ones by factor, interpolate in between.
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen = old_len / low
    high_freq_wavelen = old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)

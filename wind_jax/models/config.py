"""DecoderConfig (alias LlamaConfig): the frozen, hashable configuration of the one causal decoder.

Llama, Mistral, Qwen2/2.5, Qwen3, Gemma 2 and Gemma 3 are configurations of it: every layer feature a
family needs is a field (defaults = Llama). Field semantics follow Hugging Face's configs (so checkpoints
map one to one); `from_hf_dict` / `to_hf_dict` translate per `model_type`. Mappings (rope_scaling) and
sequences (layer_types) are stored immutable so the config stays hashable (it is static data of the NNX
graph and of jitted functions).
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
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text")
MLP_ACTIVATIONS = ("silu", "gelu_tanh")
LAYER_TYPES = ("full_attention", "sliding_attention")
_HF_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM", "gemma2": "Gemma2ForCausalLM",
                  "gemma3_text": "Gemma3ForCausalLM"}
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


def _rope_from_hf(params: Mapping[str, Any] | None, theta, scaling):
    """(theta, scaling) of one HF rope_parameters entry (transformers>=5) or the legacy keys."""
    if params:
        theta = params.get("rope_theta", theta)
        if scaling is None:
            scaling = params
    return float(theta if theta is not None else 10000.0), scaling


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Architecture + dtype policy of the causal decoder (Llama, Mistral, Qwen2/3, Gemma 2/3).

    dtype: compute dtype of matmuls/activations ("float32" or "bfloat16"); norms, softmax, logits and
    log-softmax are always float32. param_dtype: storage dtype of parameters (default float32).
    attention_bias: bias on q/k/v/o projections (HF Llama `attention_bias` semantics).

    Family features (defaults give Llama; MATH-style equations, x the residual stream, d = hidden_size):
      model_type: the Hugging Face family written by `to_hf_dict` ("llama", "mistral", "qwen2", "qwen3",
        "gemma2", "gemma3_text"); it selects names only, the function computed is set by the fields below.
      qkv_bias: bias on q/k/v but not o (Qwen2): q = x Wq + bq, k = x Wk + bk, v = x Wv + bv.
      qk_norm: per-head RMSNorm over head_dim on q and k before RoPE (Qwen3, Gemma 3):
        q_h <- RMSNorm(q_h) * g_q, k_h <- RMSNorm(k_h) * g_k.
      head_dim: explicit per-head width (may differ from d / num_heads: Qwen3, Gemma).
      mlp_activation: "silu" (SwiGLU, down(silu(g) * u)) or "gelu_tanh" (GeGLU, down(gelu_tanh(g) * u),
        gelu_tanh(z) = z/2 (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))).
      norm_plus_one: RMSNorm(x) * (1 + w) computed in float32 (Gemma) instead of RMSNorm(x) * w.
      scale_embeddings: embeddings multiplied by sqrt(d) (Gemma); the tied unembedding uses the raw table.
      post_norms: norms on the attention and MLP outputs as well (Gemma "sandwich"):
        x <- x + N_po(Attn(N_in(x))), x <- x + N_mo(MLP(N_pre(x))).
      attn_logit_softcap: s <- c tanh(s / c) on the scaled attention scores (Gemma 2; None = off).
      final_logit_softcap: logits <- c tanh(logits / c) (Gemma 2; None = off).
      query_pre_attn_scalar: scores scale 1/sqrt(query_pre_attn_scalar) instead of 1/sqrt(head_dim) (Gemma).
      sliding_window: W; a local layer's query at slot t sees keys at slots s with t - W < s <= t.
      layer_types: per layer "full_attention" or "sliding_attention" (Gemma 2 alternating, Gemma 3 five
        local to one global); None = every layer sliding when sliding_window is set (Mistral), else full.
      local_rope_theta / local_rope_scaling: the RoPE base (and scaling) of sliding layers (Gemma 3: 1e4
        local, rope_theta = 1e6 global); None = the same as the global layers.

    Execution knobs (no effect on the function computed, not part of the HF config):
    scan_layers: run the stacked decoder layers with one jax.lax.scan (True) or a Python loop over the
    same stacked parameters (False). remat: what the backward pass keeps per layer, "none" (everything),
    "full" (only the layer input; the layer is recomputed) or "dots" (matmul outputs without batch
    dimensions, i.e. the projections; attention and elementwise ops are recomputed).
    attention: "reference" (einsum, materializes the [B, H, T, S] scores), "xla" / "cudnn"
    (jax.nn.dot_product_attention; no attention soft-cap) or "splash" (Pallas TPU splash kernel; TPU
    only, cache-free calls).
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
    model_type: str = "llama"
    qkv_bias: bool = False
    qk_norm: bool = False
    mlp_activation: str = "silu"
    norm_plus_one: bool = False
    scale_embeddings: bool = False
    post_norms: bool = False
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    query_pre_attn_scalar: float | None = None
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    local_rope_theta: float | None = None
    local_rope_scaling: Mapping[str, Any] | None = None

    def __post_init__(self):
        name = type(self).__name__
        for field in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                      "num_kv_heads", "max_position_embeddings"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}.{field} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"{name}.num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"{name}.hidden_size ({self.hidden_size}) is not divisible by num_heads "
                    f"({self.num_heads}); set head_dim explicitly")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if not isinstance(self.head_dim, int) or self.head_dim <= 0 or self.head_dim % 2:
            raise ValueError(f"{name}.head_dim must be a positive even int, got {self.head_dim!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"{name}.rope_theta must be > 0, got {self.rope_theta}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"{name}.rms_norm_eps must be > 0, got {self.rms_norm_eps}")
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in _DTYPES:
                raise ValueError(f"{name}.{field} must be one of {_DTYPES}, got {getattr(self, field)!r}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"{name}.remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"{name}.attention must be one of {ATTENTION_IMPLS}, got {self.attention!r}")
        for field in ("scan_layers", "qkv_bias", "qk_norm", "norm_plus_one", "scale_embeddings",
                      "post_norms", "attention_bias", "tie_word_embeddings"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"{name}.{field} must be a bool, got {getattr(self, field)!r}")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"{name}.model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if self.mlp_activation not in MLP_ACTIVATIONS:
            raise ValueError(f"{name}.mlp_activation must be one of {MLP_ACTIVATIONS}, "
                             f"got {self.mlp_activation!r}")
        for field in ("attn_logit_softcap", "final_logit_softcap", "query_pre_attn_scalar", "local_rope_theta"):
            value = getattr(self, field)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                    raise ValueError(f"{name}.{field} must be a positive number or None, got {value!r}")
                object.__setattr__(self, field, float(value))
        if self.attn_logit_softcap is not None and self.attention in ("xla", "cudnn"):
            raise ValueError(f"{name}.attention={self.attention!r} cannot soft-cap attention logits "
                             f"(attn_logit_softcap={self.attn_logit_softcap}); use 'reference' or 'splash'")
        self._normalize_layer_types(name)
        object.__setattr__(self, "rope_scaling", _normalize_rope_scaling(self.rope_scaling))
        object.__setattr__(self, "local_rope_scaling", _normalize_rope_scaling(self.local_rope_scaling))
        object.__setattr__(self, "rope_theta", float(self.rope_theta))
        object.__setattr__(self, "rms_norm_eps", float(self.rms_norm_eps))
        if self.sliding_window is None:  # no local layers: a local RoPE would never be used
            object.__setattr__(self, "local_rope_theta", None)
            object.__setattr__(self, "local_rope_scaling", None)
        elif (self.local_rope_theta in (None, self.rope_theta)
              and self.local_rope_scaling == self.rope_scaling):
            object.__setattr__(self, "local_rope_theta", None)
            object.__setattr__(self, "local_rope_scaling", None)
        elif self.local_rope_theta is None:
            object.__setattr__(self, "local_rope_theta", self.rope_theta)

    def _normalize_layer_types(self, name: str) -> None:
        """Canonical form: layer_types only when local and global layers mix; sliding_window None when no
        layer is local."""
        window = self.sliding_window
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window <= 0):
            raise ValueError(f"{name}.sliding_window must be a positive int or None, got {window!r}")
        types = self.layer_types
        if types is None:
            return
        if isinstance(types, str) or not all(isinstance(t, str) for t in types):
            raise ValueError(f"{name}.layer_types must be a sequence of {LAYER_TYPES}, got {types!r}")
        types = tuple(types)
        if len(types) != self.num_layers:
            raise ValueError(f"{name}.layer_types has {len(types)} entries, num_layers is {self.num_layers}")
        bad = sorted(set(types) - set(LAYER_TYPES))
        if bad:
            raise ValueError(f"{name}.layer_types: unknown type(s) {bad}; supported: {LAYER_TYPES}")
        sliding = [t == "sliding_attention" for t in types]
        if any(sliding) and window is None:
            raise ValueError(f"{name}.layer_types has sliding_attention layers but sliding_window is None")
        if not any(sliding):
            object.__setattr__(self, "sliding_window", None)
            types = None
        elif all(sliding):
            types = None
        object.__setattr__(self, "layer_types", types)

    @property
    def layer_is_sliding(self) -> tuple[bool, ...]:
        """Per layer: True for a sliding-window (local) layer."""
        if self.layer_types is None:
            return (self.sliding_window is not None,) * self.num_layers
        return tuple(t == "sliding_attention" for t in self.layer_types)

    @property
    def has_local_rope(self) -> bool:
        """True when local layers use their own RoPE base / scaling (Gemma 3)."""
        return self.local_rope_theta is not None

    @property
    def attn_scale(self) -> float:
        """Scale of q.k: 1/sqrt(query_pre_attn_scalar) (Gemma) or 1/sqrt(head_dim)."""
        return float(1.0 / math.sqrt(self.query_pre_attn_scalar or self.head_dim))

    def replace(self, **changes) -> DecoderConfig:
        return dataclasses.replace(self, **changes)

    @property
    def num_params(self) -> int:
        """Closed-form parameter count (matches the module tree)."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_heads * hd, self.num_kv_heads * hd
        attn = d * q + 2 * d * kv + q * d
        if self.attention_bias:
            attn += q + 2 * kv + d
        elif self.qkv_bias:
            attn += q + 2 * kv
        if self.qk_norm:
            attn += 2 * hd
        layer = attn + 3 * d * f + (4 if self.post_norms else 2) * d
        head = 0 if self.tie_word_embeddings else d * self.vocab_size
        return self.vocab_size * d + self.num_layers * layer + d + head

    # ----------------------------------------------------------------- presets
    @classmethod
    def tiny(cls, **overrides) -> DecoderConfig:
        """A test-sized model (vocab 128, hidden 64, 2 layers, GQA 4 heads / 2 kv heads)."""
        base = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                    num_kv_heads=2, rope_theta=10000.0, max_position_embeddings=256)
        return cls(**{**base, **overrides})

    @classmethod
    def smollm2_135m(cls, **overrides) -> DecoderConfig:
        """HuggingFaceTB/SmolLM2-135M architecture (tied embeddings, theta 1e5)."""
        base = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                    num_kv_heads=3, rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                    max_position_embeddings=8192)
        return cls(**{**base, **overrides})

    @classmethod
    def llama3_8b(cls, **overrides) -> DecoderConfig:
        """Meta-Llama-3-8B architecture (8.03e9 parameters, untied)."""
        base = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
                    num_heads=32, num_kv_heads=8, rope_theta=500000.0, rms_norm_eps=1e-5,
                    tie_word_embeddings=False, max_position_embeddings=8192)
        return cls(**{**base, **overrides})

    @classmethod
    def llama31_8b(cls, **overrides) -> DecoderConfig:
        """Llama-3.1-8B: llama3_8b with "llama3" RoPE scaling to 131072 positions."""
        base = dict(max_position_embeddings=131072,
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
        return cls.llama3_8b(**{**base, **overrides})

    @classmethod
    def mistral_7b(cls, **overrides) -> DecoderConfig:
        """Mistral-7B-v0.3 architecture (vocab 32768, theta 1e6; v0.1's 4096-token window via overrides)."""
        base = dict(model_type="mistral", vocab_size=32768, hidden_size=4096, intermediate_size=14336,
                    num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=1e6,
                    rms_norm_eps=1e-5, max_position_embeddings=32768)
        return cls(**{**base, **overrides})

    @classmethod
    def qwen25_7b(cls, **overrides) -> DecoderConfig:
        """Qwen2.5-7B architecture (q/k/v biases, GQA 28/4, untied)."""
        base = dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                    num_layers=28, num_heads=28, num_kv_heads=4, rope_theta=1e6, rms_norm_eps=1e-6,
                    qkv_bias=True, max_position_embeddings=32768)
        return cls(**{**base, **overrides})

    @classmethod
    def qwen3_4b(cls, **overrides) -> DecoderConfig:
        """Qwen3-4B architecture (q/k norms, head_dim 128, tied)."""
        base = dict(model_type="qwen3", vocab_size=151936, hidden_size=2560, intermediate_size=9728,
                    num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=1e6,
                    rms_norm_eps=1e-6, qk_norm=True, tie_word_embeddings=True, max_position_embeddings=40960)
        return cls(**{**base, **overrides})

    @classmethod
    def qwen3_8b(cls, **overrides) -> DecoderConfig:
        """Qwen3-8B architecture (q/k norms, head_dim 128, untied)."""
        base = dict(hidden_size=4096, intermediate_size=12288, tie_word_embeddings=False)
        return cls.qwen3_4b(**{**base, **overrides})

    @classmethod
    def gemma2_2b(cls, **overrides) -> DecoderConfig:
        """Gemma-2-2B architecture (soft-caps 50 / 30, alternating 4096-token local and global layers)."""
        base = dict(model_type="gemma2", vocab_size=256000, hidden_size=2304, intermediate_size=9216,
                    num_layers=26, num_heads=8, num_kv_heads=4, head_dim=256, rope_theta=10000.0,
                    rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=8192,
                    mlp_activation="gelu_tanh", norm_plus_one=True, scale_embeddings=True, post_norms=True,
                    attn_logit_softcap=50.0, final_logit_softcap=30.0, query_pre_attn_scalar=256,
                    sliding_window=4096,
                    layer_types=tuple("sliding_attention" if i % 2 == 0 else "full_attention"
                                      for i in range(26)))
        return cls(**{**base, **overrides})

    @classmethod
    def gemma3_270m(cls, **overrides) -> DecoderConfig:
        """Gemma-3-270M architecture (18 layers, 5 local (window 512, theta 1e4) : 1 global (theta 1e6))."""
        return cls._gemma3(dict(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_layers=18,
                                num_heads=4, num_kv_heads=1, sliding_window=512,
                                max_position_embeddings=32768), overrides)

    @classmethod
    def gemma3_1b(cls, **overrides) -> DecoderConfig:
        """Gemma-3-1B architecture (26 layers, 5 local (window 512) : 1 global, MQA, 1.0e9 parameters)."""
        return cls._gemma3(dict(vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_layers=26,
                                num_heads=4, num_kv_heads=1, sliding_window=512,
                                max_position_embeddings=32768), overrides)

    @classmethod
    def gemma3_12b(cls, **overrides) -> DecoderConfig:
        """Gemma-3-12B text decoder (48 layers, window 1024, global RoPE linearly scaled by 8)."""
        return cls._gemma3(dict(vocab_size=262208, hidden_size=3840, intermediate_size=15360, num_layers=48,
                                num_heads=16, num_kv_heads=8, sliding_window=1024,
                                max_position_embeddings=131072,
                                rope_scaling={"rope_type": "linear", "factor": 8.0}), overrides)

    @classmethod
    def _gemma3(cls, base, overrides) -> DecoderConfig:
        n = overrides.get("num_layers", base["num_layers"])
        common = dict(model_type="gemma3_text", head_dim=256, rope_theta=1e6, local_rope_theta=1e4,
                      rms_norm_eps=1e-6, tie_word_embeddings=True, mlp_activation="gelu_tanh",
                      norm_plus_one=True, scale_embeddings=True, post_norms=True, qk_norm=True,
                      query_pre_attn_scalar=256,
                      layer_types=tuple("full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                                        for i in range(n)))
        return cls(**{**common, **base, **overrides})

    # ---------------------------------------------------------- HF round trip
    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], **overrides) -> DecoderConfig:
        """Build from a Hugging Face config.json dict of a supported `model_type` (default "llama");
        ValueError naming the field for anything this decoder does not compute."""
        if not isinstance(d, Mapping):
            raise ValueError(f"from_hf_dict expects a mapping, got {type(d).__name__}")
        model_type = d.get("model_type") or "llama"
        if model_type not in MODEL_TYPES:
            raise ValueError(f"HF config model_type={model_type!r} is not supported (supported: {MODEL_TYPES})")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads"):
            if key not in d:
                raise ValueError(f"HF config is missing field {key!r}")
        gemma = model_type in ("gemma2", "gemma3_text")
        act_key = "hidden_activation" if gemma and d.get("hidden_activation") else "hidden_act"
        act = d.get(act_key) or ("gelu_pytorch_tanh" if gemma else "silu")
        if act not in _HF_ACTIVATIONS:
            raise ValueError(f"HF config {act_key}={act!r} is not supported (supported: "
                             f"{sorted(_HF_ACTIVATIONS)})")
        if d.get("mlp_bias", False):
            raise ValueError("HF config mlp_bias=True is not supported")
        for key in ("use_bidirectional_attention",):
            if d.get(key):
                raise ValueError(f"HF config {key}={d[key]!r} is not supported (causal decoders only)")
        n = int(d["num_hidden_layers"])
        rope_params = d.get("rope_parameters") or None
        local_params = None
        if rope_params is not None and isinstance(rope_params.get("full_attention"), Mapping):
            local_params = rope_params.get("sliding_attention")
            rope_params = rope_params["full_attention"]
        rope_theta, rope_scaling = _rope_from_hf(rope_params, d.get("rope_theta"), d.get("rope_scaling"))
        local_theta, local_scaling = None, None
        if local_params is not None:
            local_theta, local_scaling = _rope_from_hf(local_params, None, None)
        elif model_type == "gemma3_text":
            local_theta = float(d.get("rope_local_base_freq") or 10000.0)

        window = d.get("sliding_window")
        layer_types = d.get("layer_types")
        if model_type in ("llama",) and window is not None:
            raise ValueError(f"HF config sliding_window={window} is not a field of model_type {model_type!r}")
        if model_type in ("qwen2", "qwen3"):
            if not d.get("use_sliding_window", False):
                window, layer_types = None, None
            elif layer_types is None:
                start = int(d.get("max_window_layers", n))
                layer_types = ["sliding_attention" if i >= start else "full_attention" for i in range(n)]
        elif model_type == "gemma2" and layer_types is None and window is not None:
            layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
        elif model_type == "gemma3_text" and layer_types is None and window is not None:
            period = int(d.get("sliding_window_pattern") or d.get("_sliding_window_pattern") or 6)
            layer_types = ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(n)]
        if model_type == "mistral":
            layer_types = None
        bias = bool(d.get("attention_bias", False)) if model_type not in ("qwen2", "mistral") else False
        head_dim = d.get("head_dim")
        if gemma and not head_dim:
            head_dim = 256
        kwargs = dict(
            model_type=model_type,
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_layers=n,
            num_heads=int(d["num_attention_heads"]),
            num_kv_heads=int(d.get("num_key_value_heads") or d["num_attention_heads"]),
            head_dim=int(head_dim) if head_dim else None,
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", gemma)),
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            attention_bias=bias,
            initializer_range=float(d.get("initializer_range", 0.02)),
            qkv_bias=model_type == "qwen2",
            qk_norm=model_type in ("qwen3", "gemma3_text"),
            mlp_activation=_HF_ACTIVATIONS[act],
            norm_plus_one=gemma,
            scale_embeddings=gemma,
            post_norms=gemma,
            attn_logit_softcap=d.get("attn_logit_softcapping") if gemma else None,
            final_logit_softcap=d.get("final_logit_softcapping") if gemma else None,
            query_pre_attn_scalar=d.get("query_pre_attn_scalar", 256) if gemma else None,
            sliding_window=None if window is None else int(window),
            layer_types=None if layer_types is None else tuple(layer_types),
            local_rope_theta=local_theta,
            local_rope_scaling=local_scaling,
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json dict that transformers reads as `model_type` (Llama: legacy rope_theta /
        rope_scaling keys). ValueError naming the field when the family cannot express this config."""
        rope_scaling = None if self.rope_scaling is None else dict(self.rope_scaling)
        mt = self.model_type
        d = {
            "architectures": [_ARCHITECTURES[mt]],
            "model_type": mt,
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
        if mt == "llama":
            self._check_expressible(d)
            return d
        types = ["sliding_attention" if s else "full_attention" for s in self.layer_is_sliding]
        if mt == "mistral":
            del d["attention_bias"]
            d["sliding_window"] = self.sliding_window
        elif mt in ("qwen2", "qwen3"):
            if mt == "qwen2":
                del d["attention_bias"]
            d.update(use_sliding_window=self.sliding_window is not None, sliding_window=self.sliding_window,
                     max_window_layers=self.num_layers, layer_types=types)
        else:  # gemma2, gemma3_text
            del d["hidden_act"]
            qpas = self.query_pre_attn_scalar
            if qpas is not None and float(qpas).is_integer():
                qpas = int(qpas)  # transformers validates it as an int
            d.update(hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=qpas,
                     attn_logit_softcapping=self.attn_logit_softcap,
                     final_logit_softcapping=self.final_logit_softcap,
                     sliding_window=self.sliding_window, layer_types=types)
            if mt == "gemma3_text":
                local_theta = self.local_rope_theta or self.rope_theta
                local = ({"rope_type": "default"} if self.local_rope_scaling is None
                         else dict(self.local_rope_scaling))
                full = {"rope_type": "default"} if rope_scaling is None else dict(rope_scaling)
                d["rope_parameters"] = {"full_attention": {**full, "rope_theta": self.rope_theta},
                                        "sliding_attention": {**local, "rope_theta": local_theta}}
                d["rope_local_base_freq"] = local_theta
        self._check_expressible(d)
        return d

    def _check_expressible(self, d: dict) -> None:
        """Raise naming the fields that `model_type`'s HF config cannot carry (read back != self)."""
        knobs = ("dtype", "param_dtype", "scan_layers", "remat", "attention")
        back = type(self).from_hf_dict(d, **{k: getattr(self, k) for k in knobs})
        diff = [f.name for f in dataclasses.fields(self) if getattr(back, f.name) != getattr(self, f.name)]
        if diff:
            raise ValueError(f"{type(self).__name__}: model_type={self.model_type!r} cannot express "
                             f"field(s) {diff} (values {[getattr(self, f) for f in diff]}); choose another "
                             "model_type")


LlamaConfig = DecoderConfig  # the name every caller used before the other families arrived


def rope_inv_frequencies(config: DecoderConfig, *, local: bool = False):
    """Inverse frequencies [head_dim/2] (float32 numpy), HF semantics incl. linear/llama3 scaling;
    local=True gives those of sliding-window layers (config.local_rope_theta / local_rope_scaling)."""
    import numpy as np

    dim = config.head_dim
    use_local = local and config.has_local_rope
    theta = config.local_rope_theta if use_local else config.rope_theta
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)
    scaling = config.local_rope_scaling if use_local else config.rope_scaling
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

"""The one causal decoder in Flax NNX, plus `sequence_logprobs`.

HF LlamaForCausalLM semantics by default; Mistral, Qwen2/2.5, Qwen3, Gemma 2 and Gemma 3 are
configurations of it (DecoderConfig fields: biases, q/k norms, GeGLU, (1 + w) norms, embedding scale,
post norms, soft-caps, sliding-window layers with their own RoPE), never subclasses.

Parameter tree (stable: wind_jax.models.convert maps checkpoints onto these paths; kernels are [in, out]).
The decoder layers are ONE module whose parameters are stacked over a leading layer axis L (logical
axis "layers"): layers.attn.q_proj.kernel is [L, hidden, heads*head_dim], layer i is index i.
  embed.embedding                     [vocab, hidden]                ("vocab", "embed")
  layers.input_norm.scale             [L, hidden]                    ("layers", "embed")
  layers.attn.q_proj.kernel           [L, hidden, heads*head_dim]    ("layers", "embed", "heads")
  layers.attn.k_proj.kernel           [L, hidden, kv_heads*head_dim] ("layers", "embed", "kv_heads")
  layers.attn.v_proj.kernel           [L, hidden, kv_heads*head_dim] ("layers", "embed", "kv_heads")
  layers.attn.o_proj.kernel           [L, heads*head_dim, hidden]    ("layers", "heads", "embed")
  (with attention_bias: *.bias        [L, out]                       ("layers", out axis name))
  (with qkv_bias: q/k/v_proj.bias     [L, out]                       ("layers", out axis name))
  (with qk_norm: attn.q_norm.scale, attn.k_norm.scale [L, head_dim]  ("layers", "head_dim"))
  (with post_norms: attn_out_norm.scale, mlp_out_norm.scale [L, hidden] ("layers", "embed"))
  layers.post_attn_norm.scale         [L, hidden]                    ("layers", "embed")  (the pre-MLP norm)
  layers.mlp.gate_proj.kernel         [L, hidden, intermediate]      ("layers", "embed", "mlp")
  layers.mlp.up_proj.kernel           [L, hidden, intermediate]      ("layers", "embed", "mlp")
  layers.mlp.down_proj.kernel         [L, intermediate, hidden]      ("layers", "mlp", "embed")
  final_norm.scale                    [hidden]                       ("embed",)
  lm_head.kernel                      [hidden, vocab]                ("embed", "vocab")   (untied only)
The fused projection axes ("heads", "kv_heads") are head-major (head h owns columns h*head_dim ...), so
sharding them over a mesh axis splits whole heads. The KV cache is stacked too: k and v are
[L, B, S, kv_heads, head_dim] ("layers", "batch", "cache_seq", "kv_heads", "head_dim").

The layers run as one jax.lax.scan over the stacked parameters (config.scan_layers; False runs a Python
loop over the same parameters), each layer under jax.checkpoint with config.remat's policy; attention
goes through wind_jax.models.attention with backend config.attention. When local (sliding-window) and
global layers mix, the layer type is per-layer data of the scan (a bool per layer) that picks the mask
and the RoPE tables inside the one scanned body; the KV cache stays a full masked cache for every layer.

Sharding metadata: every nnx.Param carries its logical axis names in the standard Flax metadata key
`out_sharding` (a tuple of logical names), created with `eager_sharding=False` so no mesh is needed at
construction. `nnx.get_partition_spec(state)` inside `nnx.logical_axis_rules(rules)` (or
wind_jax.sharding's rules table) turns them into mesh PartitionSpecs.

Dtype policy: parameters are stored in config.param_dtype (float32), matmuls run in config.dtype, while
RMSNorm statistics, attention softmax, logits and log-softmax are float32.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wind_jax.models.attention import AttentionMask, attention, soft_cap
from wind_jax.models.config import DecoderConfig, rope_inv_frequencies

LlamaConfig = DecoderConfig

Array = jax.Array
KVCache = dict[str, Any]  # {"k": [L,B,S,KV,hd], "v": same, "mask": [B,S] bool, "index": int32 []}
CACHE_AXES = ("layers", "batch", "cache_seq", "kv_heads", "head_dim")

SHARDING_METADATA_KEY = "out_sharding"


def _param(rngs: nnx.Rngs, init, shape, dtype, names: tuple[str | None, ...]) -> nnx.Param:
    return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=names, eager_sharding=False)


def rows_dot(x: Array, w: Array, out_dtype=None) -> Array:
    """x [..., in] @ w [in, out] as ONE [tokens, in] x [in, out] product. Why: the gradient of a dot that
    contracts [B, T, in] makes XLA:CPU write the [B, T, out] cotangent transposed first (a strided copy that
    took 1.6 of the 10 s of SmolLM2's full fine-tuning step on 2 cores); on rows it does not."""
    y = jnp.dot(x.reshape(-1, x.shape[-1]), w, preferred_element_type=out_dtype)
    return y.reshape(*x.shape[:-1], w.shape[-1])


class Dense(nnx.Module):
    """y = x @ kernel (+ bias), kernel [in, out] cast to the compute dtype."""

    def __init__(self, in_features: int, out_features: int, names: tuple[str | None, str | None], *,
                 config: LlamaConfig, use_bias: bool = False, rngs: nnx.Rngs):
        init = nnx.initializers.normal(config.initializer_range)
        pdt = jnp.dtype(config.param_dtype)
        self.kernel = _param(rngs, init, (in_features, out_features), pdt, names)
        self.bias = (_param(rngs, nnx.initializers.zeros, (out_features,), pdt, (names[1],))
                     if use_bias else None)
        self.dtype = jnp.dtype(config.dtype)

    def __call__(self, x: Array, out_dtype=None) -> Array:
        """out_dtype: the dot's accumulation / result dtype (default: the compute dtype)."""
        y = rows_dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype), out_dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class RMSNorm(nnx.Module):
    """HF LlamaRMSNorm: normalize in float32, cast to the compute dtype, then scale by w; with
    config.norm_plus_one (Gemma) the scale is (1 + w), applied in float32 before the cast (w starts at 0)."""

    def __init__(self, dim: int, *, config: LlamaConfig, rngs: nnx.Rngs, names=("embed",)):
        self.plus_one = config.norm_plus_one
        init = nnx.initializers.zeros if self.plus_one else nnx.initializers.ones
        self.scale = _param(rngs, init, (dim,), jnp.dtype(config.param_dtype), names)
        self.eps = config.rms_norm_eps
        self.dtype = jnp.dtype(config.dtype)

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.plus_one:
            return (x32 * (1.0 + self.scale[...].astype(jnp.float32))).astype(self.dtype)
        return self.scale[...].astype(self.dtype) * x32.astype(self.dtype)


class Embed(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.embedding = _param(rngs, nnx.initializers.normal(config.initializer_range),
                                (config.vocab_size, config.hidden_size), jnp.dtype(config.param_dtype),
                                ("vocab", "embed"))
        self.dtype = jnp.dtype(config.dtype)
        self.scale = float(np.sqrt(config.hidden_size)) if config.scale_embeddings else None

    def __call__(self, tokens: Array) -> Array:
        """Embedding rows (times sqrt(hidden) in the compute dtype with config.scale_embeddings)."""
        x = jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)
        return x if self.scale is None else x * jnp.asarray(self.scale, self.dtype)

    def attend(self, h: Array) -> Array:
        """Tied unembedding: float32 logits h @ embedding^T."""
        return jnp.dot(h.astype(self.dtype), self.embedding[...].astype(self.dtype).T,
                       preferred_element_type=jnp.float32)


def rotate_half(x: Array) -> Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rope_cos_sin(positions: Array, config: LlamaConfig, *, local: bool = False) -> tuple[Array, Array]:
    """cos, sin [B, T, head_dim] (float32) for integer positions [B, T]; halves duplicated (HF layout).
    local=True: the tables of sliding-window layers (config.local_rope_theta / local_rope_scaling)."""
    inv_freq = jnp.asarray(rope_inv_frequencies(config, local=local))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """x [B, T, heads, head_dim]; non-interleaved (rotate_half) rotary embedding."""
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotate_half(x) * sin


class Attention(nnx.Module):
    """Grouped-query causal self-attention with an optional (stacked) KV cache."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        c = config
        d, hd = c.hidden_size, c.head_dim
        qkv = dict(config=c, use_bias=c.attention_bias or c.qkv_bias, rngs=rngs)
        self.q_proj = Dense(d, c.num_heads * hd, ("embed", "heads"), **qkv)
        self.k_proj = Dense(d, c.num_kv_heads * hd, ("embed", "kv_heads"), **qkv)
        self.v_proj = Dense(d, c.num_kv_heads * hd, ("embed", "kv_heads"), **qkv)
        self.o_proj = Dense(c.num_heads * hd, d, ("heads", "embed"), config=c, use_bias=c.attention_bias,
                            rngs=rngs)
        if c.qk_norm:
            self.q_norm = RMSNorm(hd, config=c, rngs=rngs, names=("head_dim",))
            self.k_norm = RMSNorm(hd, config=c, rngs=rngs, names=("head_dim",))
        self.qk_norm = c.qk_norm
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, hd
        self.impl = c.attention
        self.scale = None if c.query_pre_attn_scalar is None else c.attn_scale
        self.softcap, self.window = c.attn_logit_softcap, c.sliding_window

    def __call__(self, x: Array, cos: Array, sin: Array, mask: AttentionMask, kv_cache, is_local=True):
        """kv_cache: None or (k [L,B,S,KV,hd], v, layer index, write index); returns (out, (k, v) | None).
        is_local: whether this layer is a sliding-window layer (bool, may be traced)."""
        b, t, _ = x.shape
        h, kvh, hd = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x).reshape(b, t, h, hd)
        k = self.k_proj(x).reshape(b, t, kvh, hd)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        v = self.v_proj(x).reshape(b, t, kvh, hd)
        new_cache = None
        if kv_cache is not None:
            ck, cv, layer, write_index = kv_cache
            at = (layer, 0, write_index, 0, 0)
            ck = jax.lax.dynamic_update_slice(ck, k[None].astype(ck.dtype), at)
            cv = jax.lax.dynamic_update_slice(cv, v[None].astype(cv.dtype), at)
            new_cache = (ck, cv)
            k = jax.lax.dynamic_index_in_dim(ck, layer, 0, keepdims=False)
            v = jax.lax.dynamic_index_in_dim(cv, layer, 0, keepdims=False)
        out = attention(q, k, v, mask, self.impl, scale=self.scale, softcap=self.softcap, window=self.window,
                        is_local=is_local).reshape(b, t, h * hd)
        return self.o_proj(out), new_cache


class MLP(nnx.Module):
    """SwiGLU down(silu(gate(x)) * up(x)), or GeGLU down(gelu_tanh(gate(x)) * up(x)) (Gemma)."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = Dense(d, f, ("embed", "mlp"), config=config, rngs=rngs)
        self.up_proj = Dense(d, f, ("embed", "mlp"), config=config, rngs=rngs)
        self.down_proj = Dense(f, d, ("mlp", "embed"), config=config, rngs=rngs)
        self.gelu = config.mlp_activation == "gelu_tanh"

    def __call__(self, x: Array) -> Array:
        g = self.gate_proj(x)
        g = jax.nn.gelu(g, approximate=True) if self.gelu else jax.nn.silu(g)
        return self.down_proj(g * self.up_proj(x))


class DecoderLayer(nnx.Module):
    """Pre-norm block x + Attn(N(x)), x + MLP(N(x)); with post_norms (Gemma) the attention and MLP
    outputs are normed too: x + N_ao(Attn(N_in(x))), x + N_mo(MLP(N_pre(x)))."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(config.hidden_size, config=config, rngs=rngs)
        self.attn = Attention(config, rngs=rngs)
        self.post_attn_norm = RMSNorm(config.hidden_size, config=config, rngs=rngs)
        self.mlp = MLP(config, rngs=rngs)
        self.post_norms = config.post_norms
        if config.post_norms:
            self.attn_out_norm = RMSNorm(config.hidden_size, config=config, rngs=rngs)
            self.mlp_out_norm = RMSNorm(config.hidden_size, config=config, rngs=rngs)

    def __call__(self, x, cos, sin, mask: AttentionMask, kv_cache, is_local=True):
        a, new_cache = self.attn(self.input_norm(x), cos, sin, mask, kv_cache, is_local)
        if self.post_norms:
            a = self.attn_out_norm(a)
        x = x + a
        m = self.mlp(self.post_attn_norm(x))
        if self.post_norms:
            m = self.mlp_out_norm(m)
        return x + m, new_cache


def _stacked_layers(config: LlamaConfig, rngs: nnx.Rngs) -> DecoderLayer:
    """config.num_layers DecoderLayers as one module with parameters stacked on a leading "layers" axis."""

    @nnx.split_rngs(splits=config.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs):
        return DecoderLayer(config, rngs=rngs)

    return make(rngs)


def remat_policy(name: str):
    """jax.checkpoint policy of LlamaConfig.remat "full" (keep nothing) or "dots" (keep projections)."""
    if name == "full":
        return jax.checkpoint_policies.nothing_saveable
    if name == "dots":
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    raise ValueError(f"remat policy must be 'full' or 'dots' here, got {name!r}")


def positions_from_mask(attention_mask: Array, offset: Array | None = None) -> Array:
    """Position of each token = number of real tokens before it (+ offset per row); pads get clamped."""
    pos = jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1
    if offset is not None:
        pos = pos + offset[:, None]
    return jnp.maximum(pos, 0)


class Transformer(nnx.Module):
    """The causal LM (every family). `__call__` returns (float32 logits [B, T, V], new cache or None)."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, DecoderConfig):
            raise ValueError(f"config must be a DecoderConfig (LlamaConfig), got {type(config).__name__}")
        self.config = config
        self.embed = Embed(config, rngs=rngs)
        self.layers = _stacked_layers(config, rngs)
        self.final_norm = RMSNorm(config.hidden_size, config=config, rngs=rngs)
        self.lm_head = (None if config.tie_word_embeddings else
                        Dense(config.hidden_size, config.vocab_size, ("embed", "vocab"), config=config,
                              rngs=rngs))

    # ------------------------------------------------------------------ cache
    def init_cache(self, batch_size: int, max_len: int, dtype=None) -> KVCache:
        """Empty KV cache for `max_len` slots; dtype defaults to the compute dtype."""
        if batch_size <= 0 or max_len <= 0:
            raise ValueError(f"init_cache: batch_size and max_len must be positive, got {batch_size}, {max_len}")
        c = self.config
        dtype = jnp.dtype(dtype or c.dtype)
        shape = (c.num_layers, batch_size, max_len, c.num_kv_heads, c.head_dim)
        return {
            "k": jnp.zeros(shape, dtype),
            "v": jnp.zeros(shape, dtype),
            "mask": jnp.zeros((batch_size, max_len), bool),
            "index": jnp.zeros((), jnp.int32),
        }

    # ---------------------------------------------------------------- forward
    def _backbone(self, tokens, positions, attention_mask, cache, layers=None):
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, time], got shape {tokens.shape}")
        b, t = tokens.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), bool)
        attention_mask = jnp.asarray(attention_mask).astype(bool)
        if attention_mask.shape != (b, t):
            raise ValueError(f"attention_mask shape {attention_mask.shape} != tokens shape {(b, t)}")
        if positions is not None and jnp.shape(positions) != (b, t):
            raise ValueError(f"positions shape {jnp.shape(positions)} != tokens shape {(b, t)}")
        if cache is None:
            if positions is None:
                positions = positions_from_mask(attention_mask)
            mask = AttentionMask(jnp.arange(t), jnp.arange(t), attention_mask, attention_mask.astype(jnp.int32))
            write_index, kv = None, None
        else:
            s = cache["mask"].shape[1]
            if cache["mask"].shape[0] != b:
                raise ValueError(f"cache batch {cache['mask'].shape[0]} != tokens batch {b}")
            write_index = cache["index"]
            if positions is None:
                seen = jnp.sum(cache["mask"].astype(jnp.int32), axis=1)
                positions = positions_from_mask(attention_mask, seen)
            key_mask = jax.lax.dynamic_update_slice(cache["mask"], attention_mask, (0, write_index))
            mask = AttentionMask(write_index + jnp.arange(t), jnp.arange(s), key_mask)
            kv = (cache["k"], cache["v"])
        positions = jnp.asarray(positions)
        rope = rope_cos_sin(positions, self.config)
        if self.config.has_local_rope:
            rope = (*rope, *rope_cos_sin(positions, self.config, local=True))
        x = self.embed(tokens)
        x, kv = self._run_layers(x, rope, mask, kv, write_index, layers)
        x = self.final_norm(x)
        new_cache = None
        if cache is not None:
            new_cache = {"k": kv[0], "v": kv[1], "mask": mask.key_mask,
                         "index": (write_index + t).astype(jnp.int32)}
        return x, new_cache

    def unstacked_layers(self) -> list:
        """The stacked layer parameters as num_layers separate per-layer states (copies), for `layers=`.

        Why: inside lax.scan (or a loop with static indices) XLA:CPU materializes every layer's weights
        with a dynamic-slice copy before each matmul, at every call; a decode loop that slices them ONCE
        before it (wind_jax.sampling, unstack_layers=True) reads the weights in place at each step."""
        _, params = nnx.split(self.layers)
        return [jax.tree.map(lambda p, i=i: p[i], params) for i in range(self.config.num_layers)]

    def _run_layers(self, x, rope, mask, kv, write_index, layers=None):
        """The stacked layers over x: one lax.scan (config.scan_layers) or a Python loop, with remat.
        layers (from `unstacked_layers`): per-layer parameter states run as a Python loop instead.

        rope: (cos, sin) or, with a local RoPE, (cos, sin, cos_local, sin_local). When local and global
        layers mix, the scan also carries a per-layer bool `is_local` that picks the mask and the tables;
        a uniform model passes the layer type as a Python constant (no selection in the program)."""
        c = self.config
        graphdef, params = nnx.split(self.layers)
        types = c.layer_is_sliding
        mixed = len(set(types)) > 1

        def one_layer(carry, xs):
            x, kv = carry
            i, is_local, layer_params = xs
            layer = nnx.merge(graphdef, layer_params)
            cos, sin = rope[:2]
            if len(rope) == 4:
                cos = jnp.where(is_local, rope[2], cos)
                sin = jnp.where(is_local, rope[3], sin)
            x, kv = layer(x, cos, sin, mask, None if kv is None else (*kv, i, write_index), is_local)
            return (x, kv), None

        if not mixed:
            uniform_layer, local = one_layer, types[0]
            one_layer = lambda carry, xs: uniform_layer(carry, (xs[0], local, xs[1]))  # noqa: E731
        if c.remat != "none":
            one_layer = jax.checkpoint(one_layer, policy=remat_policy(c.remat), prevent_cse=not c.scan_layers)
        carry = (x, kv)
        per_layer = (jnp.asarray(types),) if mixed else ()
        if layers is not None:
            if len(layers) != c.num_layers:
                raise ValueError(f"layers: {len(layers)} per-layer states for {c.num_layers} layers")
            for i, layer_params in enumerate(layers):
                xs = (jnp.asarray(i), *(jnp.asarray(types[i]) for _ in per_layer), layer_params)
                carry, _ = one_layer(carry, xs)
        elif c.scan_layers:
            carry, _ = jax.lax.scan(one_layer, carry, (jnp.arange(c.num_layers), *per_layer, params))
        else:
            for i in range(c.num_layers):
                xs = (jnp.asarray(i), *(jnp.asarray(types[i]) for _ in per_layer),
                      jax.tree.map(lambda p, i=i: p[i], params))
                carry, _ = one_layer(carry, xs)
        return carry

    def logits_from_hidden(self, h: Array) -> Array:
        """float32 logits [..., V] from final-normed hidden states."""
        if self.lm_head is None:
            return soft_cap(self.embed.attend(h), self.config.final_logit_softcap)
        return soft_cap(self.lm_head(h, out_dtype=jnp.float32), self.config.final_logit_softcap)

    def __call__(self, tokens: Array, *, positions: Array | None = None, attention_mask: Array | None = None,
                 cache: KVCache | None = None, layers: list | None = None,
                 last_only: bool = False) -> tuple[Array, KVCache | None]:
        """tokens [B,T] int32; attention_mask [B,T] bool (True = real token); positions default to the
        count of real tokens before each one (so left/right padding does not shift RoPE). With a cache the
        tokens are written at slots [cache.index, cache.index + T) and attend to all earlier real slots.
        last_only: the logits of position T-1 only, [B, 1, V] (a sampler's prefill: the vocabulary
        projection of every prompt position would be discarded)."""
        h, new_cache = self._backbone(tokens, positions, attention_mask, cache, layers)
        return self.logits_from_hidden(h[:, -1:] if last_only else h), new_cache

    def hidden(self, tokens: Array, *, positions: Array | None = None,
               attention_mask: Array | None = None) -> Array:
        """Final-normed hidden states [B, T, hidden] (compute dtype)."""
        return self._backbone(tokens, positions, attention_mask, None)[0]


def token_logprobs(logits: Array, tokens: Array) -> Array:
    """log p(tokens[:, t] | tokens[:, <t]) for t >= 1: [B, T-1] float32 from logits [B, T, V]."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]


def sequence_logprobs(model: Transformer, tokens: Array, response_mask: Array,
                      attention_mask: Array | None = None) -> Array:
    """Summed response log-probs [B] float32 (MATH.md notation: log pi(y|x) is a SUM over response tokens).

    sum_t response_mask[t] * log p(tokens[t] | tokens[<t]); position 0 has no context and is never
    scored. attention_mask (True = real token) defaults to all-ones.
    """
    tokens = jnp.asarray(tokens)
    response_mask = jnp.asarray(response_mask)
    if response_mask.shape != tokens.shape:
        raise ValueError(f"response_mask shape {response_mask.shape} != tokens shape {tokens.shape}")
    logits, _ = model(tokens, attention_mask=attention_mask)
    lp = token_logprobs(logits, tokens)
    return jnp.sum(jnp.where(response_mask[:, 1:].astype(bool), lp, 0.0), axis=-1)

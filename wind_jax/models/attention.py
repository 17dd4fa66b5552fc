"""One causal grouped-query attention function with a backend choice (DecoderConfig.attention).

    out = attention(q, k, v, mask, impl, scale=, softcap=, window=, is_local=)
          q [B, T, H, D], k/v [B, S, KV, D] -> [B, T, H, D]

softmax(cap(scale * q k^T) + mask) v per head, query head h reading kv head h // (H / KV); scale defaults
to 1/sqrt(D), cap(s) = softcap * tanh(s / softcap) when softcap is set (Gemma 2), identity otherwise. A key
slot s is visible from query slot t when k_slot[s] <= q_slot[t] and key_mask[b, s] (real token), and, for
a local layer (is_local, a bool that may be traced: the layer type is per-layer data of the scan), also
q_slot[t] - k_slot[s] < window (sliding window; slots are contiguous for left-padded prompts followed by
their continuation, so slot distance is token distance). Rows with no visible key (padding queries) are
defined by each backend differently and must not be read.

Backends: "reference" (einsum, materializes [B, H, T, S] float32 scores), "xla" and "cudnn"
(jax.nn.dot_product_attention; the window goes into the mask; no soft-cap, refused with an error),
"splash" (the Pallas TPU splash-attention kernel: causal or the kernel's own LocalMask, soft-cap in the
kernel, padding through segment ids, so it needs the cache-free layout q_slot = k_slot = arange(T); a
traced is_local selects between the local and the global kernel with lax.cond; under a mesh it runs in
shard_map with batch over the "batch" mesh axes and heads over "tensor").
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class AttentionMask(NamedTuple):
    """Which key slots each query slot sees; segment_ids [B, T] (1 real, 0 pad) only for cache-free calls."""

    q_slot: Array  # [T] int32
    k_slot: Array  # [S] int32
    key_mask: Array  # [B, S] bool
    segment_ids: Array | None = None  # [B, T] int32, None with a KV cache

    def allowed(self, window: int | None = None, is_local=True) -> Array:
        """[B, T, S] bool; with `window`, local layers (is_local) also need q_slot - k_slot < window."""
        causal = self.k_slot[None, :] <= self.q_slot[:, None]
        if window is not None:
            near = (self.q_slot[:, None] - self.k_slot[None, :]) < window
            causal = causal & (near | jnp.logical_not(is_local))
        return causal[None] & self.key_mask[:, None, :]


def soft_cap(x: Array, cap: float | None) -> Array:
    """cap * tanh(x / cap) (Gemma 2's logit soft-capping); identity for cap None."""
    return x if cap is None else cap * jnp.tanh(x / cap)


def reference_attention(q: Array, k: Array, v: Array, mask: AttentionMask, *, scale: float | None = None,
                        softcap: float | None = None, window: int | None = None, is_local=True) -> Array:
    b, t, h, d = q.shape
    kvh = k.shape[2]
    qg = q.reshape(b, t, kvh, h // kvh, d)
    scale = (1.0 / np.sqrt(d)) if scale is None else scale
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    scores = soft_cap(scores, softcap)
    scores = jnp.where(mask.allowed(window, is_local)[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h, d)


def _splash_block(t: int) -> int:
    for block in (512, 256, 128):
        if t % block == 0:
            return block
    raise ValueError(f'attention="splash" needs a sequence length divisible by 128, got {t}')


def splash_attention(q: Array, k: Array, v: Array, segment_ids: Array, *, interpret: bool = False,
                     scale: float | None = None, softcap: float | None = None, window: int | None = None,
                     is_local=True) -> Array:
    """Causal GQA splash attention on one device (or one shard): q [B, T, H, D], k/v [B, T, KV, D].

    A token attends to earlier tokens of the same segment (segment_ids [B, T]); with `window` a local
    layer uses the kernel's LocalMask (left window - 1, right 0: t - window < s <= t) and a global one
    its CausalMask, chosen by `is_local` (Python or traced bool); softcap goes to the kernel's
    attn_logits_soft_cap. interpret=True runs the kernel in the Pallas interpreter (any backend, tests)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    b, t, h, d = q.shape
    block = _splash_block(t)
    sizes = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                          block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)

    def run(head_mask):
        kernel = sa.make_splash_mha(mask=sa.MultiHeadMask([head_mask] * h), block_sizes=sizes, head_shards=1,
                                    q_seq_shards=1, attn_logits_soft_cap=softcap, interpret=interpret)
        out = jax.vmap(lambda qq, kk, vv, s: kernel(qq, kk, vv, sa.SegmentIds(q=s, kv=s)))(
            heads_first(q * q_scale), heads_first(k), heads_first(v), seg)
        return jnp.swapaxes(out, 1, 2).astype(q.dtype)

    q_scale = jnp.asarray(1.0 / np.sqrt(d) if scale is None else scale, q.dtype)
    heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  [B, T, H, D] -> [B, H, T, D]
    seg = segment_ids.astype(jnp.int32)
    if window is None or is_local is False:
        return run(sa.CausalMask((t, t)))
    local = sa.LocalMask((t, t), window_size=(window - 1, 0), offset=0)
    if is_local is True:
        return run(local)
    return jax.lax.cond(is_local, lambda: run(local), lambda: run(sa.CausalMask((t, t))))


def _sharded_splash(q: Array, k: Array, v: Array, segment_ids: Array, **options) -> Array:
    """splash_attention inside shard_map over the ambient mesh (jax.set_mesh), if there is one."""
    import functools

    from jax.sharding import PartitionSpec as P

    from wind_jax import sharding

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return splash_attention(q, k, v, segment_ids, **options)
    batch = sharding.batch_spec(1, mesh)[0]
    tensor = "tensor" if "tensor" in mesh.axis_names else None
    heads = tensor if tensor and k.shape[2] % mesh.shape[tensor] == 0 else None
    qkv, seg = P(batch, None, heads, None), P(batch, None)
    is_local = options.pop("is_local", True)
    if isinstance(is_local, bool):
        fn = jax.shard_map(functools.partial(splash_attention, is_local=is_local, **options), mesh=mesh,
                           in_specs=(qkv, qkv, qkv, seg), out_specs=qkv, check_vma=False)
        return fn(q, k, v, segment_ids)
    fn = jax.shard_map(lambda q, k, v, s, loc: splash_attention(q, k, v, s, is_local=loc, **options),
                       mesh=mesh, in_specs=(qkv, qkv, qkv, seg, P()), out_specs=qkv, check_vma=False)
    return fn(q, k, v, segment_ids, jnp.asarray(is_local))


def attention(q: Array, k: Array, v: Array, mask: AttentionMask, impl: str, *, scale: float | None = None,
              softcap: float | None = None, window: int | None = None, is_local=True) -> Array:
    """Causal GQA attention [B, T, H, D] in q.dtype with backend `impl` (see the module docstring)."""
    if k.dtype != q.dtype:
        k, v = k.astype(q.dtype), v.astype(q.dtype)
    options = dict(scale=scale, softcap=softcap, window=window, is_local=is_local)
    if impl == "reference":
        return reference_attention(q, k, v, mask, **options)
    if impl in ("xla", "cudnn"):
        if softcap is not None:
            raise ValueError(f"attention impl {impl!r} cannot soft-cap attention logits (softcap={softcap}); "
                             "use 'reference' or 'splash'")
        return jax.nn.dot_product_attention(q, k, v, mask=mask.allowed(window, is_local)[:, None],
                                            scale=float(1.0 / np.sqrt(q.shape[-1]) if scale is None else scale),
                                            implementation=impl)
    if impl == "splash":
        if mask.segment_ids is None:  # cached decode / chunked prefill: small T, the reference is fine
            return reference_attention(q, k, v, mask, **options)
        return _sharded_splash(q, k, v, mask.segment_ids, **options)
    raise ValueError(f"attention impl must be reference/xla/cudnn/splash, got {impl!r}")


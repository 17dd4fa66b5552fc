"""One causal grouped-query attention function with a backend choice (LlamaConfig.attention).

    out = attention(q, k, v, mask, impl)    q [B, T, H, D], k/v [B, S, KV, D] -> [B, T, H, D]

softmax(q k^T / sqrt(D) + mask) v per head, query head h reading kv head h // (H / KV). A key slot s is
visible from query slot t when k_slot[s] <= q_slot[t] and key_mask[b, s] (real token). Rows with no
visible key (padding queries) are defined by each backend differently and must not be read.

Backends: "reference" (einsum, materializes [B, H, T, S] float32 scores), "xla" and "cudnn"
(jax.nn.dot_product_attention), "splash" (the Pallas TPU splash-attention kernel: causal mask plus
padding through segment ids, so it needs the cache-free layout q_slot = k_slot = arange(T); under a
mesh it runs in shard_map with batch over the "batch" mesh axes and heads over "tensor").
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

    def allowed(self) -> Array:
        """[B, T, S] bool."""
        return (self.k_slot[None, :] <= self.q_slot[:, None])[None] & self.key_mask[:, None, :]


def reference_attention(q: Array, k: Array, v: Array, mask: AttentionMask) -> Array:
    b, t, h, d = q.shape
    kvh = k.shape[2]
    qg = q.reshape(b, t, kvh, h // kvh, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * (1.0 / np.sqrt(d))
    scores = jnp.where(mask.allowed()[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h, d)


def _splash_block(t: int) -> int:
    for block in (512, 256, 128):
        if t % block == 0:
            return block
    raise ValueError(f'attention="splash" needs a sequence length divisible by 128, got {t}')


def splash_attention(q: Array, k: Array, v: Array, segment_ids: Array, *, interpret: bool = False) -> Array:
    """Causal GQA splash attention on one device (or one shard): q [B, T, H, D], k/v [B, T, KV, D].

    A token attends to earlier tokens of the same segment (segment_ids [B, T]); interpret=True runs the
    kernel in the Pallas interpreter (any backend, for tests)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    b, t, h, d = q.shape
    block = _splash_block(t)
    sizes = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                          block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    kernel = sa.make_splash_mha(mask=sa.MultiHeadMask([sa.CausalMask((t, t))] * h), block_sizes=sizes,
                                head_shards=1, q_seq_shards=1, interpret=interpret)
    scale = jnp.asarray(1.0 / np.sqrt(d), q.dtype)
    heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  [B, T, H, D] -> [B, H, T, D]
    seg = segment_ids.astype(jnp.int32)
    out = jax.vmap(lambda qq, kk, vv, s: kernel(qq, kk, vv, sa.SegmentIds(q=s, kv=s)))(
        heads_first(q * scale), heads_first(k), heads_first(v), seg)
    return jnp.swapaxes(out, 1, 2).astype(q.dtype)


def _sharded_splash(q: Array, k: Array, v: Array, segment_ids: Array) -> Array:
    """splash_attention inside shard_map over the ambient mesh (jax.set_mesh), if there is one."""
    from jax.sharding import PartitionSpec as P

    from wind_jax import sharding

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return splash_attention(q, k, v, segment_ids)
    batch = sharding.batch_spec(1, mesh)[0]
    tensor = "tensor" if "tensor" in mesh.axis_names else None
    heads = tensor if tensor and k.shape[2] % mesh.shape[tensor] == 0 else None
    qkv, seg = P(batch, None, heads, None), P(batch, None)
    fn = jax.shard_map(splash_attention, mesh=mesh, in_specs=(qkv, qkv, qkv, seg), out_specs=qkv,
                       check_vma=False)
    return fn(q, k, v, segment_ids)


def attention(q: Array, k: Array, v: Array, mask: AttentionMask, impl: str) -> Array:
    """Causal GQA attention [B, T, H, D] in q.dtype with backend `impl` (see the module docstring)."""
    if k.dtype != q.dtype:
        k, v = k.astype(q.dtype), v.astype(q.dtype)
    if impl == "reference":
        return reference_attention(q, k, v, mask)
    if impl in ("xla", "cudnn"):
        return jax.nn.dot_product_attention(q, k, v, mask=mask.allowed()[:, None],
                                            scale=float(1.0 / np.sqrt(q.shape[-1])), implementation=impl)
    if impl == "splash":
        if mask.segment_ids is None:  # cached decode / chunked prefill: small T, the reference is fine
            return reference_attention(q, k, v, mask)
        return _sharded_splash(q, k, v, mask.segment_ids)
    raise ValueError(f"attention impl must be reference/xla/cudnn/splash, got {impl!r}")


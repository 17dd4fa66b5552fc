"""LoRA (low-rank adaptation) of the wind_jax Transformer: W' = W + (alpha / rank) A B on chosen projections.

    model = apply_lora(base, rank=8, alpha=16.0, target_modules=("q_proj", "v_proj"), rngs=nnx.Rngs(0))
    graphdef, lora, frozen = nnx.split(model, LORA, ...)   # the optimizer holds only `lora`
    plain = merge_lora(model)                              # a Transformer with the merged weights (export)

A kernel W [in, out] (stacked decoder: [L, in, out]) gets A [..., in, rank] (He-uniform over fan-in) and
B [..., rank, out] (zeros), so the adapted model starts exactly at the base model. Adapter parameters are
nnx.LoRAParam (a subclass of nnx.Param): select them with the `LORA` filter, and the base with
`nnx.All(nnx.Param, nnx.Not(LORA))`. A forward pass runs the base Transformer with each targeted projection
computing x W + (alpha/rank) (x A) B (LoraDense): the stacked adapters are sliced per layer with the
kernels, so the decoder layout (stacked, scanned or not, any attention backend) is untouched, and the
gradient never forms a kernel-sized W + A B. For sampling, where no gradient is needed, `merge_lora` once
and sample the plain Transformer.

Written by hand rather than through qwix (the LoRA library Tunix uses): qwix 0.1.8 installs and runs with
jax 0.10.2 / flax 0.12.8 on a decoder with one module per layer, but not on the stacked decoder (one module
whose parameters carry a leading layer axis, split and re-merged per layer inside jax.lax.scan or a loop).
There apply_lora_to_model fails while tracing (IndexError, scanned and looped alike): qwix attaches its
rng state to every module, the stacked module included, whose state the decoder slices per layer; and
qwix creates each adapter as an attribute of the module object that runs the matmul, which in the stacked
decoder is a transient per-layer copy, so the adapters would not persist.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from wind_jax.models.transformer import SHARDING_METADATA_KEY, Dense, Transformer, rows_dot

Array = jax.Array

LORA = nnx.LoRAParam  # filter of the adapter parameters


class LoraAdapter(nnx.Module):
    """A [..., in, rank] and B [..., rank, out] for one kernel [..., in, out]."""

    def __init__(self, kernel: nnx.Param, rank: int, *, rngs: nnx.Rngs):
        value = kernel.get_value()
        *lead, fan_in, fan_out = value.shape
        names = tuple(kernel.get_metadata().get(SHARDING_METADATA_KEY) or (None,) * value.ndim)
        limit = math.sqrt(6.0 / fan_in)  # He-uniform over the fan-in
        a = jax.random.uniform(rngs.params(), (*lead, fan_in, rank), jnp.float32, -limit, limit)
        self.a = nnx.LoRAParam(a.astype(value.dtype), eager_sharding=False,
                               **{SHARDING_METADATA_KEY: (*names[:-1], None)})
        self.b = nnx.LoRAParam(jnp.zeros((*lead, rank, fan_out), value.dtype), eager_sharding=False,
                               **{SHARDING_METADATA_KEY: (*names[:-2], None, names[-1])})

    def delta(self, scale: float) -> jax.Array:
        """(alpha / rank) A B, [..., in, out] float32."""
        a, b = self.a[...].astype(jnp.float32), self.b[...].astype(jnp.float32)
        return scale * jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _dot(x, y):
    return rows_dot(x, y, jnp.float32)


@jax.custom_vjp
def lora_delta(x: Array, a: Array, b: Array) -> Array:
    """(x A) B, float32 [..., out], for x [..., in], A [in, r], B [r, out] (operands in x's dtype).

    The gradient is written out on token rows (dB = (x A)^T dy, dA = x^T (dy B^T), dx = dy B^T A^T): left
    to autodiff on [B, T, ...] operands, XLA:CPU first writes dy transposed (a strided copy, 2 of the 10 s
    of SmolLM2's LoRA gradient on 2 cores); on rows (transformer.rows_dot) autodiff avoids the copy but
    was still ~10% slower than written out in a profiling run (BENCHMARKS.md, "Profiled and mended")."""
    return _dot(_dot(x, a.astype(x.dtype)).astype(x.dtype), b.astype(x.dtype))


def _lora_delta_fwd(x, a, b):
    xa = _dot(x, a.astype(x.dtype)).astype(x.dtype)
    return _dot(xa, b.astype(x.dtype)), (x, xa, a, b)


def _lora_delta_bwd(res, dy):
    x, xa, a, b = res
    dt = x.dtype
    rows = lambda z: z.reshape(-1, z.shape[-1])  # noqa: E731  [tokens, features]
    dy2 = rows(dy).astype(dt)
    dxa = _dot(dy2, b.astype(dt).T).astype(dt)              # [tokens, r]
    db = _dot(rows(xa).T, dy2)                              # [r, out]
    da = _dot(rows(x).T, dxa)                               # [in, r]
    dx = _dot(dxa, a.astype(dt).T).reshape(x.shape)
    return dx.astype(dt), da.astype(a.dtype), db.astype(b.dtype)


lora_delta.defvjp(_lora_delta_fwd, _lora_delta_bwd)


class LoraDense(nnx.Module):
    """A frozen projection with its adapter beside it: x W (+ bias) + (alpha / rank) (x A) B.

    Never forms W + (alpha/rank) A B, so a gradient in A and B costs two rank-r products per projection
    instead of a kernel-sized one (the frozen W gets no gradient)."""

    def __init__(self, dense: Dense, adapter: LoraAdapter, scale: float):
        self.dense, self.adapter, self.scale = dense, adapter, scale

    def __call__(self, x: Array, out_dtype=None) -> Array:
        y = self.dense(x, out_dtype)
        delta = lora_delta(x.astype(self.dense.dtype), self.adapter.a[...], self.adapter.b[...])
        return y + (self.scale * delta).astype(y.dtype)


def _key(path: tuple) -> str:
    """Adapter name of a kernel path, e.g. 'layers__attn__q_proj__kernel' (no dots: checkpoint-safe)."""
    return "__".join(str(p) for p in path)


class LoraTransformer(nnx.Module):
    """A frozen base Transformer plus LoRA adapters; called like the Transformer it wraps."""

    def __init__(self, base: Transformer, *, rank: int, alpha: float, target_modules, rngs: nnx.Rngs):
        if not isinstance(base, Transformer):
            raise ValueError(f"apply_lora: model must be a wind_jax Transformer, got {type(base).__name__}")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f"apply_lora: rank must be an int >= 1, got {rank!r}")
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"apply_lora: alpha must be a finite number > 0, got {alpha!r}")
        if isinstance(target_modules, str) or not target_modules:
            raise ValueError(f"apply_lora: target_modules must be a non-empty list of module names, "
                             f"got {target_modules!r}")
        kernels = {path: var for path, var in nnx.to_flat_state(nnx.state(base, nnx.Param))
                   if str(path[-1]) == "kernel"}
        available = sorted({str(path[-2]) for path in kernels})
        unknown = [t for t in target_modules if t not in available]
        if unknown:
            raise ValueError(f"apply_lora: target_modules {unknown} match no kernel; available: {available}")
        self.base = base
        self.rank, self.alpha, self.scale = rank, float(alpha), float(alpha) / rank
        self.targets = tuple(sorted(path for path in kernels if str(path[-2]) in target_modules))
        self.adapters = nnx.Dict({_key(p): LoraAdapter(kernels[p], rank, rngs=rngs) for p in self.targets})

    @property
    def config(self):
        return self.base.config

    def merged(self) -> Transformer:
        """The Transformer with W + (alpha/rank) A B on every target (differentiable in A and B)."""
        graphdef, state = nnx.split(self.base)
        flat = []
        for path, var in nnx.to_flat_state(state):
            if path in self.targets:
                w = var.get_value()
                var = var.replace((w.astype(jnp.float32) + self.adapters[_key(path)].delta(self.scale)
                                   ).astype(w.dtype))
            flat.append((path, var))
        return nnx.merge(graphdef, nnx.from_flat_state(flat))

    def adapted(self) -> Transformer:
        """The base Transformer (same parameters) with every target projection a LoraDense: what the
        forward passes run. Stacked adapters [L, ...] sit beside their stacked kernels and are sliced
        per layer with them."""
        model = nnx.merge(*nnx.split(self.base))
        for path in self.targets:
            parent = model
            for name in path[:-2]:
                parent = getattr(parent, str(name))
            name = str(path[-2])
            setattr(parent, name, LoraDense(getattr(parent, name), self.adapters[_key(path)], self.scale))
        return model

    def __call__(self, tokens, **kwargs):
        return self.adapted()(tokens, **kwargs)

    def hidden(self, tokens, **kwargs):
        return self.adapted().hidden(tokens, **kwargs)

    def logits_from_hidden(self, h):
        return self.adapted().logits_from_hidden(h)

    def init_cache(self, batch_size: int, max_len: int, dtype=None):
        return self.base.init_cache(batch_size, max_len, dtype)


def apply_lora(model: Transformer, rank: int, alpha: float, target_modules=("q_proj", "v_proj"), *,
               rngs: nnx.Rngs | None = None) -> LoraTransformer:
    """Wrap ``model`` with rank-``rank`` adapters on the kernels of the named modules (q_proj, k_proj,
    v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head); the result starts equal to ``model``."""
    return LoraTransformer(model, rank=rank, alpha=alpha, target_modules=tuple(target_modules),
                           rngs=rngs if rngs is not None else nnx.Rngs(0))


def lora_state(model: LoraTransformer) -> nnx.State:
    """The adapter parameters only (what an optimizer and a LoRA checkpoint hold)."""
    return nnx.state(model, LORA)


def merge_lora(model: LoraTransformer) -> Transformer:
    """A plain Transformer with W + (alpha/rank) A B merged in (e.g. for export_hf or sampling)."""
    if not isinstance(model, LoraTransformer):
        raise ValueError(f"merge_lora: expected a LoraTransformer, got {type(model).__name__}")
    return model.merged()

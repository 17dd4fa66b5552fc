"""Jitted KV-cache sampler: N samples per prompt, temperature / top-k / top-p / greedy, EOS handling.

    out = sample(model, prompt_tokens, prompt_mask, key, num_samples=4, max_new_tokens=64,
                 temperature=1.0, top_k=0, top_p=1.0, eos_token_id=2)

Prompts are [B, Tp], LEFT-padded (prompt_mask[:, -1] all True). ONE jitted program does the prefill over
the B prompts (a KV cache of Tp + max_new_tokens slots, repeated N times), a `lax.while_loop` decode that
stops at max_new_tokens or when every row has emitted EOS, and the assembly of the outputs. Shapes and
EOS/pad ids are static; temperature, top_k, top_p and greedy are traced (changing them does not
recompile). With `mesh`, the rows and the KV cache are split over the "batch" mesh axes and the cache's
kv heads over "tensor". `sample_state(graphdef, state, ...)` is the same entry for a caller that holds
a (sharded) nnx state. `jit_decode_step` is the one-token cached step on its own (jitted with
shardings, the cache donated), for ahead-of-time plans. Everything is [B, N, ...]:

  tokens          [B, N, Tp+Tn] int32   prompt (left-padded) then response; pad_token_id after EOS
  prompt_mask     [B, N, Tp+Tn] bool    real prompt tokens
  response_mask   [B, N, Tp+Tn] bool    response tokens, EOS included, nothing after it
  attention_mask  [B, N, Tp+Tn] bool    prompt_mask | response_mask
  logprobs        [B, N] float32        sum_t log pi(y_t | x, y_<t) under the UNMODIFIED policy
                                        (temperature 1, no top-k/top-p truncation): the log pi_t(y|x) of
                                        MATH.md, equal to `sequence_logprobs(model, tokens, response_mask,
                                        attention_mask)` on the flattened outputs.
  sample_logprobs [B, N] float32        the same sum under the distribution actually sampled from
                                        (after temperature, top-k, top-p); 0 for greedy decoding.
  lengths         [B, N] int32          response lengths
With temperature != 1 or truncation the samples are NOT draws from pi, so `logprobs` is the policy's
probability of a sequence drawn from a different (sharpened/truncated) distribution; use
`sample_logprobs` for importance weights between the two.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from wind_jax import sharding
from wind_jax.models.transformer import CACHE_AXES, KVCache, Transformer

Array = jax.Array


class Tokens(NamedTuple):
    """A padded batch of token sequences: tokens [B, T] int32, mask [B, T] bool (True = real token); prompts
    are left-padded, responses right-padded (the oracles and the loop pass sequences this way)."""

    tokens: Array
    mask: Array


class SampleOutput(NamedTuple):
    tokens: Array
    prompt_mask: Array
    response_mask: Array
    attention_mask: Array
    logprobs: Array
    sample_logprobs: Array
    lengths: Array


class DecodeParams(NamedTuple):
    """Traced sampling settings (scalars): changing them reuses the compiled program."""

    temperature: Array  # float32, > 0 (ignored when greedy)
    top_k: Array  # int32, 0 = off
    top_p: Array  # float32 in (0, 1], 1 = off
    greedy: Array  # bool


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """Static settings (shapes and token ids): part of the jit cache key."""

    num_samples: int = 1
    max_new_tokens: int = 32
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int = 0
    cache_dtype: str | None = None
    unstack_layers: bool = False

    def __post_init__(self):
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {self.num_samples!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}")


def decode_params(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False
                  ) -> DecodeParams:
    """Validated DecodeParams from Python values."""
    if not greedy and not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {temperature}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 = off), got {top_k!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    # NumPy scalars: jit traces them without an eager device program per value
    return DecodeParams(np.float32(temperature if temperature > 0 else 1.0), np.int32(top_k),
                        np.float32(top_p), np.bool_(greedy))


def process_logits(logits: Array, temperature, top_k, top_p) -> Array:
    """float32 logits of the sampling distribution: /temperature, then top-k, then top-p (nucleus).

    top_k = 0 and top_p = 1 are off; all three may be traced scalars. top-k keeps tokens tied with the
    k-th largest logit; top-p keeps the smallest prefix of tokens (sorted by probability) whose mass
    reaches top_p, plus tokens tied with the last kept logit."""
    z = logits.astype(jnp.float32) / jnp.asarray(temperature, jnp.float32)
    top_k, top_p = jnp.asarray(top_k, jnp.int32), jnp.asarray(top_p, jnp.float32)
    vocab = z.shape[-1]
    neg_inf = jnp.float32(-jnp.inf)

    def truncate(z):
        sorted_z = jnp.sort(z, axis=-1)[..., ::-1]
        use_k = (top_k > 0) & (top_k < vocab)
        kth = jnp.take_along_axis(sorted_z, jnp.broadcast_to(jnp.clip(top_k, 1, vocab) - 1, z.shape[:-1] + (1,)),
                                  axis=-1)
        kth = jnp.where(use_k, kth, neg_inf)
        z = jnp.where(z < kth, neg_inf, z)
        sorted_z = jnp.where(sorted_z < kth, neg_inf, sorted_z)
        probs = jax.nn.softmax(sorted_z, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        num_keep = jnp.maximum(jnp.sum(mass_before < top_p, axis=-1, keepdims=True), 1)
        cutoff = jnp.take_along_axis(sorted_z, num_keep - 1, axis=-1)
        return jnp.where((top_p < 1.0) & (z < cutoff), neg_inf, z)

    return jax.lax.cond(((top_k > 0) & (top_k < vocab)) | (top_p < 1.0), truncate, lambda z: z, z)


def _choose(logits: Array, key: Array, params: DecodeParams) -> tuple[Array, Array]:
    """(token [R], its log-prob under the sampling distribution [R]; 0 when greedy).

    greedy (traced) picks between two branches with lax.cond, so greedy decoding runs only the argmax:
    drawing the Gumbel noise of `jax.random.categorical` over [R, V] (threefry bits and two logs per
    logit) and the truncation/log-softmax cost more than a decode step's lm-head matmul on CPU, and the
    earlier form computed them for greedy too and then discarded them with jnp.where. Both branches give
    exactly the values the earlier form gave (tests/models/test_sampling.py)."""

    def draw(logits):
        z = process_logits(logits, params.temperature, params.top_k, params.top_p)
        tok = jax.random.categorical(key, z, axis=-1).astype(jnp.int32)
        return tok, jnp.take_along_axis(jax.nn.log_softmax(z, axis=-1), tok[:, None], axis=-1)[:, 0]

    def argmax(logits):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32), jnp.zeros(logits.shape[:1], jnp.float32)

    return jax.lax.cond(params.greedy, argmax, draw, logits)


# ------------------------------------------------------------------------------------------ shardings
def cache_specs(mesh: Mesh | None, cache: KVCache) -> dict | None:
    """PartitionSpecs of a KV cache: rows over the "batch" mesh axes, kv heads over "tensor"."""
    if mesh is None:
        return None
    names = tuple(None if n == "cache_seq" else n for n in CACHE_AXES)
    kv = sharding.logical_to_spec(names, cache["k"].shape, mesh)
    return {"k": kv, "v": kv, "mask": sharding.logical_to_spec(("batch", None), cache["mask"].shape, mesh),
            "index": PartitionSpec()}


def _constrain(tree, specs, mesh):
    if mesh is None:
        return tree
    return jax.tree.map(lambda x, s: jax.lax.with_sharding_constraint(x, NamedSharding(mesh, s)), tree, specs)


def _rows_spec(mesh: Mesh | None, shape) -> PartitionSpec | None:
    if mesh is None:
        return None
    return sharding.logical_to_spec(("batch",) + (None,) * (len(shape) - 1), shape, mesh)


# ------------------------------------------------------------------------------------------ program
def _generate(graphdef, state, prompts, prompt_mask, key, params: DecodeParams, settings: SamplingSettings,
              mesh: Mesh | None) -> SampleOutput:
    model: Transformer = nnx.merge(graphdef, state)
    b, tp = prompts.shape
    n, tn = settings.num_samples, settings.max_new_tokens
    rows = b * n
    cache = model.init_cache(b, tp + tn, settings.cache_dtype)
    cache = _constrain(cache, cache_specs(mesh, cache), mesh)
    logits, cache = model(prompts, attention_mask=prompt_mask, cache=cache, last_only=True)
    rep = functools.partial(jnp.repeat, repeats=n, total_repeat_length=rows)
    cache = {"k": rep(cache["k"], axis=1), "v": rep(cache["v"], axis=1), "mask": rep(cache["mask"], axis=0),
             "index": cache["index"]}
    cache = _constrain(cache, cache_specs(mesh, cache), mesh)
    eos = jnp.asarray(settings.eos_token_id, jnp.int32)
    layers = model.unstacked_layers() if settings.unstack_layers else None  # sliced once, before the loop

    def cond(carry):
        step, _, _, _, _, done, _, _ = carry
        return (step < tn) & ~jnp.all(done)

    def body(carry):
        step, cache, logits, out_tok, out_mask, done, lp_sum, slp_sum = carry
        tok, slp = _choose(logits, jax.random.fold_in(key, step), params)
        lp = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), tok[:, None],
                                 axis=-1)[:, 0]
        alive = ~done
        tok = jnp.where(alive, tok, settings.pad_token_id)
        out_tok = jax.lax.dynamic_update_slice(out_tok, tok[:, None], (0, step))
        out_mask = jax.lax.dynamic_update_slice(out_mask, alive[:, None], (0, step))
        lp_sum = lp_sum + jnp.where(alive, lp, 0.0)
        slp_sum = slp_sum + jnp.where(alive, slp, 0.0)
        if settings.eos_token_id:
            done = done | (alive & jnp.any(tok[:, None] == eos[None, :], axis=-1))
        logits, cache = model(tok[:, None], attention_mask=alive[:, None], cache=cache, layers=layers)
        cache = _constrain(cache, cache_specs(mesh, cache), mesh)
        return step + 1, cache, logits[:, -1], out_tok, out_mask, done, lp_sum, slp_sum

    init = (jnp.zeros((), jnp.int32), cache, rep(logits[:, -1], axis=0),
            jnp.full((rows, tn), settings.pad_token_id, jnp.int32), jnp.zeros((rows, tn), bool),
            jnp.zeros((rows,), bool), jnp.zeros((rows,), jnp.float32), jnp.zeros((rows,), jnp.float32))
    _, _, _, out_tok, out_mask, _, lp, slp = jax.lax.while_loop(cond, body, init)
    tokens = jnp.concatenate([rep(prompts, axis=0), out_tok], axis=1)
    pmask = jnp.concatenate([rep(prompt_mask, axis=0), jnp.zeros_like(out_mask)], axis=1)
    rmask = jnp.concatenate([jnp.zeros((rows, tp), bool), out_mask], axis=1)
    shape = (b, n, tp + tn)
    out = SampleOutput(
        tokens=tokens.reshape(shape), prompt_mask=pmask.reshape(shape), response_mask=rmask.reshape(shape),
        attention_mask=(pmask | rmask).reshape(shape), logprobs=lp.reshape(b, n),
        sample_logprobs=slp.reshape(b, n), lengths=jnp.sum(out_mask, axis=1).astype(jnp.int32).reshape(b, n))
    if mesh is None:
        return out
    return SampleOutput(*(_constrain(x, _rows_spec(mesh, x.shape), mesh) for x in out))


_generate_jit = jax.jit(_generate, static_argnums=(0, 6, 7))


# ------------------------------------------------------------------------------------------ entries
def _eos_tuple(eos_token_id) -> tuple[int, ...]:
    if eos_token_id is None:
        return ()
    if isinstance(eos_token_id, (int, np.integer)):
        return (int(eos_token_id),)
    return tuple(int(e) for e in eos_token_id)


def _check_prompts(prompt_tokens, prompt_mask):
    prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
    if prompt_tokens.ndim != 2 or prompt_tokens.shape[1] == 0:
        raise ValueError(f"prompt_tokens must be [batch, time>0], got shape {prompt_tokens.shape}")
    b, tp = prompt_tokens.shape
    prompt_mask = jnp.ones((b, tp), bool) if prompt_mask is None else jnp.asarray(prompt_mask).astype(bool)
    if prompt_mask.shape != (b, tp):
        raise ValueError(f"prompt_mask shape {prompt_mask.shape} != prompt_tokens shape {(b, tp)}")
    try:  # this process's rows (a multi-host global array is checked by each process on its own rows)
        left_padded = all(bool(np.all(np.asarray(s.data)[:, -1])) for s in prompt_mask.addressable_shards)
    except (jax.errors.TracerArrayConversionError, AttributeError):  # traced mask: cannot check here
        left_padded = True
    if not left_padded:
        raise ValueError("prompt_mask: prompts must be LEFT-padded (last column real for every row)")
    return prompt_tokens, prompt_mask


def sample_state(graphdef, state, prompt_tokens: Array, prompt_mask: Array | None, key: Array, *,
                 num_samples: int = 1, max_new_tokens: int = 32, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, greedy: bool = False, eos_token_id: int | Sequence[int] | None = None,
                 pad_token_id: int = 0, cache_dtype: str | None = None, mesh: Mesh | None = None,
                 unstack_layers: bool = False) -> SampleOutput:
    """`sample` on a split model (graphdef, state), e.g. a state already sharded on `mesh`."""
    model = nnx.merge(graphdef, state)  # no copy: only to read and check the config
    if not isinstance(model, Transformer):
        raise ValueError(f"sample_state: graphdef must be a wind_jax Transformer's, got {type(model).__name__}")
    config = model.config
    prompt_tokens, prompt_mask = _check_prompts(prompt_tokens, prompt_mask)
    eos = _eos_tuple(eos_token_id)
    for e in eos + (int(pad_token_id),):
        if not 0 <= e < config.vocab_size:
            raise ValueError(f"eos_token_id/pad_token_id {e} outside the vocabulary [0, {config.vocab_size})")
    tp = prompt_tokens.shape[1]
    if tp + max_new_tokens > config.max_position_embeddings:
        raise ValueError(f"prompt length {tp} + max_new_tokens {max_new_tokens} exceeds "
                         f"max_position_embeddings {config.max_position_embeddings}")
    params = decode_params(float(temperature), top_k, float(top_p), bool(greedy))
    settings = SamplingSettings(num_samples=num_samples, max_new_tokens=max_new_tokens, eos_token_id=eos,
                                pad_token_id=int(pad_token_id), cache_dtype=cache_dtype,
                                unstack_layers=bool(unstack_layers))
    if mesh is None:
        return _generate_jit(graphdef, state, prompt_tokens, prompt_mask, key, params, settings, None)
    rows = lambda x: jax.device_put(x, NamedSharding(mesh, _rows_spec(mesh, x.shape)))  # noqa: E731
    with jax.set_mesh(mesh):
        return _generate_jit(graphdef, state, rows(prompt_tokens), rows(prompt_mask), key, params, settings,
                             mesh)


def sample(model: Transformer, prompt_tokens: Array, prompt_mask: Array | None, key: Array, *,
           num_samples: int = 1, max_new_tokens: int = 32, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, greedy: bool = False, eos_token_id: int | Sequence[int] | None = None,
           pad_token_id: int = 0, cache_dtype: str | None = None, mesh: Mesh | None = None,
           unstack_layers: bool = False) -> SampleOutput:
    """Draw `num_samples` continuations per left-padded prompt; see the module docstring for outputs.

    unstack_layers=True (opt-in, off by default): the decode loop runs the layers as a Python loop over
    per-layer weights sliced once before it (Transformer.unstacked_layers) instead of the lax.scan over
    the stacked weights, which on XLA:CPU copies every layer's weights (dynamic-slice) at every decode
    step. Same math, different fusion: logits differ by float rounding (tests/models/
    test_sampling_unstacked.py bounds it), so the default keeps the scan's exact numbers; compilation
    takes longer (num_layers copies of the layer in the program). Measured on 2 CPU cores (SmolLM2-135M,
    greedy, 32 tokens; BENCHMARKS.md, cpu_speed): 4-6% faster at batch 16 and 64, same tokens."""
    if not isinstance(model, Transformer):
        raise ValueError(f"sample: model must be a wind_jax Transformer, got {type(model).__name__}")
    graphdef, state = nnx.split(model)
    return sample_state(graphdef, state, prompt_tokens, prompt_mask, key, num_samples=num_samples,
                        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        greedy=greedy, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                        cache_dtype=cache_dtype, mesh=mesh, unstack_layers=unstack_layers)


# ------------------------------------------------------------------------------------------ decode step
def decode_step(graphdef, state, cache: KVCache, tokens: Array, alive: Array) -> tuple[Array, KVCache]:
    """One cached decode step: tokens [R] (alive [R] bool) -> (float32 next-token logits [R, V], cache)."""
    model: Transformer = nnx.merge(graphdef, state)
    logits, cache = model(tokens[:, None], attention_mask=alive[:, None], cache=cache)
    return logits[:, -1], cache


def jit_decode_step(graphdef, state, cache: KVCache, mesh: Mesh):
    """`decode_step` jitted with explicit shardings (params by their logical axes, cache rows over the
    "batch" mesh axes and kv heads over "tensor") and the cache donated. state and cache may be arrays or
    ShapeDtypeStructs. Returns fn(state, cache, tokens, alive) -> (logits, cache); fn.jitted is the jit."""
    state_sh = sharding.state_shardings(state, mesh)
    cache_sh = {k: NamedSharding(mesh, s) for k, s in cache_specs(mesh, cache).items()}
    rows = NamedSharding(mesh, _rows_spec(mesh, cache["mask"].shape[:1]))
    logits_sh = NamedSharding(mesh, _rows_spec(mesh, cache["mask"].shape[:1] + (1,)))
    jitted = jax.jit(functools.partial(decode_step, graphdef), in_shardings=(state_sh, cache_sh, rows, rows),
                     out_shardings=(logits_sh, cache_sh), donate_argnums=(1,))

    def step(s, c, tokens, alive):
        with jax.set_mesh(mesh):
            return jitted(s, c, tokens, alive)

    step.jitted = jitted
    return step

"""Jitted KV-cache sampler: N samples per prompt, temperature / top-k / top-p / greedy, EOS handling.

    out = sample(model, prompt_tokens, prompt_mask, key, num_samples=4, max_new_tokens=64,
                 temperature=1.0, top_k=0, top_p=1.0, eos_token_id=2)

Prompts are [B, Tp], LEFT-padded (prompt_mask[:, -1] all True). One prefill over the B prompts fills a KV
cache of Tp + max_new_tokens slots, which is repeated N times and donated to a `lax.while_loop` decode
that stops at max_new_tokens or when every row has emitted EOS. Everything is [B, N, ...]:

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

from wind_jax.models.transformer import Transformer

Array = jax.Array


class SampleOutput(NamedTuple):
    tokens: Array
    prompt_mask: Array
    response_mask: Array
    attention_mask: Array
    logprobs: Array
    sample_logprobs: Array
    lengths: Array


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """Static decoding settings (hashable: part of the jit cache key)."""

    num_samples: int = 1
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0          # 0 = off
    top_p: float = 1.0      # 1.0 = off
    greedy: bool = False
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int = 0
    cache_dtype: str | None = None

    def __post_init__(self):
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {self.num_samples!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {self.temperature}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def process_logits(logits: Array, settings: SamplingSettings) -> Array:
    """float32 logits of the sampling distribution: /temperature, then top-k, then top-p (nucleus).

    top-p keeps the smallest prefix of tokens (sorted by probability) whose mass reaches top_p; tokens tied
    with the last kept logit are kept too."""
    z = logits.astype(jnp.float32) / jnp.float32(settings.temperature)
    neg_inf = jnp.float32(-jnp.inf)
    if 0 < settings.top_k < z.shape[-1]:
        kth = jax.lax.top_k(z, settings.top_k)[0][..., -1:]
        z = jnp.where(z < kth, neg_inf, z)
    if settings.top_p < 1.0:
        sorted_z = jnp.sort(z, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_z, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        num_keep = jnp.maximum(jnp.sum(mass_before < settings.top_p, axis=-1, keepdims=True), 1)
        cutoff = jnp.take_along_axis(sorted_z, num_keep - 1, axis=-1)
        z = jnp.where(z < cutoff, neg_inf, z)
    return z


def _choose(logits: Array, key: Array, settings: SamplingSettings) -> tuple[Array, Array]:
    """(token [B], its log-prob under the sampling distribution [B])."""
    if settings.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32), jnp.zeros(logits.shape[:1], jnp.float32)
    z = process_logits(logits, settings)
    tok = jax.random.categorical(key, z, axis=-1).astype(jnp.int32)
    lp = jnp.take_along_axis(jax.nn.log_softmax(z, axis=-1), tok[:, None], axis=-1)[:, 0]
    return tok, lp


@functools.partial(jax.jit, static_argnums=(0, 4))
def _prefill(graphdef, state, prompts, prompt_mask, settings: SamplingSettings):
    model: Transformer = nnx.merge(graphdef, state)
    b, tp = prompts.shape
    cache = model.init_cache(b, tp + settings.max_new_tokens, settings.cache_dtype)
    logits, cache = model(prompts, attention_mask=prompt_mask, cache=cache)
    n = settings.num_samples
    rep = functools.partial(jnp.repeat, repeats=n, axis=0, total_repeat_length=b * n)
    cache = {"k": tuple(map(rep, cache["k"])), "v": tuple(map(rep, cache["v"])), "mask": rep(cache["mask"]),
             "index": cache["index"]}
    return rep(logits[:, -1]), cache


@functools.partial(jax.jit, static_argnums=(0, 5), donate_argnums=(3,))
def _decode(graphdef, state, first_logits, cache, key, settings: SamplingSettings):
    model: Transformer = nnx.merge(graphdef, state)
    rows, tn = first_logits.shape[0], settings.max_new_tokens
    eos = jnp.asarray(settings.eos_token_id, jnp.int32)

    def cond(carry):
        step, _, _, _, _, done, _, _ = carry
        return (step < tn) & ~jnp.all(done)

    def body(carry):
        step, cache, logits, out_tok, out_mask, done, lp_sum, slp_sum = carry
        tok, slp = _choose(logits, jax.random.fold_in(key, step), settings)
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
        logits, cache = model(tok[:, None], attention_mask=alive[:, None], cache=cache)
        return step + 1, cache, logits[:, -1], out_tok, out_mask, done, lp_sum, slp_sum

    init = (jnp.zeros((), jnp.int32), cache, first_logits,
            jnp.full((rows, tn), settings.pad_token_id, jnp.int32), jnp.zeros((rows, tn), bool),
            jnp.zeros((rows,), bool), jnp.zeros((rows,), jnp.float32), jnp.zeros((rows,), jnp.float32))
    _, cache, _, out_tok, out_mask, _, lp_sum, slp_sum = jax.lax.while_loop(cond, body, init)
    return out_tok, out_mask, lp_sum, slp_sum, cache  # the cache aliases the donated input buffers


def sample(model: Transformer, prompt_tokens: Array, prompt_mask: Array | None, key: Array, *,
           num_samples: int = 1, max_new_tokens: int = 32, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, greedy: bool = False, eos_token_id: int | Sequence[int] | None = None,
           pad_token_id: int = 0, cache_dtype: str | None = None) -> SampleOutput:
    """Draw `num_samples` continuations per left-padded prompt; see the module docstring for outputs."""
    prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
    if prompt_tokens.ndim != 2 or prompt_tokens.shape[1] == 0:
        raise ValueError(f"prompt_tokens must be [batch, time>0], got shape {prompt_tokens.shape}")
    b, tp = prompt_tokens.shape
    if prompt_mask is None:
        prompt_mask = jnp.ones((b, tp), bool)
    prompt_mask = jnp.asarray(prompt_mask).astype(bool)
    if prompt_mask.shape != (b, tp):
        raise ValueError(f"prompt_mask shape {prompt_mask.shape} != prompt_tokens shape {(b, tp)}")
    try:
        left_padded = bool(np.all(np.asarray(prompt_mask)[:, -1]))
    except jax.errors.TracerArrayConversionError:  # traced mask: cannot check here
        left_padded = True
    if not left_padded:
        raise ValueError("prompt_mask: prompts must be LEFT-padded (last column real for every row)")
    if eos_token_id is None:
        eos = ()
    elif isinstance(eos_token_id, (int, np.integer)):
        eos = (int(eos_token_id),)
    else:
        eos = tuple(int(e) for e in eos_token_id)
    vocab = model.config.vocab_size
    for e in eos + (pad_token_id,):
        if not 0 <= e < vocab:
            raise ValueError(f"eos_token_id/pad_token_id {e} outside the vocabulary [0, {vocab})")
    if tp + max_new_tokens > model.config.max_position_embeddings:
        raise ValueError(f"prompt length {tp} + max_new_tokens {max_new_tokens} exceeds "
                         f"max_position_embeddings {model.config.max_position_embeddings}")
    settings = SamplingSettings(num_samples=num_samples, max_new_tokens=max_new_tokens,
                                temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                                greedy=bool(greedy), eos_token_id=eos, pad_token_id=int(pad_token_id),
                                cache_dtype=cache_dtype)
    graphdef, state = nnx.split(model)
    first_logits, cache = _prefill(graphdef, state, prompt_tokens, prompt_mask, settings)
    out_tok, out_mask, lp, slp, _ = _decode(graphdef, state, first_logits, cache, key, settings)
    n = num_samples
    rep = lambda x: jnp.repeat(x, n, axis=0)  # noqa: E731
    tokens = jnp.concatenate([rep(prompt_tokens), out_tok], axis=1)
    pmask = jnp.concatenate([rep(prompt_mask), jnp.zeros_like(out_mask)], axis=1)
    rmask = jnp.concatenate([jnp.zeros_like(rep(prompt_mask)), out_mask], axis=1)
    shape = (b, n, tp + max_new_tokens)
    return SampleOutput(
        tokens=tokens.reshape(shape), prompt_mask=pmask.reshape(shape), response_mask=rmask.reshape(shape),
        attention_mask=(pmask | rmask).reshape(shape), logprobs=lp.reshape(b, n),
        sample_logprobs=slp.reshape(b, n), lengths=jnp.sum(out_mask, axis=1).astype(jnp.int32).reshape(b, n))

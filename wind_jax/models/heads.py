"""Reward and pairwise-preference heads on the shared Transformer backbone (Flax NNX).

Both pool the final-normed hidden state at the LAST REAL token of each sequence (works for left and right
padding) and compute their outputs in float32.

- RewardHead: scalar Bradley-Terry reward r(x, y); P(y beats y') = sigmoid(r(y) - r(y')) (MATH.md,
  "Bradley-Terry: P = sigmoid(r - r')").
- PreferenceHead: general preference P(a beats b) = sigmoid(s(a, b)) with an antisymmetric score
      s(a, b) = r(a) - r(b) + sum_j (u_a[2j] u_b[2j+1] - u_a[2j+1] u_b[2j]),   u = U h_last in R^(2 rank),
  i.e. sigmoid of a skew-symmetric matrix (MATH.md "General (non-transitive) case: P = sigmoid(A)").
  s(b, a) = -s(a, b) holds bitwise, so P(a, b) + P(b, a) = 1 and P(a, a) = 1/2 by construction; the
  skew bilinear term can express cycles that no reward can.
- PolicyWithOffset: a policy plus the learned per-prompt offset b(x) of wind_sq_offset / wind_nce (a
  linear head on the last prompt token's hidden state; MATH.md Alg. 3).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from wind_jax.models.config import LlamaConfig
from wind_jax.models.transformer import Dense, Transformer

Array = jax.Array


def last_token_index(attention_mask: Array) -> Array:
    """[B] index of the last True in each row of a [B, T] mask (0 for an all-False row)."""
    mask = jnp.asarray(attention_mask).astype(bool)
    t = mask.shape[-1]
    return (t - 1 - jnp.argmax(mask[:, ::-1], axis=-1)).astype(jnp.int32)


def pool_last(hidden: Array, attention_mask: Array | None) -> Array:
    """hidden [B, T, D] -> [B, D] float32 at the last real token."""
    if attention_mask is None:
        return hidden[:, -1].astype(jnp.float32)
    idx = last_token_index(attention_mask)
    return jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0].astype(jnp.float32)


def _backbone(backbone: Transformer | LlamaConfig, rngs: nnx.Rngs) -> Transformer:
    if isinstance(backbone, Transformer):
        return backbone
    if isinstance(backbone, LlamaConfig):
        return Transformer(backbone, rngs=rngs)
    raise ValueError(f"backbone must be a Transformer or a LlamaConfig, got {type(backbone).__name__}")


class RewardHead(nnx.Module):
    """r(tokens) = w . h_last + b  ([B] float32). Pass a Transformer to share it, or a config to build one."""

    def __init__(self, backbone: Transformer | LlamaConfig, *, rngs: nnx.Rngs):
        self.backbone = _backbone(backbone, rngs)
        c32 = self.backbone.config.replace(dtype="float32", param_dtype="float32")
        self.score = Dense(c32.hidden_size, 1, ("embed", None), config=c32, use_bias=True, rngs=rngs)

    def __call__(self, tokens: Array, attention_mask: Array | None = None) -> Array:
        h = pool_last(self.backbone.hidden(tokens, attention_mask=attention_mask), attention_mask)
        return self.score(h)[:, 0]

    def pair_logit(self, tokens_a, mask_a, tokens_b, mask_b) -> Array:
        """Bradley-Terry logit r(a) - r(b) of P(a beats b), [B] float32."""
        return self(tokens_a, mask_a) - self(tokens_b, mask_b)

    def preference(self, tokens_a, mask_a, tokens_b, mask_b) -> Array:
        """Bradley-Terry P(a beats b) = sigmoid(r(a) - r(b)), [B] float32."""
        return jax.nn.sigmoid(self.pair_logit(tokens_a, mask_a, tokens_b, mask_b))


def reward_prob_fn(head: RewardHead):
    """Bradley-Terry oracle function of a reward head (e.g. from convert.import_reward_model):
    (prompt, a, b) -> P(a beats b) = sigmoid(r(prompt|a) - r(prompt|b)), [B] float32, jitted.

    prompt, a, b: token batches with ``.tokens`` [B, T] and ``.mask`` [B, T] (True = real token), e.g.
    wind_jax.train.oracle.Tokens; each side is scored on the concatenation [prompt | response]. Positions
    count real tokens only, so left-padded prompts score like unpadded text."""
    if not isinstance(head, RewardHead):
        raise ValueError(f"reward_prob_fn: head must be a RewardHead, got {type(head).__name__}")
    graphdef, state = nnx.split(head)

    def prob(prompt, a, b):
        if prompt.tokens.shape[0] != a.tokens.shape[0] or a.tokens.shape[0] != b.tokens.shape[0]:
            raise ValueError(f"reward_prob_fn: batch sizes differ: prompt {prompt.tokens.shape[0]}, "
                             f"a {a.tokens.shape[0]}, b {b.tokens.shape[0]}")
        return _reward_prob(graphdef, state, prompt.tokens, prompt.mask, a.tokens, a.mask, b.tokens, b.mask)

    return prob


@functools.partial(jax.jit, static_argnums=0)
def _reward_prob(graphdef, state, pt, pm, at, am, bt, bm):
    head = nnx.merge(graphdef, state)
    cat = lambda t1, t2: jnp.concatenate([jnp.asarray(t1), jnp.asarray(t2)], axis=1)  # noqa: E731
    return head.preference(cat(pt, at), cat(pm, am).astype(bool), cat(pt, bt), cat(pm, bm).astype(bool))


def bradley_terry_loss(reward_chosen: Array, reward_rejected: Array) -> Array:
    """Per-example -log sigmoid(r_chosen - r_rejected), float32 [B]."""
    diff = jnp.asarray(reward_chosen, jnp.float32) - jnp.asarray(reward_rejected, jnp.float32)
    return -jax.nn.log_sigmoid(diff)


class PreferenceHead(nnx.Module):
    """P(a beats b) = sigmoid(s(a, b)) with s antisymmetric (module docstring); rank = skew-term rank."""

    def __init__(self, backbone: Transformer | LlamaConfig, *, rank: int = 4, rngs: nnx.Rngs):
        if not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank must be an int >= 0, got {rank!r}")
        self.backbone = _backbone(backbone, rngs)
        c32 = self.backbone.config.replace(dtype="float32", param_dtype="float32")
        self.score = Dense(c32.hidden_size, 1, ("embed", None), config=c32, use_bias=False, rngs=rngs)
        self.skew = (Dense(c32.hidden_size, 2 * rank, ("embed", None), config=c32, rngs=rngs)
                     if rank else None)
        self.rank = rank

    def features(self, tokens: Array, attention_mask: Array | None = None) -> tuple[Array, Array | None]:
        """(reward part r [B], skew features u [B, 2 rank] or None), float32."""
        h = pool_last(self.backbone.hidden(tokens, attention_mask=attention_mask), attention_mask)
        return self.score(h)[:, 0], (None if self.skew is None else self.skew(h))

    def _pair_features(self, tokens_a, mask_a, tokens_b, mask_b):
        tokens_a, tokens_b = jnp.asarray(tokens_a), jnp.asarray(tokens_b)
        if tokens_a.shape[0] != tokens_b.shape[0]:
            raise ValueError(f"tokens_a batch {tokens_a.shape[0]} != tokens_b batch {tokens_b.shape[0]}")
        if tokens_a.shape == tokens_b.shape:  # one backbone pass over both sides
            b = tokens_a.shape[0]
            ma = jnp.ones(tokens_a.shape, bool) if mask_a is None else jnp.asarray(mask_a, bool)
            mb = jnp.ones(tokens_b.shape, bool) if mask_b is None else jnp.asarray(mask_b, bool)
            r, u = self.features(jnp.concatenate([tokens_a, tokens_b]), jnp.concatenate([ma, mb]))
            return (r[:b], None if u is None else u[:b]), (r[b:], None if u is None else u[b:])
        return self.features(tokens_a, mask_a), self.features(tokens_b, mask_b)

    def pair_logit(self, tokens_a, mask_a, tokens_b, mask_b) -> Array:
        """Antisymmetric logit s(a, b) of P(a beats b), [B] float32."""
        (ra, ua), (rb, ub) = self._pair_features(tokens_a, mask_a, tokens_b, mask_b)
        s = ra - rb
        if ua is not None:
            s = s + jnp.sum(ua[:, 0::2] * ub[:, 1::2] - ua[:, 1::2] * ub[:, 0::2], axis=-1)
        return s

    def __call__(self, tokens_a, mask_a, tokens_b, mask_b) -> Array:
        """P(a beats b) [B] float32; P(a, b) + P(b, a) = 1."""
        return jax.nn.sigmoid(self.pair_logit(tokens_a, mask_a, tokens_b, mask_b))


class PolicyWithOffset(nnx.Module):
    """A policy plus the learned per-prompt offset b(x) of wind_sq_offset / wind_nce (MATH.md, Alg. 3).

    b(x) is a linear scalar head on the final hidden state of the last prompt token (zero-initialized).
    """

    def __init__(self, policy: Transformer, *, rngs: nnx.Rngs):
        self.policy = policy
        d = policy.config.hidden_size
        self.offset_head = nnx.Linear(d, 1, kernel_init=nnx.initializers.zeros, rngs=rngs,
                                      kernel_metadata={"out_sharding": ("embed", None), "eager_sharding": False},
                                      bias_metadata={"eager_sharding": False})

    def offset(self, hidden: Array, response_mask: Array) -> Array:
        """b(x) [B] float32 from hidden [B, T, D] at the position just before the first response token."""
        last_prompt = jnp.maximum(jnp.argmax(response_mask.astype(jnp.int32), axis=1) - 1, 0)
        h = jnp.take_along_axis(hidden, last_prompt[:, None, None], axis=1)[:, 0]
        return self.offset_head(h.astype(jnp.float32))[:, 0].astype(jnp.float32)

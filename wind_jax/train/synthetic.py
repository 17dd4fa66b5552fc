"""A synthetic language whose gold preference is known exactly, with a non-transitive component.

Used by `experiments.llm_alignment` (default config) so that a language-model alignment run can be evaluated
against the gold preference without any download.

Vocabulary: PAD = 0, BOS = 1, EOS = 2, content tokens 3 .. vocab_size - 1.
Prompt: [BOS, c_1 .. c_prompt_len] (content tokens, uniform). Response: content tokens, then EOS, then PAD.
Reference process (what the base policy is pre-trained on): response length uniform in
[min_response_len, max_response_len]; each token copies a uniformly chosen prompt token with probability
copy_prob, else is a uniform content token.

Gold preference (MATH.md, "General (non-transitive) case", with a Bradley-Terry part):
    P(y > y' | x) = sigmoid(r(x, y) - r(x, y') + A(y, y'))
    r(x, y)   = mean_t [ u[y_t] + match_bonus * 1{y_t in x} ]          (mean over content tokens of y)
    A(y, y')  = nontransitive_strength * h(y)^T C h(y'),  h(y) = histogram of (y_t mod 3) / length,
                C = [[0, 1, -1], [-1, 0, 1], [1, -1, 0]]  (skew-symmetric, rock-paper-scissors)
A is skew-symmetric, so P(y > y') + P(y' > y) = 1 exactly. An empty response has r = empty_reward and h = 0.
u[v] ~ reward_scale * N(0, 1), drawn from `seed` (the gold function is fixed by the language's fields).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

PAD, BOS, EOS = 0, 1, 2
FIRST_CONTENT = 3
_jit_method = functools.partial(jax.jit, static_argnums=0)
_CYCLE = np.array([[0.0, 1.0, -1.0], [-1.0, 0.0, 1.0], [1.0, -1.0, 0.0]], np.float32)


@dataclasses.dataclass(frozen=True)
class SyntheticLanguage:
    """Fields fix the language and its gold preference; see the module docstring for the formulas."""

    vocab_size: int = 16
    prompt_len: int = 4
    min_response_len: int = 2
    max_response_len: int = 6
    copy_prob: float = 0.3
    reward_scale: float = 1.0
    match_bonus: float = 0.5
    nontransitive_strength: float = 2.0
    empty_reward: float = -2.0
    seed: int = 0

    def __post_init__(self):
        if self.vocab_size < FIRST_CONTENT + 3:
            raise ValueError(f"vocab_size must be >= {FIRST_CONTENT + 3}, got {self.vocab_size}")
        if self.prompt_len < 1:
            raise ValueError(f"prompt_len must be >= 1, got {self.prompt_len}")
        if not 0 <= self.min_response_len <= self.max_response_len:
            raise ValueError(
                f"need 0 <= min_response_len <= max_response_len, got {self.min_response_len}, "
                f"{self.max_response_len}")
        if not 0.0 <= self.copy_prob <= 1.0:
            raise ValueError(f"copy_prob must be in [0, 1], got {self.copy_prob}")

    # ---- shapes -------------------------------------------------------------------------------------
    @property
    def prompt_width(self) -> int:
        """Prompt tokens per example: BOS + prompt_len content tokens."""
        return 1 + self.prompt_len

    @property
    def response_width(self) -> int:
        """Response slots per example: max_response_len content tokens + EOS."""
        return self.max_response_len + 1

    @property
    def num_content(self) -> int:
        return self.vocab_size - FIRST_CONTENT

    def utilities(self) -> jax.Array:
        """u[v] for every vocabulary entry (zero for PAD/BOS/EOS), float32 [vocab_size]."""
        rng = np.random.default_rng(self.seed)
        u = np.zeros(self.vocab_size, np.float32)
        u[FIRST_CONTENT:] = self.reward_scale * rng.standard_normal(self.num_content)
        return jnp.asarray(u)

    # ---- sampling -----------------------------------------------------------------------------------
    @functools.partial(jax.jit, static_argnums=(0, 2))
    def sample_prompts(self, key: jax.Array, n: int) -> jax.Array:
        """[n, prompt_width] int32 prompts; all tokens are real (no padding)."""
        body = jax.random.randint(key, (n, self.prompt_len), FIRST_CONTENT, self.vocab_size, jnp.int32)
        return jnp.concatenate([jnp.full((n, 1), BOS, jnp.int32), body], axis=1)

    @_jit_method
    def sample_reference_responses(self, key: jax.Array, prompts: jax.Array):
        """Responses of the reference process: (tokens [n, response_width] int32, mask [n, response_width]).

        The mask marks the content tokens and the EOS (the tokens a policy generates).
        """
        n = prompts.shape[0]
        k_len, k_copy, k_pos, k_tok = jax.random.split(key, 4)
        length = jax.random.randint(k_len, (n, 1), self.min_response_len, self.max_response_len + 1)
        copy = jax.random.bernoulli(k_copy, self.copy_prob, (n, self.max_response_len))
        pos = jax.random.randint(k_pos, (n, self.max_response_len), 1, self.prompt_width)
        copied = jnp.take_along_axis(prompts, pos, axis=1)
        fresh = jax.random.randint(k_tok, (n, self.max_response_len), FIRST_CONTENT, self.vocab_size)
        body = jnp.where(copy, copied, fresh).astype(jnp.int32)
        idx = jnp.arange(self.response_width)[None, :]
        body = jnp.concatenate([body, jnp.zeros((n, 1), jnp.int32)], axis=1)
        tokens = jnp.where(idx < length, body, jnp.where(idx == length, EOS, PAD)).astype(jnp.int32)
        return tokens, idx <= length

    # ---- gold preference ----------------------------------------------------------------------------
    def _content(self, responses, mask):
        return jnp.asarray(mask, bool) & (responses >= FIRST_CONTENT)

    @_jit_method
    def gold_reward(self, prompts, responses, mask) -> jax.Array:
        """r(x, y), float32 [B] (module docstring)."""
        content = self._content(responses, mask)
        count = content.sum(-1)
        in_prompt = (responses[:, :, None] == prompts[:, None, :]).any(-1)
        per_tok = self.utilities()[responses] + self.match_bonus * in_prompt
        total = jnp.where(content, per_tok, 0.0).sum(-1)
        return jnp.where(count > 0, total / jnp.maximum(count, 1), self.empty_reward).astype(jnp.float32)

    def class_histogram(self, responses, mask) -> jax.Array:
        """h(y): fraction of content tokens in each class (token mod 3), float32 [B, 3]."""
        content = self._content(responses, mask)
        onehot = jax.nn.one_hot(responses % 3, 3) * content[..., None]
        return onehot.sum(1) / jnp.maximum(content.sum(-1, keepdims=True), 1)

    def gold_skew(self, resp_a, mask_a, resp_b, mask_b) -> jax.Array:
        """A(y, y') = strength * h(y)^T C h(y'), skew-symmetric, float32 [B]."""
        ha, hb = self.class_histogram(resp_a, mask_a), self.class_histogram(resp_b, mask_b)
        return self.nontransitive_strength * jnp.einsum("bi,ij,bj->b", ha, jnp.asarray(_CYCLE), hb)

    def gold_logit(self, prompts, resp_a, mask_a, resp_b, mask_b) -> jax.Array:
        return (self.gold_reward(prompts, resp_a, mask_a) - self.gold_reward(prompts, resp_b, mask_b)
                + self.gold_skew(resp_a, mask_a, resp_b, mask_b))

    @_jit_method
    def gold_preference(self, prompts, resp_a, mask_a, resp_b, mask_b) -> jax.Array:
        """P(a beats b | x) in [0, 1], float32 [B]; P(a, b) + P(b, a) = 1 exactly."""
        return jax.nn.sigmoid(self.gold_logit(prompts, resp_a, mask_a, resp_b, mask_b))

    # ---- pre-training data --------------------------------------------------------------------------
    @functools.partial(jax.jit, static_argnums=(0, 2))
    def pretraining_batch(self, key: jax.Array, n: int):
        """Full sequences [prompt | response] for maximum likelihood pre-training of the base policy.

        Returns (tokens [n, prompt_width + response_width], response_mask, attention_mask).
        """
        kp, kr = jax.random.split(key)
        prompts = self.sample_prompts(kp, n)
        resp, mask = self.sample_reference_responses(kr, prompts)
        tokens = jnp.concatenate([prompts, resp], axis=1)
        resp_mask = jnp.concatenate([jnp.zeros_like(prompts, bool), mask], axis=1)
        attn = jnp.concatenate([jnp.ones_like(prompts, bool), mask], axis=1)
        return tokens, resp_mask, attn

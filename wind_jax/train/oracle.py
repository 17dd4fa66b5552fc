"""Preference oracles behind one interface (MATH.md, Algorithm 3: "one preference query per prompt").

    oracle.prefer(prompt, resp_a, resp_b, key) -> Preference(prob [B], outcome [B])
prob = P(a beats b | prompt) in [0, 1]; outcome = a Bernoulli(prob) draw (1.0 = a wins) when a key is given,
else None. Every pair counts as ONE preference query (`oracle.num_queries`), whatever the oracle's cost.
Sequences are `Tokens(tokens [B, T] int32, mask [B, T] bool)`; prompts may be left-padded, responses
right-padded (the mask says which entries are real).

Oracles:
  GoldOracle(fn)         a known function (the evaluator's gold preference, e.g. SyntheticLanguage).
  HeadOracle(prob_fn)    a learned reward / preference head; symmetrized: (p(a,b) + 1 - p(b,a)) / 2.
                         HeadOracle.from_reward_head(head, mesh=) scores an imported reward model.
  JudgeOracle(model,...) a wind_jax language model asked which response is better; the probability of
                         answering "A" vs "B" is averaged over both presentation orders, so
                         P(a, b) + P(b, a) = 1 exactly.
  RetokenizingOracle(oracle, source, target)  an oracle of another vocabulary (a judge of another family)
                         fed through text: the policy's ids are decoded and encoded with the judge's tokenizer.
With `mesh=` the judge / reward model is placed on the mesh by its logical axes (wind_jax.train.on_mesh:
FROZEN_AXIS_RULES) and its forward is jitted with shardings; each process judges its own rows.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from wind_jax.sampling import Tokens
from wind_jax.train.on_mesh import FrozenForward


class Preference(NamedTuple):
    prob: jax.Array                # [B] float32, P(a beats b)
    outcome: jax.Array | None      # [B] float32 in {0, 1} (a Bernoulli(prob) draw), None without a key


def length_multiple(model) -> int:
    """Sequence-length multiple a model's attention needs: 128 for the splash kernel, else 1."""
    config = getattr(model, "config", None) or getattr(getattr(model, "backbone", None), "config", None)
    return 128 if getattr(config, "attention", None) == "splash" else 1


def _pad_columns(x, multiple: int, left: bool):
    """Pad the time axis of [B, T] to a multiple with zeros / False (masked: invisible to the model)."""
    x = np.asarray(x)
    pad = -x.shape[1] % multiple
    if not pad:
        return x
    return np.pad(x, ((0, 0), (pad, 0) if left else (0, pad)))


def _check_pair(prompt: Tokens, a: Tokens, b: Tokens):
    for name, t in (("prompt", prompt), ("resp_a", a), ("resp_b", b)):
        if not isinstance(t, Tokens):
            raise ValueError(f"{name} must be a Tokens(tokens, mask), got {type(t).__name__}")
        if t.tokens.ndim != 2 or t.tokens.shape != t.mask.shape:
            raise ValueError(f"{name}: tokens and mask must both be [B, T], got {t.tokens.shape}, "
                             f"{t.mask.shape}")
    if not prompt.tokens.shape[0] == a.tokens.shape[0] == b.tokens.shape[0]:
        raise ValueError(f"batch sizes differ: prompt {prompt.tokens.shape[0]}, resp_a "
                         f"{a.tokens.shape[0]}, resp_b {b.tokens.shape[0]}")


class PreferenceOracle:
    """Base class: subclasses implement `_prob(prompt, a, b) -> [B] float32`."""

    name = "oracle"

    def __init__(self):
        self.num_queries = 0

    def _prob(self, prompt: Tokens, a: Tokens, b: Tokens) -> jax.Array:
        raise NotImplementedError

    def probability(self, prompt: Tokens, a: Tokens, b: Tokens, *, count: bool = True) -> jax.Array:
        """P(a beats b | prompt), float32 [B]; counts B queries unless count=False."""
        _check_pair(prompt, a, b)
        p = self._prob(prompt, a, b)
        p = p if getattr(p, "dtype", None) == jnp.float32 or np.asarray(p).dtype.kind not in "biuf" else jnp.asarray(p, jnp.float32)
        if count:
            self.num_queries += int(a.tokens.shape[0])
        return p

    def prefer(self, prompt: Tokens, a: Tokens, b: Tokens, key: jax.Array | None = None,
               *, count: bool = True) -> Preference:
        p = self.probability(prompt, a, b, count=count)
        outcome = None
        if key is not None:
            outcome = jax.random.bernoulli(key, p).astype(jnp.float32)
        return Preference(p, outcome)

    def __call__(self, prompt, a, b, key=None):
        return self.prefer(prompt, a, b, key)

    def with_new_counter(self) -> "PreferenceOracle":
        """The same oracle (the same placed model and compiled forward) with its own query count from 0, e.g.
        the evaluation oracle beside the training one, so a judge on the mesh is held once."""
        other = copy.copy(self)
        other.num_queries = 0
        return other

    # checkpointing of the query counter
    def state_dict(self) -> dict:
        return {"num_queries": int(self.num_queries)}

    def load_state_dict(self, d: dict) -> None:
        self.num_queries = int(d["num_queries"])


class GoldOracle(PreferenceOracle):
    """fn(prompt_tokens, a_tokens, a_mask, b_tokens, b_mask) -> P(a beats b) [B] (the evaluator's gold)."""

    name = "gold"

    def __init__(self, fn: Callable[..., jax.Array]):
        super().__init__()
        self._fn = jax.jit(fn)

    def _prob(self, prompt, a, b):
        return self._fn(prompt.tokens, a.tokens, a.mask, b.tokens, b.mask)


class HeadOracle(PreferenceOracle):
    """A learned head: prob_fn(prompt, a, b) -> [B] in [0, 1] (Tokens arguments). With symmetrize=True
    (default) the output is (p(a, b) + 1 - p(b, a)) / 2, so P(a, b) + P(b, a) = 1 even for a head that is
    only approximately antisymmetric. A reward head can be wrapped with `from_reward`."""

    name = "head"

    def __init__(self, prob_fn: Callable[[Tokens, Tokens, Tokens], jax.Array], *, symmetrize: bool = True):
        super().__init__()
        self._fn = prob_fn
        self.symmetrize = symmetrize

    @classmethod
    def from_reward_head(cls, head, *, mesh=None, pad_to: int | None = None) -> "HeadOracle":
        """Bradley-Terry oracle of a wind_jax RewardHead (e.g. from convert.import_reward_model). mesh=None:
        wind_jax.models.heads.reward_prob_fn as is; with a mesh the head is placed on it and each side is
        scored on [prompt | response] by one sharded program (`reward_pair_fn`). Responses are right-padded
        (masked) so that [prompt | response] is a multiple of `pad_to` (default: 128 for splash attention)."""
        from wind_jax.models.heads import RewardHead, reward_prob_fn
        if not isinstance(head, RewardHead):
            raise ValueError(f"from_reward_head: head must be a RewardHead, got {type(head).__name__}")
        m = pad_to or length_multiple(head)

        def padded(p, a, b):  # responses right-padded so [prompt | response] suits the attention kernel
            if m == 1:
                return p, a, b
            width = -(p.tokens.shape[1] + max(a.tokens.shape[1], b.tokens.shape[1])) % m
            grow = lambda t, w: Tokens(*(np.pad(np.asarray(x), ((0, 0), (0, w))) for x in t))  # noqa: E731
            wide = max(a.tokens.shape[1], b.tokens.shape[1]) + width
            return p, grow(a, wide - a.tokens.shape[1]), grow(b, wide - b.tokens.shape[1])

        if mesh is None:
            fn = reward_prob_fn(head)
            return cls(lambda p, a, b: fn(*padded(p, a, b)), symmetrize=False)
        fwd = FrozenForward(head, reward_pair_fn, mesh, num_inputs=6)

        def on_mesh(p, a, b):
            p, a, b = padded(p, a, b)
            return fwd(p.tokens, p.mask, a.tokens, a.mask, b.tokens, b.mask)
        return cls(on_mesh, symmetrize=False)

    @classmethod
    def from_reward(cls, reward_fn: Callable[[Tokens, Tokens], jax.Array]) -> "HeadOracle":
        """Bradley-Terry: P(a beats b) = sigmoid(r(prompt, a) - r(prompt, b))."""
        def prob(prompt, a, b):
            return jax.nn.sigmoid(reward_fn(prompt, a) - reward_fn(prompt, b))
        return cls(prob, symmetrize=False)

    def _prob(self, prompt, a, b):
        p = self._fn(prompt, a, b)
        if self.symmetrize:  # on the host: no eager device program per call
            p = 0.5 * (np.asarray(p, np.float32) + 1.0 - np.asarray(self._fn(prompt, b, a), np.float32))
        return p


def reward_pair_fn(head, pt, pm, at, am, bt, bm) -> jax.Array:
    """P(a beats b) = sigmoid(r([prompt | a]) - r([prompt | b])), [B] float32 (a RewardHead's module)."""
    cat = lambda x, y: jnp.concatenate([x, y], axis=1)  # noqa: E731
    return head.preference(cat(pt, at), cat(pm, am).astype(bool), cat(pt, bt), cat(pm, bm).astype(bool))


# ---- LLM judge ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class JudgeTemplate:
    """Token ids of the judge prompt: prefix, prompt, before_a, response A, before_b, response B, question;
    the judge's answer is read at the last position as logit[answer_a] - logit[answer_b]."""

    prefix: tuple[int, ...]
    before_a: tuple[int, ...]
    before_b: tuple[int, ...]
    question: tuple[int, ...]
    answer_a: int
    answer_b: int

    def __post_init__(self):
        if len(self.question) < 1:
            raise ValueError("JudgeTemplate.question must hold at least one token")
        if self.answer_a == self.answer_b:
            raise ValueError(f"answer_a and answer_b must differ, both are {self.answer_a}")

    @classmethod
    def from_tokenizer(cls, tokenizer, *, prefix: str = "Which response answers the prompt better?\n"
                       "Prompt: ", before_a: str = "\nResponse A: ", before_b: str = "\nResponse B: ",
                       question: str = "\nThe better response is Response", answer_a: str = " A",
                       answer_b: str = " B") -> "JudgeTemplate":
        """Build from any tokenizer with encode(str) (returning ids, or an object with .ids)."""
        def enc(s):
            out = tokenizer.encode(s, add_special_tokens=False) if _accepts_special(tokenizer) \
                else tokenizer.encode(s)
            return tuple(int(i) for i in getattr(out, "ids", out))
        ids_a, ids_b = enc(answer_a), enc(answer_b)
        if not ids_a or not ids_b:
            raise ValueError("answer_a / answer_b encode to no tokens")
        # the answer token is the last one of " A" / " B" (a single token in BPE vocabularies); a tokenizer
        # that starts every text with BOS (Gemma) gets it in front of the judge prompt
        bos = (int(tokenizer.bos_id),) if getattr(tokenizer, "add_bos", False) and \
            getattr(tokenizer, "bos_id", None) is not None else ()
        return cls(bos + enc(prefix), enc(before_a), enc(before_b), enc(question), ids_a[-1], ids_b[-1])


def _accepts_special(tokenizer) -> bool:
    import inspect
    try:
        return "add_special_tokens" in inspect.signature(tokenizer.encode).parameters
    except (TypeError, ValueError):
        return False


def build_judge_input(template: JudgeTemplate, prompt: Tokens, first: Tokens, second: Tokens):
    """Concatenate [prefix | prompt | before_a | first | before_b | second | question] with padding holes.

    Returns (tokens [B, T], attention_mask [B, T], positions [B, T]); positions count real tokens only, so
    the holes left by padding are invisible to a model that honours attention_mask and positions.
    """
    B = prompt.tokens.shape[0]

    def const(ids):
        ids = jnp.asarray(np.asarray(ids, np.int32).reshape(1, -1))
        return Tokens(jnp.broadcast_to(ids, (B, ids.shape[1])), jnp.ones((B, ids.shape[1]), bool))

    parts = [const(template.prefix), prompt, const(template.before_a), first, const(template.before_b),
             second, const(template.question)]
    parts = [p for p in parts if p.tokens.shape[1] > 0]
    tokens = jnp.concatenate([p.tokens.astype(jnp.int32) for p in parts], axis=1)
    mask = jnp.concatenate([p.mask.astype(bool) for p in parts], axis=1)
    tokens = jnp.where(mask, tokens, 0)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
    return tokens, mask, positions


class JudgeOracle(PreferenceOracle):
    """An LLM judge. `model(tokens, positions=, attention_mask=)` returns logits [B, T, V] (or a tuple whose
    first element is the logits), e.g. a wind_jax.models.Transformer.

    p_first(a, b) = sigmoid(logit[answer_a] - logit[answer_b]) at the last position with a shown first;
    P(a beats b) = (p_first(a, b) + 1 - p_first(b, a)) / 2, hence P(a, b) + P(b, a) = 1.
    Inputs are left-padded (masked) to a multiple of `pad_to` (default: 128 for splash attention, else 1).
    """

    name = "judge"

    def __init__(self, model, template: JudgeTemplate, *, batch_size: int | None = None,
                 max_length: int | None = None, mesh=None, pad_to: int | None = None):
        super().__init__()
        self.pad_to = pad_to or length_multiple(model)   # judge inputs left-padded to a multiple of this
        self.template = template
        self.batch_size = batch_size
        config = getattr(model, "config", None)
        self.max_length = max_length or getattr(config, "max_position_embeddings", None)
        self._forward = _make_forward(model)
        self._on_mesh = None if mesh is None else FrozenForward(model, judge_first_choice_fn(template), mesh,
                                                                  num_inputs=3)

    def first_choice_prob(self, prompt: Tokens, first: Tokens, second: Tokens) -> jax.Array:
        """P(judge answers the first-shown response), float32 [B], one presentation order. An input longer
        than the judge's context (`max_length` real tokens) is refused: a truncated prompt would be judged
        on text the judge never saw."""
        tokens, mask, positions = build_judge_input(self.template, prompt, first, second)
        if self.max_length:
            longest = int(np.max(np.asarray(mask).sum(axis=1)))
            if longest > self.max_length:
                raise ValueError(f"judge input of {longest} tokens exceeds the judge's context of "
                                 f"{self.max_length} tokens (shorten prompts / max_new_tokens, or set "
                                 f"config.real.judge_max_tokens)")
        if self.pad_to > 1:  # left padding keeps the question's last token in the last column
            tokens, mask, positions = (_pad_columns(x, self.pad_to, left=True) for x in (tokens, mask, positions))
        if self._on_mesh is not None:
            return jnp.asarray(self._on_mesh(tokens, mask, positions))
        logits = self._forward(tokens, mask, positions)
        last = logits[:, -1, :].astype(jnp.float32)
        return jax.nn.sigmoid(last[:, self.template.answer_a] - last[:, self.template.answer_b])

    def _prob(self, prompt, a, b):
        B = a.tokens.shape[0]
        step = self.batch_size or B
        out = []
        for s in range(0, B, step):
            sl = slice(s, s + step)
            p, x, y = (Tokens(t.tokens[sl], t.mask[sl]) for t in (prompt, a, b))
            out.append(0.5 * (self.first_choice_prob(p, x, y) + 1.0 - self.first_choice_prob(p, y, x)))
        return jnp.concatenate(out)


class RetokenizingOracle(PreferenceOracle):
    """`oracle` (e.g. a JudgeOracle) reads another vocabulary than the policy: every prompt and response is
    decoded with the policy's tokenizer `source` (special tokens, hence the chat template's markers, dropped)
    and encoded with the oracle's tokenizer `target` (no BOS: the judge template carries it); prompts are
    left-padded, responses right-padded, each to the batch's longest. Still one query per pair, counted here."""

    def __init__(self, oracle: PreferenceOracle, source, target):
        super().__init__()
        self.oracle, self.source, self.target = oracle, source, target
        self.name = oracle.name

    def convert(self, t: Tokens, *, left: bool) -> Tokens:
        """The same texts as `t` in the target vocabulary, [B, T'] (T' >= 1)."""
        rows = [self.target.encode(self.source.decode(np.asarray(ids)[np.asarray(m, bool)].tolist()),
                                   add_special_tokens=False) for ids, m in zip(t.tokens, t.mask)]
        width = max([1, *map(len, rows)])
        tokens, mask = np.zeros((len(rows), width), np.int32), np.zeros((len(rows), width), bool)
        for i, ids in enumerate(rows):
            cols = slice(width - len(ids), width) if left else slice(0, len(ids))
            tokens[i, cols], mask[i, cols] = ids, True
        return Tokens(tokens, mask)

    def _prob(self, prompt, a, b):
        return self.oracle.probability(self.convert(prompt, left=True), self.convert(a, left=False),
                                       self.convert(b, left=False), count=False)


def llm_judge(model, tokenizer, policy_tokenizer, **kwargs) -> PreferenceOracle:
    """A JudgeOracle of `model` (kwargs: JudgeOracle's) with its template in its own vocabulary; when its
    tokenizer is not the policy's, it reads the texts through a RetokenizingOracle, its inputs left-padded to
    a multiple of 64 tokens (few shapes to compile)."""
    probe = "Which response answers the prompt better? 12 + 7 = 19."
    same = tokenizer is policy_tokenizer or (
        getattr(tokenizer, "vocab_size", None) == getattr(policy_tokenizer, "vocab_size", None)
        and tokenizer.encode(probe, add_special_tokens=False)
        == policy_tokenizer.encode(probe, add_special_tokens=False))
    if same:
        return JudgeOracle(model, JudgeTemplate.from_tokenizer(tokenizer), **kwargs)
    judge = JudgeOracle(model, JudgeTemplate.from_tokenizer(tokenizer), **{"pad_to": 64, **kwargs})
    return RetokenizingOracle(judge, policy_tokenizer, tokenizer)


def judge_first_choice_fn(template: JudgeTemplate):
    """fn(model, tokens, mask, positions) -> P(the judge answers the first-shown response) [B] float32, from
    the logits of the last position only (a Transformer's lm head runs on that position alone)."""
    def fn(model, tokens, mask, positions):
        if hasattr(model, "hidden") and hasattr(model, "logits_from_hidden"):
            h = model.hidden(tokens, positions=positions, attention_mask=mask)
            last = model.logits_from_hidden(h[:, -1:])[:, 0]
        else:
            out = model(tokens, positions=positions, attention_mask=mask)
            last = (out[0] if isinstance(out, tuple) else out)[:, -1]
        last = last.astype(jnp.float32)
        return jax.nn.sigmoid(last[:, template.answer_a] - last[:, template.answer_b])
    return fn


def _make_forward(model):
    """Jitted logits function of (tokens, mask, positions); NNX modules are split once."""
    try:
        from flax import nnx
        if isinstance(model, nnx.Module):
            graphdef, state = nnx.split(model)

            @jax.jit
            def fwd_nnx(state, tokens, mask, positions):
                m = nnx.merge(graphdef, state)
                out = m(tokens, positions=positions, attention_mask=mask)
                return out[0] if isinstance(out, tuple) else out

            return lambda t, m, p: fwd_nnx(state, t, m, p)
    except ImportError:  # pragma: no cover
        pass

    def fwd(tokens, mask, positions):
        out = model(tokens, positions=positions, attention_mask=mask)
        return out[0] if isinstance(out, tuple) else out

    return fwd


def pairwise_probabilities(oracle: PreferenceOracle, prompt: Tokens, responses: Sequence[Tokens]):
    """K x K preference matrix per prompt: P[b, i, j] = P(y_i beats y_j), diagonal 1/2, P + P^T = 1.

    ONE oracle call over the K (K - 1) / 2 pairs i < j (each counted once); the rest follows by symmetry.
    """
    from wind_jax.methods import round_robin, win_matrix
    K = len(responses)
    if K < 2:
        raise ValueError(f"need at least 2 responses per prompt, got {K}")
    B = prompt.tokens.shape[0]
    pairs = round_robin(K)
    rep = lambda t: jnp.tile(t, (len(pairs), 1))  # noqa: E731
    a = Tokens(jnp.concatenate([responses[i].tokens for i, _ in pairs]),
               jnp.concatenate([responses[i].mask for i, _ in pairs]))
    b = Tokens(jnp.concatenate([responses[j].tokens for _, j in pairs]),
               jnp.concatenate([responses[j].mask for _, j in pairs]))
    p = oracle.probability(Tokens(rep(prompt.tokens), rep(prompt.mask)), a, b).reshape(len(pairs), B)
    return win_matrix(p.T, K)

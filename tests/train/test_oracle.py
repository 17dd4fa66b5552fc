"""wind_jax.train.oracle and wind_jax.train.synthetic: gold preference formula (NumPy float64 reference),
non-transitivity, judge symmetry P(a,b) + P(b,a) = 1, padding invariance, query counting."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wind_jax.models import LlamaConfig, Transformer
from wind_jax.train.oracle import (GoldOracle, HeadOracle, JudgeOracle, JudgeTemplate, Tokens,
                                   build_judge_input, pairwise_probabilities)
from wind_jax.train.synthetic import EOS, FIRST_CONTENT, SyntheticLanguage

LANG = SyntheticLanguage()


def _np_gold(lang, prompt, a, ma, b, mb):
    """Independent float64 re-derivation of the module docstring's formula, one example at a time."""
    u = np.zeros(lang.vocab_size)
    u[FIRST_CONTENT:] = lang.reward_scale * np.random.default_rng(lang.seed).standard_normal(
        lang.num_content)
    C = np.array([[0, 1, -1], [-1, 0, 1], [1, -1, 0]], float)

    def content(y, m):
        return [int(t) for t, k in zip(y, m) if k and t >= FIRST_CONTENT]

    def r(x, y):
        c = content(*y)
        if not c:
            return lang.empty_reward
        return np.mean([u[t] + lang.match_bonus * (t in set(x.tolist())) for t in c])

    def h(y):
        c = content(*y)
        out = np.zeros(3)
        for t in c:
            out[t % 3] += 1
        return out / max(len(c), 1)

    logit = r(prompt, (a, ma)) - r(prompt, (b, mb)) + lang.nontransitive_strength * h((a, ma)) @ C @ h((b, mb))
    return 1.0 / (1.0 + np.exp(-logit))


def _samples(lang, seed, n):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    x = lang.sample_prompts(k1, n)
    a, ma = lang.sample_reference_responses(k2, x)
    b, mb = lang.sample_reference_responses(k3, x)
    return x, a, ma, b, mb


def test_reference_responses_are_well_formed():
    x, a, ma, _, _ = _samples(LANG, 0, 64)  # 64 rows in most tests: fewer compiles
    a, ma = np.asarray(a), np.asarray(ma)
    assert x.shape == (64, LANG.prompt_width) and a.shape == (64, LANG.response_width)
    lengths = ma.sum(1) - 1  # content tokens; the mask also covers the EOS
    assert lengths.min() >= LANG.min_response_len and lengths.max() <= LANG.max_response_len
    assert (a[np.arange(64), lengths] == EOS).all()
    assert ((a >= FIRST_CONTENT) == (np.arange(a.shape[1])[None] < lengths[:, None])).all()


def test_gold_preference_matches_float64_reference_and_is_antisymmetric():
    x, a, ma, b, mb = _samples(LANG, 1, 64)
    ma = ma.at[0].set(False)  # an empty response takes the empty_reward branch
    p = np.asarray(LANG.gold_preference(x, a, ma, b, mb))
    ref = np.array([_np_gold(LANG, *(np.asarray(t[i]) for t in (x, a, ma, b, mb))) for i in range(64)])
    np.testing.assert_allclose(p, ref, atol=1e-5)
    q = np.asarray(LANG.gold_preference(x, b, mb, a, ma))
    np.testing.assert_allclose(p + q, 1.0, atol=1e-6)


def test_gold_preference_is_non_transitive():
    lang = SyntheticLanguage(reward_scale=0.0, match_bonus=0.0, nontransitive_strength=3.0)
    # responses made of a single class each: tokens 3 (class 0), 4 (class 1), 5 (class 2)
    x = jnp.full((3, lang.prompt_width), 1, jnp.int32)
    resp = [jnp.array([[t, t, EOS]] * 3, jnp.int32) for t in (3, 4, 5)]
    m = jnp.ones((3, 3), bool)
    p01 = lang.gold_preference(x, resp[0], m, resp[1], m)[0]
    p12 = lang.gold_preference(x, resp[1], m, resp[2], m)[0]
    p20 = lang.gold_preference(x, resp[2], m, resp[0], m)[0]
    expected = 1 / (1 + np.exp(-3.0))
    np.testing.assert_allclose([p01, p12, p20], [expected] * 3, rtol=1e-6)  # a cycle: 0 > 1 > 2 > 0


def test_gold_oracle_counts_and_bernoulli_outcomes_match_probability():
    x, a, ma, b, mb = _samples(LANG, 2, 4096)
    oracle = GoldOracle(LANG.gold_preference)
    pref = oracle.prefer(Tokens(x, jnp.ones_like(x, bool)), Tokens(a, ma), Tokens(b, mb), jax.random.key(0))
    assert oracle.num_queries == 4096
    p, o = np.asarray(pref.prob), np.asarray(pref.outcome)
    assert set(np.unique(o)) <= {0.0, 1.0}
    # E[outcome - p] = 0; 5-sigma band from the Bernoulli variances
    sd = np.sqrt((p * (1 - p)).sum()) / len(p)
    assert abs((o - p).mean()) < 5 * sd
    with pytest.raises(ValueError, match="resp_a"):
        oracle.prefer(Tokens(x, x > 0), Tokens(a[:3], ma[:3]), Tokens(b, mb))


def test_head_oracle_symmetrized_and_from_reward():
    x, a, ma, b, mb = _samples(LANG, 3, 64)
    X, A, B = Tokens(x, x > 0), Tokens(a, ma), Tokens(b, mb)
    lopsided = HeadOracle(lambda p, s, t: jax.nn.sigmoid(0.3 + s.mask.sum(1) - t.mask.sum(1)))
    np.testing.assert_allclose(lopsided.probability(X, A, B) + lopsided.probability(X, B, A), 1.0,
                               atol=1e-6)
    r = lambda p, s: LANG.gold_reward(p.tokens, s.tokens, s.mask)  # noqa: E731
    bt = HeadOracle.from_reward(r)
    np.testing.assert_allclose(bt.probability(X, A, B),
                               jax.nn.sigmoid(r(X, A) - r(X, B)), atol=1e-6)


def test_pairwise_probabilities_matrix():
    x, a, ma, b, mb = _samples(LANG, 4, 64)
    _, c, mc, _, _ = _samples(LANG, 5, 64)
    oracle = GoldOracle(LANG.gold_preference)
    X = Tokens(x, x > 0)
    P = np.asarray(pairwise_probabilities(oracle, X, [Tokens(a, ma), Tokens(b, mb), Tokens(c, mc)]))
    assert oracle.num_queries == 64 * 3
    np.testing.assert_allclose(P + P.transpose(0, 2, 1), 1.0, atol=1e-6)
    np.testing.assert_allclose(P[:, 0, 2], LANG.gold_preference(x, a, ma, c, mc), atol=1e-6)


def _judge():
    cfg = LlamaConfig.tiny(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    template = JudgeTemplate(prefix=(1, 7), before_a=(8,), before_b=(9,), question=(10, 11),
                             answer_a=12, answer_b=13)
    return model, template


def test_judge_symmetry_and_padding_invariance():
    model, template = _judge()
    judge = JudgeOracle(model, template, batch_size=6)  # two chunks of 6
    x, a, ma, b, mb = _samples(LANG, 6, 12)
    X, A, B = Tokens(x, x > 0), Tokens(a, ma), Tokens(b, mb)
    pab, pba = judge.probability(X, A, B), judge.probability(X, B, A)
    assert judge.num_queries == 24
    np.testing.assert_allclose(pab + pba, 1.0, atol=1e-6)
    assert np.ptp(np.asarray(pab)) > 1e-4, "a random judge should not be constant"

    # reference: each example's judge input built WITHOUT padding holes (compact token lists), run in one
    # batch right-padded to a common length; causal attention makes the logits at each sequence's own last
    # position independent of what follows it, so no mask or position logic of the judge is reused.
    def compact(i, first, second):
        return (list(template.prefix) + np.asarray(x[i]).tolist() + list(template.before_a)
                + np.asarray(first[0][i])[np.asarray(first[1][i])].tolist() + list(template.before_b)
                + np.asarray(second[0][i])[np.asarray(second[1][i])].tolist() + list(template.question))
    seqs = [compact(i, (a, ma), (b, mb)) for i in range(12)] + [compact(i, (b, mb), (a, ma)) for i in range(12)]
    width = max(map(len, seqs))
    padded = jnp.asarray([s + [0] * (width - len(s)) for s in seqs], jnp.int32)
    logits = np.asarray(model(padded)[0], np.float64)
    last = logits[np.arange(24), [len(s) - 1 for s in seqs]]
    p_first = 1 / (1 + np.exp(-(last[:, template.answer_a] - last[:, template.answer_b])))
    ref = 0.5 * (p_first[:12] + 1 - p_first[12:])
    np.testing.assert_allclose(np.asarray(pab), ref, atol=1e-5)


def test_judge_template_from_tokenizer_and_validation():
    class Tok:
        def encode(self, s):
            return [ord(c) for c in s]
    t = JudgeTemplate.from_tokenizer(Tok(), question="?", answer_a=" A", answer_b=" B")
    assert (t.question, t.answer_a, t.answer_b) == ((ord("?"),), ord("A"), ord("B"))
    with pytest.raises(ValueError, match="answer_a and answer_b"):
        JudgeTemplate.from_tokenizer(Tok(), answer_a="A", answer_b="A")
    with pytest.raises(ValueError, match="question"):
        JudgeTemplate((), (), (), (), 1, 2)


def test_judge_refuses_inputs_beyond_its_context():
    """A judge input longer than the judge's context is an error naming both lengths (not a silent truncation)."""
    model, template = _judge()
    x, a, ma, b, mb = _samples(LANG, 7, 4)
    X, A, B = Tokens(x, x > 0), Tokens(a, ma), Tokens(b, mb)
    longest = int(np.max(np.asarray(build_judge_input(template, X, A, B)[1]).sum(1)))
    JudgeOracle(model, template, max_length=longest).probability(X, A, B)   # fits exactly
    with pytest.raises(ValueError, match=f"{longest} tokens exceeds the judge's context of {longest - 1}"):
        JudgeOracle(model, template, max_length=longest - 1).probability(X, A, B)
    assert JudgeOracle(model, template).max_length == model.config.max_position_embeddings


def _device_bytes(state, device):
    return sum(s.data.nbytes for x in jax.tree.leaves(state) for s in x.addressable_shards if s.device == device)


def test_judge_and_reward_model_on_a_mesh_match_one_device():
    """On a (2, 2, 2) mesh of the 8 fake devices the judge holds at most 1/4 of its parameter bytes per device
    and judges as the one-device judge does (1e-5); the reward model likewise against reward_prob_fn."""
    from wind_jax import sharding
    from wind_jax.models.heads import RewardHead

    mesh = sharding.make_mesh((2, 2, 2))
    model, template = _judge()
    x, a, ma, b, mb = _samples(LANG, 8, 12)   # 12 rows: padded to the 4 batch shards' multiple inside
    X, A, B = Tokens(x, x > 0), Tokens(a, ma), Tokens(b, mb)
    sharded = JudgeOracle(model, template, batch_size=6, mesh=mesh)   # chunks of 6, each padded to 8 rows
    state = sharded._on_mesh.state
    total = sum(x.nbytes for x in jax.tree.leaves(state))
    per_device = [_device_bytes(state, d) for d in mesh.devices.flat]
    assert max(per_device) <= total / 4, (max(per_device), total)
    second = sharded.with_new_counter()   # e.g. the evaluation judge: the same placed parameters, own count
    assert second._on_mesh is sharded._on_mesh and second.num_queries == 0
    want = np.asarray(JudgeOracle(model, template).probability(X, A, B))
    np.testing.assert_allclose(np.asarray(sharded.probability(X, A, B)), want, atol=1e-5)
    assert (sharded.num_queries, second.num_queries) == (12, 0)
    # inputs padded to a length multiple (what splash attention needs) are masked: the same probabilities
    np.testing.assert_allclose(np.asarray(JudgeOracle(model, template, pad_to=64).probability(X, A, B)), want,
                               atol=1e-5)
    assert np.ptp(want) > 1e-4

    head = RewardHead(model.config, rngs=nnx.Rngs(3))
    on_mesh = HeadOracle.from_reward_head(head, mesh=mesh, pad_to=32)   # [prompt | response] padded to 32k
    one = HeadOracle.from_reward_head(head)
    p = np.asarray(on_mesh.probability(X, A, B))
    np.testing.assert_allclose(p, np.asarray(one.probability(X, A, B)), atol=1e-5)
    assert np.ptp(p) > 1e-4 and on_mesh.num_queries == 12
    with pytest.raises(ValueError, match="RewardHead"):
        HeadOracle.from_reward_head(model, mesh=mesh)


class _CharTokenizer:
    """Characters as ids from `offset` (two offsets = two vocabularies); `special` ids decode to nothing."""

    def __init__(self, offset, special=(), add_bos=False, bos_id=None):
        self.offset, self.special, self.add_bos, self.bos_id = offset, set(special), add_bos, bos_id
        self.vocab_size = offset + 256

    def encode(self, text, add_special_tokens=True):
        ids = [ord(ch) + self.offset for ch in text]
        return ([self.bos_id] if self.add_bos and add_special_tokens else []) + ids

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i - self.offset) for i in ids if i not in self.special)


def test_retokenizing_oracle_feeds_the_texts_in_the_oracles_vocabulary():
    """The wrapped oracle sees the policy's texts re-encoded (prompts left-, responses right-padded, the
    policy's special tokens dropped); one query per pair is counted by the wrapper only."""
    from wind_jax.train.oracle import RetokenizingOracle
    source, target = _CharTokenizer(0, special={7}), _CharTokenizer(300)
    seen = []

    def prob(p, a, b):  # prefers the response whose text holds more "y" (in the target vocabulary only)
        seen.append((p, a, b))
        y = ord("y") + 300
        count = lambda t: (np.asarray(t.tokens) == y).sum(1) * np.asarray(t.mask).any(1)  # noqa: E731
        return 1 / (1 + np.exp(-(count(a) - count(b)).astype(np.float64)))

    inner = HeadOracle(prob, symmetrize=False)
    oracle = RetokenizingOracle(inner, source, target)

    def batch(texts, width, left):
        t, m = np.zeros((len(texts), width), np.int32), np.zeros((len(texts), width), bool)
        for i, s in enumerate(texts):
            ids = source.encode(s) + [7]  # an end-of-turn special token inside the mask
            cols = slice(width - len(ids), width) if left else slice(0, len(ids))
            t[i, cols], m[i, cols] = ids, True
        return Tokens(t, m)

    X = batch(["ab?", "question"], 12, left=True)
    A, B = batch(["yy", "no"], 6, left=False), batch(["y", "yyy"], 6, left=False)
    p = np.asarray(oracle.probability(X, A, B))
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-np.array([1.0, -3.0]))), rtol=1e-6)
    assert oracle.num_queries == 2 and inner.num_queries == 0
    px, pa, _ = seen[0]
    assert target.decode(np.asarray(px.tokens[0])[np.asarray(px.mask[0])]) == "ab?"
    assert np.asarray(px.mask)[0].tolist() == [False] * 5 + [True] * 3       # left-padded to "question"
    assert np.asarray(pa.mask)[1].tolist() == [True, True]                   # right-padded, no special token
    assert np.asarray(pa.tokens).min() >= 300                                # target ids only


def test_llm_judge_wraps_a_judge_of_another_vocabulary():
    from wind_jax.train.oracle import RetokenizingOracle, llm_judge
    model, _ = _judge()
    same = _CharTokenizer(0)
    assert isinstance(llm_judge(model, same, same), JudgeOracle)
    other = _CharTokenizer(1, add_bos=True, bos_id=2)
    judge = llm_judge(model, other, same)
    assert isinstance(judge, RetokenizingOracle) and judge.oracle.pad_to == 64
    assert judge.oracle.template.prefix[:2] == (2, ord("W") + 1)               # BOS, then "Which ..."

"""wind_jax.sampling: cached decode vs teacher forcing, chi-square frequencies, greedy, EOS, padding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from wind_jax.models import LlamaConfig, Transformer, sequence_logprobs
from wind_jax.sampling import process_logits, sample

CONFIG = LlamaConfig.tiny(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                          num_kv_heads=2, initializer_range=0.08)
PROMPTS = np.array([[0, 0, 0, 5, 9, 11], [7, 3, 8, 2, 6, 4]])
PROMPT_MASK = np.array([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]], bool)


@pytest.fixture(scope="module")
def model():
    return Transformer(CONFIG, rngs=nnx.Rngs(0))


@jax.jit(static_argnums=0)
def _logits(graphdef, state, tokens, mask):
    return nnx.merge(graphdef, state)(tokens, attention_mask=mask)[0]


def logits_of(model, tokens, mask=None):
    graphdef, state = nnx.split(model)
    return np.asarray(_logits(graphdef, state, jnp.asarray(tokens), None if mask is None else jnp.asarray(mask)))


def flat(x):
    return x.reshape((-1,) + x.shape[2:])


def test_cached_logprobs_equal_teacher_forced_forward(model):
    out = sample(model, PROMPTS, PROMPT_MASK, jax.random.key(0), num_samples=3, max_new_tokens=10,
                 eos_token_id=(1, 2), pad_token_id=0)
    assert out.tokens.shape == (2, 3, 16) and out.logprobs.shape == (2, 3)
    ref = nnx.jit(sequence_logprobs)(model, flat(out.tokens), flat(out.response_mask), flat(out.attention_mask))
    np.testing.assert_allclose(np.asarray(out.logprobs).reshape(-1), np.asarray(ref), atol=1e-5, rtol=0)
    # temperature 1, no truncation: the sampling distribution is the policy
    np.testing.assert_allclose(out.sample_logprobs, out.logprobs, atol=1e-5)
    # masks partition the real tokens; the prompt is repeated for each sample
    assert not np.any(np.asarray(out.prompt_mask & out.response_mask))
    np.testing.assert_array_equal(out.tokens[:, :, :6], np.broadcast_to(PROMPTS[:, None], (2, 3, 6)))
    np.testing.assert_array_equal(out.lengths, np.asarray(out.response_mask).sum(-1))


def test_eos_then_pad_and_mask(model):
    out = sample(model, PROMPTS, PROMPT_MASK, jax.random.key(1), num_samples=16, max_new_tokens=12,
                 eos_token_id=(1, 2, 3, 4), pad_token_id=0)
    tok, rm = np.asarray(flat(out.tokens))[:, 6:], np.asarray(flat(out.response_mask))[:, 6:]
    saw_eos = 0
    for row_tok, row_mask in zip(tok, rm):
        n = row_mask.sum()
        assert row_mask[:n].all() and not row_mask[n:].any()  # response is a prefix
        assert (row_tok[n:] == 0).all()
        eos_at = np.nonzero(np.isin(row_tok[:n], [1, 2, 3, 4]))[0]
        if n < 12:  # stopped early: exactly one EOS, the last response token
            saw_eos += 1
            assert list(eos_at) == [n - 1]
        else:
            assert len(eos_at) <= 1 and (len(eos_at) == 0 or eos_at[0] == 11)
    assert saw_eos > 0  # 4 of 64 tokens end the sequence: some of the 32 rows stop early


def chi_square_pvalue(counts, probs):
    """Pearson chi-square goodness of fit; bins with expected count < 5 are pooled."""
    expected = probs * counts.sum()
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    assert np.all(obs[~keep] == 0), "sampled a token of probability zero"
    return stats.chisquare(obs[keep], exp[keep]).pvalue


def softmax64(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 12, 0.8)])
def test_first_token_frequencies_match_distribution(model, temperature, top_k, top_p):
    n = 20000
    prompt, mask = PROMPTS[1:], PROMPT_MASK[1:]
    out = sample(model, prompt, mask, jax.random.key(2), num_samples=n, max_new_tokens=1,
                 temperature=temperature, top_k=top_k, top_p=top_p)
    first = np.asarray(out.tokens[0, :, 6])
    counts = np.bincount(first, minlength=CONFIG.vocab_size)
    # independent float64 construction of the target distribution
    z = logits_of(model, prompt, mask)[0, -1].astype(np.float64) / temperature
    if top_k:
        z = np.where(z >= np.sort(z)[-top_k], z, -np.inf)
    p = softmax64(z)
    if top_p < 1:
        order = np.argsort(-p)
        before = np.cumsum(p[order]) - p[order]
        keep = np.zeros_like(p, bool)
        keep[order[before < top_p]] = True
        p = np.where(keep, p, 0.0)
        p = p / p.sum()
    assert chi_square_pvalue(counts, p) > 1e-3
    # the reported log-probs are per-token values of the respective distributions
    policy = np.log(softmax64(logits_of(model, prompt, mask)[0, -1]))
    np.testing.assert_allclose(out.logprobs[0], policy[first], atol=1e-5)
    np.testing.assert_allclose(out.sample_logprobs[0], np.log(p[first]), atol=1e-4)


def test_process_logits_truncation_properties():
    logits = jax.random.normal(jax.random.key(3), (4, 50)) * 3
    z = process_logits(logits, 1.0, 5, 1.0)
    assert np.all(np.isfinite(np.asarray(z)).sum(-1) == 5)
    np.testing.assert_array_equal(process_logits(logits, 2.0, 0, 1.0), logits / 2.0)  # both off
    z = process_logits(logits, 1.0, 0, 0.5)
    p = np.asarray(jax.nn.softmax(logits))
    kept = np.isfinite(np.asarray(z))
    mass = (p * kept).sum(-1)
    smallest_kept = np.where(kept, p, np.inf).min(-1)
    assert np.all(mass >= 0.5) and np.all(mass - smallest_kept < 0.5)  # minimal nucleus


def test_greedy_equals_uncached_argmax_and_padding_invariance(model):
    out = sample(model, PROMPTS, PROMPT_MASK, jax.random.key(4), num_samples=2, max_new_tokens=7, greedy=True)
    np.testing.assert_array_equal(out.tokens[:, 0], out.tokens[:, 1])
    np.testing.assert_array_equal(out.sample_logprobs, 0.0)
    for b in range(2):  # plain argmax decoding, full forward on the unpadded prompt each step, no cache
        seq = list(PROMPTS[b][PROMPT_MASK[b]])
        for _ in range(7):  # fixed-size right-padded buffer: one compile, positions from the mask
            buf, mask = np.zeros((1, 13), int), np.arange(13)[None] < len(seq)
            buf[0, :len(seq)] = seq
            seq.append(int(np.argmax(logits_of(model, buf, mask)[0, len(seq) - 1])))
        real = np.asarray(out.attention_mask[b, 0])
        np.testing.assert_array_equal(np.asarray(out.tokens[b, 0])[real], seq)
    # a prompt padded further on the left gives the same continuation and log-prob
    padded = np.concatenate([np.zeros((2, 3), int), PROMPTS], 1)
    pmask = np.concatenate([np.zeros((2, 3), bool), PROMPT_MASK], 1)
    out2 = sample(model, padded, pmask, jax.random.key(4), num_samples=1, max_new_tokens=7, greedy=True)
    np.testing.assert_array_equal(out2.tokens[:, 0, 9:], out.tokens[:, 0, 6:])
    np.testing.assert_allclose(out2.logprobs[:, 0], out.logprobs[:, 0], atol=1e-5)


def test_reproducible_from_key(model):
    kw = dict(num_samples=4, max_new_tokens=6, top_k=20)
    a = sample(model, PROMPTS, PROMPT_MASK, jax.random.key(5), **kw)
    b = sample(model, PROMPTS, PROMPT_MASK, jax.random.key(5), **kw)
    c = sample(model, PROMPTS, PROMPT_MASK, jax.random.key(6), **kw)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.tokens, c.tokens)
    assert len({tuple(r) for r in np.asarray(flat(a.tokens))}) > 2  # samples per prompt differ


def test_bad_input(model):
    with pytest.raises(ValueError, match="LEFT-padded"):
        sample(model, PROMPTS, PROMPT_MASK[:, ::-1], jax.random.key(0))
    with pytest.raises(ValueError, match="temperature"):
        sample(model, PROMPTS, PROMPT_MASK, jax.random.key(0), temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        sample(model, PROMPTS, PROMPT_MASK, jax.random.key(0), top_p=1.5)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        sample(model, PROMPTS, PROMPT_MASK, jax.random.key(0), max_new_tokens=10_000)
    with pytest.raises(ValueError, match="eos_token_id"):
        sample(model, PROMPTS, PROMPT_MASK, jax.random.key(0), eos_token_id=CONFIG.vocab_size)


def test_sampling_settings_are_traced_not_recompiled(model):
    from wind_jax.sampling import _generate_jit

    kw = dict(num_samples=2, max_new_tokens=4, eos_token_id=1)
    before = _generate_jit._cache_size()
    greedy = sample(model, PROMPTS, PROMPT_MASK, jax.random.key(7), greedy=True, **kw)
    after_first = _generate_jit._cache_size()
    for settings in [dict(), dict(temperature=0.5), dict(top_k=3), dict(top_p=0.7), dict(greedy=True)]:
        out = sample(model, PROMPTS, PROMPT_MASK, jax.random.key(7), **settings, **kw)
    assert after_first == before + 1 and _generate_jit._cache_size() == after_first  # one compile in all
    for x, y in zip(out, greedy):  # and the last (greedy) call reproduces the first
        np.testing.assert_array_equal(x, y)


def test_sampling_on_a_mesh_matches_one_device(model):
    from wind_jax import sharding
    from wind_jax.sampling import sample_state

    graphdef, state = nnx.split(model)
    mesh = sharding.make_mesh((2, 2, 2))
    sharded = sharding.shard_state(state, mesh)
    prompts = np.concatenate([PROMPTS, PROMPTS[::-1]])
    pmask = np.concatenate([PROMPT_MASK, PROMPT_MASK[::-1]])
    kw = dict(num_samples=3, max_new_tokens=5, eos_token_id=(1, 2))
    want = sample_state(graphdef, state, prompts, pmask, jax.random.key(8), greedy=True, **kw)
    got = sample_state(graphdef, sharded, prompts, pmask, jax.random.key(8), greedy=True, mesh=mesh, **kw)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)
    assert got.tokens.sharding.spec[0] == ("data", "fsdp")  # rows stay split over the batch axes
    sampled = sample_state(graphdef, sharded, prompts, pmask, jax.random.key(8), mesh=mesh, **kw)
    ref = nnx.jit(sequence_logprobs)(model, flat(sampled.tokens), flat(sampled.response_mask),
                                     flat(sampled.attention_mask))
    np.testing.assert_allclose(np.asarray(sampled.logprobs).reshape(-1), np.asarray(ref), atol=1e-5)


def test_jit_decode_step_shards_and_donates_the_cache(model):
    from wind_jax import sharding
    from wind_jax.sampling import cache_specs, jit_decode_step

    graphdef, state = nnx.split(model)
    mesh = sharding.make_mesh((2, 2, 2))
    rows, slots = 4, 8
    cache = model.init_cache(rows, slots)
    tokens = jnp.asarray([3, 5, 7, 9], jnp.int32)
    alive = jnp.ones((rows,), bool)
    want, _ = _decode_once(graphdef, state, cache, tokens, alive)
    step = jit_decode_step(graphdef, state, cache, mesh)
    specs = cache_specs(mesh, cache)
    assert specs["k"] == jax.sharding.PartitionSpec(None, ("data", "fsdp"), None, "tensor", None)
    sharded_cache = {k: jax.device_put(v, jax.sharding.NamedSharding(mesh, specs[k])) for k, v in cache.items()}
    logits, new_cache = step(sharding.shard_state(state, mesh), sharded_cache, tokens, alive)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(want), atol=1e-5)
    assert new_cache["k"].sharding.spec == specs["k"] and int(new_cache["index"]) == 1
    assert sharded_cache["k"].is_deleted()  # donated: updated in place


@jax.jit(static_argnums=0)
def _decode_once(graphdef, state, cache, tokens, alive):
    return nnx.merge(graphdef, state)(tokens[:, None], attention_mask=alive[:, None], cache=cache)[0][:, -1], None

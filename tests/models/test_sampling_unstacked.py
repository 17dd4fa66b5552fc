"""sample(..., unstack_layers=True): the decode loop over per-layer weights sliced once (opt-in) against the
default lax.scan over the stacked weights. Same math, different fusion: the greedy tokens agree and the
summed log-probs within 1e-4 (float32; measured differences ~1e-6 here), for a uniform and a mixed
(sliding-window / global) decoder."""
import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from wind_jax.models import LlamaConfig, Transformer
from wind_jax.sampling import sample

# the opt-in decode path (unstack_layers=True): ~25 s of compilation, so in the slow suite
pytestmark = pytest.mark.slow

CONFIG = LlamaConfig.tiny(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4,
                          num_kv_heads=2, initializer_range=0.08)
PROMPTS = np.array([[0, 0, 0, 5, 9, 11], [7, 3, 8, 2, 6, 4]])
PROMPT_MASK = np.array([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]], bool)


@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("greedy", [True, False])
def test_unstacked_decode_matches_scanned(mixed, greedy):
    cfg = CONFIG
    if mixed:
        cfg = dataclasses.replace(cfg, sliding_window=3, layer_types=("sliding_attention", "full_attention",
                                                                      "sliding_attention"))
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    kw = dict(num_samples=2, max_new_tokens=8, greedy=greedy, eos_token_id=1, pad_token_id=0)
    a = sample(model, PROMPTS, PROMPT_MASK, jax.random.key(3), **kw)
    b = sample(model, PROMPTS, PROMPT_MASK, jax.random.key(3), unstack_layers=True, **kw)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.response_mask), np.asarray(b.response_mask))
    np.testing.assert_allclose(np.asarray(b.logprobs), np.asarray(a.logprobs), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(b.sample_logprobs), np.asarray(a.sample_logprobs), atol=1e-4, rtol=0)


def test_unstacked_layers_are_the_stacked_slices():
    model = Transformer(CONFIG, rngs=nnx.Rngs(0))
    layers = model.unstacked_layers()
    assert len(layers) == CONFIG.num_layers
    stacked = nnx.split(model.layers)[1]
    for i, layer in enumerate(layers):
        for x, y in zip(jax.tree.leaves(layer), jax.tree.leaves(stacked)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y)[i])

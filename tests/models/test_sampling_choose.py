"""wind_jax.sampling._choose: the lax.cond on `greedy` gives exactly the values of the former form, which
computed the Gumbel draw (and the truncation / log-softmax) for greedy decoding too and discarded it."""
import jax
import numpy as np
import pytest

from benchmarks.cpu_speed import _legacy_choose as _former_choose  # the former form, timed there
from wind_jax.sampling import _choose, decode_params


@pytest.mark.parametrize("settings", [dict(greedy=True), dict(temperature=1.0), dict(temperature=0.7),
                                      dict(temperature=1.0, top_k=5), dict(temperature=1.3, top_p=0.8),
                                      dict(temperature=0.9, top_k=7, top_p=0.9)])
def test_choose_equals_former_form_bit_for_bit(settings):
    logits = jax.random.normal(jax.random.key(1), (6, 97)) * 3.0
    params = decode_params(**settings)
    new, old = jax.jit(_choose), jax.jit(_former_choose)
    for step in range(4):
        key = jax.random.fold_in(jax.random.key(0), step)
        (tok, lp), (tok0, lp0) = new(logits, key, params), old(logits, key, params)
        np.testing.assert_array_equal(np.asarray(tok), np.asarray(tok0))
        np.testing.assert_array_equal(np.asarray(lp), np.asarray(lp0))
    if settings.get("greedy"):
        np.testing.assert_array_equal(np.asarray(tok), np.argmax(np.asarray(logits), axis=-1))
        assert not np.any(np.asarray(lp))

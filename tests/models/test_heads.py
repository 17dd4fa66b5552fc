"""wind_jax.models.heads: pooling, Bradley-Terry reward head, antisymmetric preference head."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from wind_jax.models import (LlamaConfig, PreferenceHead, RewardHead, Transformer, bradley_terry_loss,
                             last_token_index)

CONFIG = LlamaConfig.tiny(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                          num_kv_heads=2, initializer_range=0.1)
RNG = np.random.default_rng(0)
A, B, C = (jnp.asarray(RNG.integers(1, 64, (3, 8))) for _ in range(3))


def test_last_token_index_matches_numpy():
    mask = RNG.random((6, 9)) < 0.6
    mask[0] = False
    mask[0, :4] = True  # right padded
    mask[1] = np.arange(9) >= 3  # left padded
    want = [max(np.nonzero(row)[0], default=0) for row in mask]
    np.testing.assert_array_equal(last_token_index(jnp.asarray(mask)), want)


def test_reward_head_is_linear_in_pooled_hidden_and_padding_invariant():
    backbone = Transformer(CONFIG, rngs=nnx.Rngs(0))
    head = RewardHead(backbone, rngs=nnx.Rngs(1))
    assert head.backbone is backbone  # shared, not copied
    r = nnx.jit(lambda m, t: m(t))(head, A)
    assert r.shape == (3,) and r.dtype == jnp.float32
    h = np.asarray(nnx.jit(lambda m, t: m.hidden(t))(backbone, A), np.float64)[:, -1]
    w, b = np.asarray(head.score.kernel[...], np.float64), np.asarray(head.score.bias[...], np.float64)
    np.testing.assert_allclose(r, (h @ w + b)[:, 0], atol=1e-5)
    # the same sequences left- and right-padded give the same rewards
    z = jnp.zeros((3, 4), A.dtype)
    left_mask = jnp.concatenate([jnp.zeros((3, 4), bool), jnp.ones((3, 8), bool)], 1)
    r_left = nnx.jit(lambda m, t, k: m(t, k))(head, jnp.concatenate([z, A], 1), left_mask)
    r_right = nnx.jit(lambda m, t, k: m(t, k))(head, jnp.concatenate([A, z], 1), left_mask[:, ::-1])
    np.testing.assert_allclose(r_left, r, atol=1e-5)
    np.testing.assert_allclose(r_right, r, atol=1e-5)
    p, r_b = nnx.jit(lambda m, a, b: (m.preference(a, None, b, None), m(b)))(head, A, B)
    np.testing.assert_allclose(p, jax.nn.sigmoid(r - r_b), atol=1e-6)


def test_bradley_terry_training_step_lowers_loss():
    head = RewardHead(CONFIG, rngs=nnx.Rngs(2))
    opt = nnx.Optimizer(head, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(head, opt):
        def loss_fn(head):
            return jnp.mean(bradley_terry_loss(head(A), head(B)))
        loss, grads = nnx.value_and_grad(loss_fn)(head)
        opt.update(head, grads)
        return loss

    losses = [float(step(head, opt)) for _ in range(5)]
    assert losses[0] == pytest.approx(float(jnp.mean(-jax.nn.log_sigmoid(0.0))), abs=0.3)
    assert losses[-1] < losses[0] - 0.05
    # closed form of the loss itself
    np.testing.assert_allclose(bradley_terry_loss(jnp.array([2.0, -1.0]), jnp.array([0.0, 0.0])),
                               np.log1p(np.exp([-2.0, 1.0])), rtol=1e-6)


@nnx.jit
def _prefs(head, a, b, c):
    return head.pair_logit(a, None, b, None), head.pair_logit(b, None, a, None), head.pair_logit(b, None, c, None), \
        head.pair_logit(c, None, a, None), head(a, None, b, None), head(b, None, a, None), head(a, None, a, None)


def test_preference_head_antisymmetry_and_cycles():
    head = PreferenceHead(CONFIG, rank=3, rngs=nnx.Rngs(3))
    s_ab, s_ba, s_bc, s_ca, p_ab, p_ba, p_aa = _prefs(head, A, B, C)
    np.testing.assert_allclose(s_ab, -s_ba, atol=1e-6)
    np.testing.assert_allclose(p_ab + p_ba, 1.0, atol=1e-6)
    np.testing.assert_allclose(p_aa, 0.5, atol=1e-6)
    # a reward-only score has s(a,b)+s(b,c)+s(c,a) = 0; the skew term breaks it (non-transitive capacity)
    cycle = np.asarray(s_ab + s_bc + s_ca)
    assert np.max(np.abs(cycle)) > 1e-4
    rank0 = PreferenceHead(CONFIG, rank=0, rngs=nnx.Rngs(3))
    s_ab, _, s_bc, s_ca, p_ab, _, _ = _prefs(rank0, A, B, C)
    np.testing.assert_allclose(s_ab + s_bc + s_ca, 0.0, atol=1e-5)
    # different lengths: two backbone passes, same antisymmetry
    short = A[:, :5]
    both = nnx.jit(lambda m, x, y: m(x, None, y, None) + m(y, None, x, None))(head, short, B)
    np.testing.assert_allclose(both, 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="batch"):
        head.pair_logit(A[:2], None, B, None)
    with pytest.raises(ValueError, match="rank"):
        PreferenceHead(CONFIG, rank=-1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="backbone"):
        RewardHead("llama", rngs=nnx.Rngs(0))

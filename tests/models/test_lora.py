"""wind_jax.models.lora: adapters start at the base model, the merged export is base + (alpha/r) B A to 1e-6
(float64 numpy reference on the exported Hugging Face tensors), the optimizer holds only the adapters."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from wind_jax.models import LlamaConfig, PreferenceHead, Transformer, export_hf, sequence_logprobs
from wind_jax.models.convert import params_to_hf, read_safetensors
from wind_jax.models.lora import LORA, apply_lora, lora_state, merge_lora

TARGETS = ("q_proj", "v_proj", "down_proj")
HF_MODULE = {"q_proj": "self_attn.q_proj", "v_proj": "self_attn.v_proj", "down_proj": "mlp.down_proj"}


def _randomize_b(model, seed=0):
    """B is zero at initialization; give every adapter a random B so A B is not zero."""
    key = jax.random.key(seed)
    for i, adapter in enumerate(model.adapters.values()):
        adapter.b[...] = 0.05 * jax.random.normal(jax.random.fold_in(key, i), adapter.b[...].shape)


@pytest.mark.parametrize("scan_layers", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_merged_export_is_base_plus_scaled_ab(tmp_path, scan_layers):
    config = LlamaConfig.tiny(num_layers=2, scan_layers=scan_layers)
    base = Transformer(config, rngs=nnx.Rngs(0))
    base_hf = {k: v.astype(np.float64) for k, v in params_to_hf(base).items()}
    model = apply_lora(base, rank=4, alpha=8.0, target_modules=TARGETS, rngs=nnx.Rngs(1))
    _randomize_b(model)
    out = export_hf(merge_lora(model), config, tmp_path / "merged")
    got = read_safetensors(out)
    assert set(got) == set(base_hf)
    changed = set()
    for name, adapter in model.adapters.items():
        module = name.split("__")[-2]
        a = np.asarray(adapter.a[...], np.float64)  # [L, in, r]
        b = np.asarray(adapter.b[...], np.float64)  # [L, r, out]
        for layer in range(config.num_layers):
            hf = f"model.layers.{layer}.{HF_MODULE[module]}.weight"  # [out, in]
            expected = base_hf[hf] + (8.0 / 4) * (a[layer] @ b[layer]).T
            np.testing.assert_allclose(got[hf], expected, atol=1e-6, rtol=0)
            assert np.abs(expected - base_hf[hf]).max() > 1e-3  # the update is not negligible
            changed.add(hf)
    for name in set(base_hf) - changed:  # untargeted tensors are the base's, bit for bit
        np.testing.assert_array_equal(got[name], base_hf[name].astype(np.float32))


def test_starts_at_base_and_forward_equals_merged_model():
    config = LlamaConfig.tiny(num_layers=2)
    base = Transformer(config, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (2, 7), 0, config.vocab_size)
    mask = jnp.arange(7)[None] < jnp.array([[7], [4]])
    model = apply_lora(base, rank=2, alpha=4.0, target_modules=TARGETS, rngs=nnx.Rngs(1))
    np.testing.assert_array_equal(model(tokens, attention_mask=mask)[0], base(tokens, attention_mask=mask)[0])
    _randomize_b(model)
    lora_logits = model(tokens, attention_mask=mask)[0]
    merged_logits = merge_lora(model)(tokens, attention_mask=mask)[0]
    np.testing.assert_allclose(lora_logits, merged_logits, atol=1e-5)
    assert float(jnp.abs(lora_logits - base(tokens, attention_mask=mask)[0]).max()) > 1e-3


def test_optimizer_holds_only_adapters_and_base_stays_frozen():
    config = LlamaConfig.tiny(num_layers=2)
    model = apply_lora(Transformer(config, rngs=nnx.Rngs(0)), rank=2, alpha=2.0, target_modules=TARGETS,
                       rngs=nnx.Rngs(1))
    graphdef, lora, frozen = nnx.split(model, LORA, ...)
    leaves = jax.tree.leaves(lora)
    assert len(leaves) == 2 * len(TARGETS)  # one stacked (A, B) per targeted projection
    assert sum(x.size for x in leaves) == sum(x.size for x in jax.tree.leaves(lora_state(model)))
    n_base = sum(x.size for x in jax.tree.leaves(nnx.state(model.base, nnx.Param)))
    assert sum(x.size for x in leaves) < 0.1 * n_base
    tokens = jax.random.randint(jax.random.key(0), (4, 8), 0, config.vocab_size)
    resp = jnp.arange(8)[None].repeat(4, 0) >= 3

    def loss_fn(lora_params):
        m = nnx.merge(graphdef, lora_params, frozen)
        return -jnp.mean(sequence_logprobs(m, tokens, resp))

    tx = optax.adam(1e-2)

    @jax.jit
    def step(lora_params, opt):
        loss, grads = jax.value_and_grad(loss_fn)(lora_params)
        updates, opt = tx.update(grads, opt, lora_params)
        return optax.apply_updates(lora_params, updates), opt, loss

    opt = tx.init(lora)
    losses = []
    for _ in range(6):
        lora, opt, loss = step(lora, opt)
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 1e-3
    after = nnx.merge(graphdef, lora, frozen)
    for x, y in zip(jax.tree.leaves(nnx.state(after.base)), jax.tree.leaves(frozen)):
        np.testing.assert_array_equal(x, y)


def test_adapted_backbone_inside_a_head():
    config = LlamaConfig.tiny(num_layers=1)
    head = PreferenceHead(config, rank=2, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (3, 6), 0, config.vocab_size)
    mask = jnp.ones((3, 6), bool)
    before = head(tokens, mask, tokens[::-1], mask)
    head.backbone = apply_lora(head.backbone, rank=2, alpha=2.0, target_modules=("o_proj",))
    np.testing.assert_array_equal(head(tokens, mask, tokens[::-1], mask), before)
    assert len(jax.tree.leaves(nnx.state(head, LORA))) == 2


def test_bad_arguments():
    base = Transformer(LlamaConfig.tiny(num_layers=1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="rank must be an int >= 1"):
        apply_lora(base, rank=0, alpha=1.0)
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        apply_lora(base, rank=2, alpha=float("nan"))
    with pytest.raises(ValueError, match=r"target_modules \['qkv'\] match no kernel; available: .*q_proj"):
        apply_lora(base, rank=2, alpha=1.0, target_modules=("qkv",))
    with pytest.raises(ValueError, match="merge_lora: expected a LoraTransformer"):
        merge_lora(base)


@pytest.mark.parametrize("scan_layers,remat", [(True, "none"), pytest.param(False, "none", marks=pytest.mark.slow),
                                               (True, "full")])
def test_adapter_beside_kernel_matches_merged_weights_in_value_and_gradient(scan_layers, remat):
    """The forward x W + s (x A) B and its gradient in A, B equal those of the merged kernel W + s A B
    (float32, every projection and the untied lm_head targeted)."""
    config = LlamaConfig.tiny(num_layers=2, tie_word_embeddings=False, scan_layers=scan_layers, remat=remat)
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
    model = apply_lora(Transformer(config, rngs=nnx.Rngs(0)), rank=3, alpha=6.0, target_modules=targets,
                       rngs=nnx.Rngs(1))
    _randomize_b(model)
    graphdef, lora, frozen = nnx.split(model, LORA, ...)
    tokens = jax.random.randint(jax.random.key(2), (3, 9), 0, config.vocab_size)
    resp = jnp.arange(9)[None].repeat(3, 0) >= 4

    def loss(lora_params, merged):
        m = nnx.merge(graphdef, lora_params, frozen)
        return -jnp.mean(sequence_logprobs(m.merged() if merged else m, tokens, resp))

    (beside, g_beside), (merged, g_merged) = (jax.jit(jax.value_and_grad(loss), static_argnums=1)(lora, m)
                                              for m in (False, True))
    np.testing.assert_allclose(beside, merged, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(g_beside), jax.tree.leaves(g_merged)):
        assert float(jnp.abs(y).max()) > 1e-6  # every adapter gets a gradient
        np.testing.assert_allclose(x, y, atol=2e-5 * float(jnp.abs(y).max()))


def test_adapter_gradient_forms_no_kernel_sized_product():
    """The gradient in A and B has no [in, out]-shaped intermediate (the merged form's dW = x^T dy)."""
    config = LlamaConfig.tiny(num_layers=1, hidden_size=48, intermediate_size=80)
    model = apply_lora(Transformer(config, rngs=nnx.Rngs(0)), rank=2, alpha=2.0,
                       target_modules=("gate_proj",), rngs=nnx.Rngs(1))
    graphdef, lora, frozen = nnx.split(model, LORA, ...)
    tokens = jnp.zeros((2, 5), jnp.int32)

    def loss(lora_params, merged):
        m = nnx.merge(graphdef, lora_params, frozen)
        return jnp.sum(m.merged()(tokens)[0] if merged else m(tokens)[0])

    def kernel_shaped_dots(merged):
        jaxpr = jax.make_jaxpr(lambda p: jax.grad(loss)(p, merged))(lora)
        text = str(jaxpr)
        return text.count("f32[1,48,80] = dot_general") + text.count("f32[48,80] = dot_general")

    assert kernel_shaped_dots(merged=True) >= 1   # the check can see the merged form's kernel gradient
    assert kernel_shaped_dots(merged=False) == 0

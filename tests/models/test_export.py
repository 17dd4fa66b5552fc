"""export_hf: a usable Hugging Face directory (weights, tokenizer with chat template, generation config).

Fast tests check the files, their permissions and the generation config against the tokenizer's ids; the
interop test exports SmolLM2-135M-Instruct from its GGUF file and lets transformers load the directory and
generate a chat reply with no extra arguments, which must stop at the end of the assistant turn.
"""
import json
import os
import stat

import numpy as np
import pytest
import tokenizers
from flax import nnx
from tokenizers import AddedToken, decoders, models, pre_tokenizers

from wind_jax.models import LlamaConfig, Transformer, export_hf
from wind_jax.models.convert import read_safetensors, write_generation_config
from wind_jax.models.tokenizer import Tokenizer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def small_tokenizer(eos="<|im_end|>", pad=None) -> Tokenizer:
    """Byte-level BPE over printable ASCII (no merges) plus the three ChatML special tokens (ids 0, 1, 2)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(alphabet))}
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return Tokenizer(backend, bos_id=vocab["<|im_start|>"], eos_id=vocab[eos],
                     pad_id=None if pad is None else vocab[pad])


def _export(tmp_path, tok, **kwargs):
    config = LlamaConfig.tiny(vocab_size=tok.vocab_size, num_layers=1)
    model = Transformer(config, rngs=nnx.Rngs(0))
    return model, export_hf(model, config, tmp_path / "export", tokenizer=tok, **kwargs)


@pytest.mark.parametrize("eos", ["<|im_end|>", "<|endoftext|>"])
def test_generation_config_stops_at_end_of_turn(tmp_path, eos):
    tok = small_tokenizer(eos=eos)
    _, out = _export(tmp_path, tok, max_new_tokens=32)
    gen = json.loads(open(os.path.join(out, "generation_config.json")).read())
    im_end, eot = tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")
    assert gen["eos_token_id"][0] == tok.eos_id  # the tokenizer's eos first
    assert sorted(gen["eos_token_id"]) == sorted({im_end, eot})  # every end-of-turn id
    assert (gen["bos_token_id"], gen["pad_token_id"], gen["max_new_tokens"]) == (tok.bos_id, tok.eos_id, 32)
    hf_config = json.loads(open(os.path.join(out, "config.json")).read())
    assert (hf_config["bos_token_id"], hf_config["eos_token_id"]) == (tok.bos_id, tok.eos_id)
    cfg = json.loads(open(os.path.join(out, "tokenizer_config.json")).read())
    assert cfg["eos_token"] == eos and "<|im_start|>assistant" in cfg["chat_template"]


def test_export_files_are_world_readable_and_round_trip(tmp_path):
    old = os.umask(0o077)  # a restrictive umask must not leak into the exported directory
    try:
        tok = small_tokenizer()
        model, out = _export(tmp_path, tok)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o755
    names = sorted(os.listdir(out))
    assert names == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json"]
    for name in names:
        assert stat.S_IMODE(os.stat(os.path.join(out, name)).st_mode) == 0o644, name
    back = Tokenizer.from_dir(out)
    conv = [{"role": "user", "content": "hi there"}]
    assert back.apply_chat_template(conv, add_generation_prompt=True) == \
        tok.apply_chat_template(conv, add_generation_prompt=True)
    tensors = read_safetensors(out)
    emb = np.asarray(model.embed.embedding[...])
    np.testing.assert_array_equal(tensors["model.embed_tokens.weight"], emb)


def test_export_from_a_previous_export_copies_its_generation_config(tmp_path):
    tok = small_tokenizer()
    model, first = _export(tmp_path, tok, max_new_tokens=17)
    out = export_hf(model, model.config, tmp_path / "again", first)  # tokenizer_dir = the first export
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert open(os.path.join(out, name)).read() == open(os.path.join(first, name)).read()


def test_generation_config_errors(tmp_path):
    with pytest.raises(ValueError, match="max_new_tokens"):
        write_generation_config(tmp_path, small_tokenizer(), max_new_tokens=0)


# ------------------------------------------------------------------------------------- interop
@pytest.mark.slow
@pytest.mark.interop
def test_smollm2_export_generates_a_chat_reply_that_stops_at_end_of_turn(tmp_path, smollm2_gguf):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from wind_jax.models.convert import load_gguf

    config, model, tok = load_gguf(smollm2_gguf)
    out = export_hf(model, config, tmp_path / "smollm2", tokenizer=tok)
    del model
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out)
    conv = [{"role": "user", "content": "What is the capital of France? Answer in one short sentence."}]
    enc = hf_tok.apply_chat_template(conv, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert enc["input_ids"][0].tolist() == tok.apply_chat_template(conv, add_generation_prompt=True)
    with torch.no_grad():
        generated = hf_model.generate(**enc)  # no extra arguments: generation_config.json decides
    reply = generated[0, enc["input_ids"].shape[1]:].tolist()
    im_end = tok.token_to_id("<|im_end|>")
    assert reply[-1] == im_end and im_end not in reply[:-1]  # stopped at the end of the assistant turn
    assert len(reply) < hf_model.generation_config.max_new_tokens
    text = hf_tok.decode(reply, skip_special_tokens=True)
    assert "Paris" in text, text

"""wind_jax.models.tokenizer: byte-level BPE rebuilt from GGUF metadata, ChatML template, save/load.

Fast tests build a small GGUF with gguf.GGUFWriter (a byte alphabet + hand-chosen merges, so token
counts follow by hand); interop tests compare the SmolLM2 tokenizer with transformers' GGUF loader.
"""
import os

import pytest
from hypothesis import given, settings, strategies as st

from wind_jax.models.tokenizer import Tokenizer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "1 2"]
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SMOL_TEMPLATE = (  # the template string SmolLM2-Instruct ships (jinja)
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}")


def _byte_alphabet():
    """The 256 printable stand-ins GPT-2 byte-level BPE uses for bytes (printable Latin-1 kept as is,
    the rest shifted to 256 + k in byte order)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def _write_tokenizer_gguf(path, pre="smollm", model="gpt2"):
    import gguf

    tokens = SPECIALS + _byte_alphabet() + ["Ġt", "he", "Ġthe", "12"]
    types = [gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * (len(tokens) - len(SPECIALS))
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model(model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_chat_template(SMOL_TEMPLATE)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tokens


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "t.gguf"
    _write_tokenizer_gguf(path)
    return Tokenizer.from_gguf(path)


def test_metadata_ids_and_vocab(tok):
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)
    assert tok.vocab_size == 3 + 256 + 4
    assert tok.encode("<|im_start|>") == [1] and tok.encode("<|im_end|>") == [2]
    assert set(tok.stop_ids) == {0, 2}
    assert tok.default_system == SYSTEM


def test_merges_and_digit_split_counts(tok, tmp_path):
    # " the" -> Ġ t h e -> Ġt, he -> Ġthe: one token; "the" -> t, he: two tokens
    assert tok.encode(" the") == [tok.token_to_id("Ġthe")]
    assert tok.encode("the") == [tok.token_to_id("t"), tok.token_to_id("he")]
    # smollm pre-tokenizer splits digits one by one, so the "1 2" merge never applies ...
    assert tok.encode("12") == [tok.token_to_id("1"), tok.token_to_id("2")]
    # ... while the plain GPT-2 pre-tokenizer keeps "12" together
    _write_tokenizer_gguf(tmp_path / "g.gguf", pre="gpt2")
    assert Tokenizer.from_gguf(tmp_path / "g.gguf").encode("12") == [tok.token_to_id("12")]
    # bytes outside ASCII: one token per UTF-8 byte (no merges apply)
    assert len(tok.encode("é")) == len("é".encode()) == 2


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_round_trip_any_text(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_special_tokens_are_skipped_on_decode(tok):
    ids = tok.encode("<|im_start|>user\nhi the<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.decode(ids) == "user\nhi the"


def test_chat_template_literal_and_jinja(tok, tmp_path):
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    expected = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nWhat is the capital of France?"
                "<|im_end|>\n<|im_start|>assistant\n")
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == expected
    assert tok.apply_chat_template(msgs, add_generation_prompt=True) == tok.encode(expected)  # HF: tokenize=True
    assert tok.apply_chat_template(msgs, tokenize=False) == expected.removesuffix("<|im_start|>assistant\n")
    jinja2 = pytest.importorskip("jinja2")
    convs = [msgs,
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]]
    template = jinja2.Environment().from_string(SMOL_TEMPLATE)
    for conv in convs:
        for gen in (True, False):
            assert tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen) == \
                template.render(messages=conv, add_generation_prompt=gen)
    # the saved tokenizer_config.json carries an equivalent jinja template, and loads back identically
    tok.save_pretrained(tmp_path / "saved")
    import json
    saved = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())
    saved_template = jinja2.Environment().from_string(saved["chat_template"])
    for conv in convs:
        assert saved_template.render(messages=conv, add_generation_prompt=True) == \
            tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    back = Tokenizer.from_dir(tmp_path / "saved")
    assert (back.bos_id, back.eos_id, back.pad_id, back.default_system) == (1, 2, 2, SYSTEM)
    text = "<|im_start|>user\n 12 the é<|im_end|>"
    assert back.encode(text) == tok.encode(text)
    assert tok.encode_chat(msgs) == tok.encode(expected)


def test_export_hf_writes_tokenizer(tok, tmp_path):
    import json

    from flax import nnx

    from wind_jax.models import LlamaConfig, Transformer, export_hf

    config = LlamaConfig.tiny(vocab_size=tok.vocab_size, num_layers=1)
    out = export_hf(Transformer(config, rngs=nnx.Rngs(0)), config, tmp_path / "out", tokenizer=tok)
    hf_config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (hf_config["bos_token_id"], hf_config["eos_token_id"]) == (tok.bos_id, tok.eos_id)
    back = Tokenizer.from_dir(out)
    text = "<|im_start|>user\n the 12<|im_end|>"
    assert back.encode(text) == tok.encode(text) and back.stop_ids == tok.stop_ids


def test_bad_inputs(tok, tmp_path):
    with pytest.raises(ValueError, match=r"messages\[1\].role='robot'"):
        tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}])
    with pytest.raises(ValueError, match="non-empty"):
        tok.apply_chat_template([])
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        tok.apply_chat_template([{"role": "user"}])
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        Tokenizer.from_gguf(tmp_path / "nope.gguf")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    _write_tokenizer_gguf(tmp_path / "wordpiece.gguf", model="bert")
    with pytest.raises(ValueError, match="tokenizer.ggml.model='bert'"):
        Tokenizer.from_gguf(tmp_path / "wordpiece.gguf")
    _write_tokenizer_gguf(tmp_path / "pre.gguf", pre="qwen2")
    with pytest.raises(ValueError, match="tokenizer.ggml.pre='qwen2'"):
        Tokenizer.from_gguf(tmp_path / "pre.gguf")
    with pytest.raises(ValueError, match="str"):
        tok.encode(b"bytes")


# ------------------------------------------------------------------------------------- interop
@pytest.mark.interop
def test_smollm2_tokenizer_matches_transformers(tmp_path, smollm2_gguf):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("jinja2")
    folder, name = os.path.split(smollm2_gguf)
    ours = Tokenizer.from_gguf(smollm2_gguf)
    ref = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    texts = ["What is the capital of France?", "  leading spaces and\ttabs\n\nnewlines",
             "digits 1234567890 and 3.14159", "naïve café — ünïcödé 日本語 🙂",
             "<|im_start|>user\nhi<|im_end|>\n", "def f(x):\n    return x**2  # comment"]
    for text in texts:
        assert ours.encode(text) == ref.encode(text, add_special_tokens=False), text
        assert ours.decode(ours.encode(text), skip_special_tokens=False) == text
    assert (ours.bos_id, ours.eos_id) == (ref.bos_token_id, ref.eos_token_id)
    conv = [{"role": "user", "content": "What is the capital of France?"}]
    for gen in (False, True):
        assert ours.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen) == \
            ref.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
        assert ours.apply_chat_template(conv, add_generation_prompt=gen) == \
            list(ref.apply_chat_template(conv, add_generation_prompt=gen, return_dict=True)["input_ids"])
    ours.save_pretrained(tmp_path / "saved")
    reloaded = transformers.AutoTokenizer.from_pretrained(tmp_path / "saved")
    for text in texts:
        assert reloaded.encode(text, add_special_tokens=False) == ours.encode(text), text
    assert reloaded.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) == \
        ours.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)


def test_sentencepiece_gguf_vocab_merges_in_file_order_with_byte_fallback(tmp_path):
    """A Gemma-style 'llama' GGUF vocabulary (no merges): earlier pieces merge first, spaces are U+2581,
    a piece stored with literal spaces is respelled, unknown characters fall back to byte tokens, and the
    Gemma chat format is picked from <start_of_turn>."""
    import gguf

    T = gguf.TokenType
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    pieces = ["h", "e", "l", "o", "w", "r", "d", "\u2581", "ll", "he", "hell", "hello", "\u2581w", "or", "ld",
              "\u2581wor", "\u2581world", "  ", "lo"]
    tokens = specials + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [T.CONTROL] * len(specials) + [T.BYTE] * 256 + [T.NORMAL] * len(pieces)
    w = gguf.GGUFWriter(str(tmp_path / "spm.gguf"), "gemma3")
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores([0.0] * len(tokens))
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = Tokenizer.from_gguf(tmp_path / "spm.gguf")
    ids = {t: i for i, t in enumerate(tokens)}
    assert tok.encode("hello world", add_bos=False) == [ids["hello"], ids["\u2581world"]]
    assert tok.encode("hello") == [2, ids["hello"]]  # add_bos from the file
    assert tok.encode("hello", add_special_tokens=False) == [ids["hello"]]  # Hugging Face's switch
    # "ll" (earlier in the file) merges before "lo": h e ll o -> he ll o -> hell o -> hello
    assert tok.encode("hellow", add_bos=False) == [ids["hello"], ids["w"]]
    assert tok.encode("a  b", add_bos=False) == [ids["<0x61>"], ids["  "], ids["<0x62>"]]
    assert tok.encode("é", add_bos=False) == [ids["<0xC3>"], ids["<0xA9>"]]
    for text in ("hello world", "a  b é\n", "<start_of_turn>user\nhello<end_of_turn>\n"):
        assert tok.decode(tok.encode(text), skip_special_tokens=False).removeprefix("<bos>") == text
    assert tok.chat_format == "gemma" and tok.stop_ids == (1, ids["<end_of_turn>"])
    text = tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "<bos><start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n"

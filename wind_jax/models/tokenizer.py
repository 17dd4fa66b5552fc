"""Tokenizer for Llama-family checkpoints: byte-level BPE (GPT-2 style) built with the `tokenizers` library.

Sources: a GGUF file's `tokenizer.ggml.*` metadata (`Tokenizer.from_gguf`) or a Hugging Face directory with
tokenizer.json (`Tokenizer.from_dir`). The ChatML chat template of SmolLM2-Instruct / Qwen-style models is
implemented in Python (`apply_chat_template`, Hugging Face's signature: tokenize=, add_generation_prompt=);
`save_pretrained` writes files transformers reads (tokenizer.json, tokenizer_config.json with the jinja
chat template and special tokens), world-readable.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers

CHATML_ROLES = ("system", "user", "assistant")
# The jinja form of the template below; written to tokenizer_config.json so transformers applies the same.
_CHATML_JINJA = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' and default_system %}"
    "{{ '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_DEFAULT_SYSTEM_RE = re.compile(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", re.S)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _gguf_field(reader, key: str, path: str, default: Any = ...) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is ...:
            raise ValueError(f"{path}: GGUF metadata has no {key!r}")
        return default
    return field.contents()


def _pre_tokenizer(pre: str, path: str):
    """GPT-2 byte-level split; 'smollm' additionally splits every digit (llama.cpp's smollm pre-type)."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("gpt-2", "gpt2", "default"):
        return byte_level
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    raise ValueError(f"{path}: tokenizer.ggml.pre={pre!r} is not supported (supported: smollm, gpt2)")


class Tokenizer:
    """Byte-level BPE tokenizer with special-token ids and a ChatML chat template.

    bos_id / eos_id / pad_id: ints or None. stop_ids: ids that end a generated reply (eos and
    <|im_end|>/<|endoftext|> when present). default_system: system prompt inserted by
    `apply_chat_template` when the conversation has none (SmolLM2-Instruct's template does this).
    """

    def __init__(self, backend: tokenizers.Tokenizer, *, bos_id: int | None = None,
                 eos_id: int | None = None, pad_id: int | None = None, add_bos: bool = False,
                 default_system: str | None = None):
        self.backend = backend
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        for name, value in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
            if value is not None and not 0 <= int(value) < self.vocab_size:
                raise ValueError(f"Tokenizer.{name}={value} is outside the vocabulary [0, {self.vocab_size})")
        self.bos_id = None if bos_id is None else int(bos_id)
        self.eos_id = None if eos_id is None else int(eos_id)
        self.pad_id = None if pad_id is None else int(pad_id)
        self.add_bos = bool(add_bos)
        self.default_system = default_system
        stops = {self.eos_id} if self.eos_id is not None else set()
        for special in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
            tid = backend.token_to_id(special)
            if tid is not None:
                stops.add(tid)
        self.stop_ids = tuple(sorted(stops))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_gguf(cls, path: str | os.PathLike, *, reader=None) -> Tokenizer:
        """Rebuild the tokenizer from `tokenizer.ggml.*` metadata (model 'gpt2' = byte-level BPE).

        reader: an already opened gguf.GGUFReader of `path` (opening a file parses all its metadata)."""
        import gguf
        import numpy as np

        path = os.fspath(path)
        if reader is None:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"GGUF file not found: {path}")
            reader = gguf.GGUFReader(path)
        kind = _gguf_field(reader, "tokenizer.ggml.model", path)
        if kind != "gpt2":
            raise ValueError(f"{path}: tokenizer.ggml.model={kind!r} is not supported (only 'gpt2' BPE)")
        tokens = _gguf_field(reader, "tokenizer.ggml.tokens", path)
        merges = _gguf_field(reader, "tokenizer.ggml.merges", path)
        types = np.asarray(_gguf_field(reader, "tokenizer.ggml.token_type", path, [1] * len(tokens)))
        if len(types) != len(tokens):
            raise ValueError(f"{path}: tokenizer.ggml.token_type has {len(types)} entries, "
                             f"tokenizer.ggml.tokens has {len(tokens)}")
        pairs = []
        for i, merge in enumerate(merges):
            parts = merge.split(" ")
            if len(parts) != 2:
                raise ValueError(f"{path}: tokenizer.ggml.merges[{i}]={merge!r} is not two space-separated "
                                 "symbols")
            pairs.append((parts[0], parts[1]))
        vocab = {tok: i for i, tok in enumerate(tokens)}
        backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
        backend.pre_tokenizer = _pre_tokenizer(_gguf_field(reader, "tokenizer.ggml.pre", path, "gpt2"), path)
        backend.decoder = decoders.ByteLevel()
        control = int(gguf.TokenType.CONTROL)
        user = int(gguf.TokenType.USER_DEFINED)
        backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                    for i in np.flatnonzero(types == control)])
        backend.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                            for i in np.flatnonzero(types == user)])
        template = _gguf_field(reader, "tokenizer.chat_template", path, "")
        match = _DEFAULT_SYSTEM_RE.search(template)
        return cls(backend,
                   bos_id=_gguf_field(reader, "tokenizer.ggml.bos_token_id", path, None),
                   eos_id=_gguf_field(reader, "tokenizer.ggml.eos_token_id", path, None),
                   pad_id=_gguf_field(reader, "tokenizer.ggml.padding_token_id", path, None),
                   add_bos=bool(_gguf_field(reader, "tokenizer.ggml.add_bos_token", path, False)),
                   default_system=match.group(1) if match else None)

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> Tokenizer:
        """Load tokenizer.json (+ tokenizer_config.json special tokens) from a Hugging Face directory."""
        directory = os.fspath(directory)
        tok_path = os.path.join(directory, "tokenizer.json")
        if not os.path.isfile(tok_path):
            raise FileNotFoundError(f"tokenizer file not found: {tok_path}")
        backend = tokenizers.Tokenizer.from_file(tok_path)
        cfg: dict[str, Any] = {}
        cfg_path = os.path.join(directory, "tokenizer_config.json")
        if os.path.isfile(cfg_path):
            with open(cfg_path) as f:
                cfg = json.load(f)

        def token_id(key):
            value = cfg.get(key)
            if isinstance(value, Mapping):
                value = value.get("content")
            return None if value is None else backend.token_to_id(value)

        return cls(backend, bos_id=token_id("bos_token"), eos_id=token_id("eos_token"),
                   pad_id=token_id("pad_token"), add_bos=bool(cfg.get("add_bos_token", False)),
                   default_system=cfg.get("wind_jax_default_system"))

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        """Token ids of `text`; special tokens written literally (e.g. <|im_start|>) map to their ids."""
        if not isinstance(text, str):
            raise ValueError(f"encode: text must be a str, got {type(text).__name__}")
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos):
            if self.bos_id is None:
                raise ValueError("encode: add_bos requested but the tokenizer has no bos_id")
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    # ------------------------------------------------------------------ chat
    def apply_chat_template(self, conversation: Sequence[Mapping[str, str]], *, tokenize: bool = True,
                            add_generation_prompt: bool = False) -> list[int] | str:
        """ChatML rendering with Hugging Face's signature and defaults: token ids (``tokenize=True``, no
        extra BOS since ChatML starts with <|im_start|>) or the text (``tokenize=False``).

        Each message becomes '<|im_start|>{role}\\n{content}<|im_end|>\\n', preceded by a default system
        turn when the conversation has none and `default_system` is set; ``add_generation_prompt``
        appends '<|im_start|>assistant\\n' (the start of the reply to generate)."""
        if isinstance(conversation, (str, bytes)) or not isinstance(conversation, Sequence) or not conversation:
            raise ValueError("apply_chat_template: conversation must be a non-empty list of {role, content}")
        parts = []
        for i, message in enumerate(conversation):
            if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
                raise ValueError(f"apply_chat_template: messages[{i}] must be a mapping with 'role' and "
                                 "'content'")
            role, content = message["role"], message["content"]
            if role not in CHATML_ROLES:
                raise ValueError(f"apply_chat_template: messages[{i}].role={role!r} is not one of "
                                 f"{CHATML_ROLES}")
            if not isinstance(content, str):
                raise ValueError(f"apply_chat_template: messages[{i}].content must be a str")
            if i == 0 and role != "system" and self.default_system:
                parts.append(f"<|im_start|>system\n{self.default_system}<|im_end|>\n")
            parts.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        text = "".join(parts)
        return self.encode(text, add_bos=False) if tokenize else text

    def encode_chat(self, messages: Sequence[Mapping[str, str]], *,
                    add_generation_prompt: bool = True) -> list[int]:
        """Prompt ids for generation: ``apply_chat_template(messages, tokenize=True,
        add_generation_prompt=True)``."""
        return self.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)

    # ------------------------------------------------------------------ save
    def save_pretrained(self, directory: str | os.PathLike) -> list[str]:
        """Write tokenizer.json and tokenizer_config.json (special tokens + jinja chat template) that
        transformers' AutoTokenizer reads. Returns the written paths."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        tok_path = os.path.join(directory, "tokenizer.json")
        self.backend.save(tok_path)

        def content(tid):
            return None if tid is None else self.backend.id_to_token(tid)

        template = _CHATML_JINJA.replace(
            "default_system", repr(self.default_system) if self.default_system else "''")
        cfg = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": content(self.bos_id),
            "eos_token": content(self.eos_id),
            "pad_token": content(self.pad_id),
            "add_bos_token": self.add_bos,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000_000,
            "chat_template": template,
            "wind_jax_default_system": self.default_system,
        }
        cfg_path = os.path.join(directory, "tokenizer_config.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=2)
        for path in (tok_path, cfg_path):
            os.chmod(path, 0o644)  # readable by every user, like any model directory
        return [tok_path, cfg_path]

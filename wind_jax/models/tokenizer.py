"""Tokenizers of the decoder's checkpoints, built with the `tokenizers` library: byte-level BPE (GPT-2 style:
SmolLM2, Qwen) and SentencePiece BPE with byte fallback (Gemma).

Sources: a GGUF file's `tokenizer.ggml.*` metadata (`Tokenizer.from_gguf`: model "gpt2" or "llama") or a
Hugging Face directory with tokenizer.json (`Tokenizer.from_dir`). Two chat formats are implemented in
Python (`apply_chat_template`, Hugging Face's signature: tokenize=, add_generation_prompt=): ChatML
(SmolLM2-Instruct, Qwen) and Gemma's <start_of_turn>role ... <end_of_turn> turns (chosen by the
vocabulary); `save_pretrained` writes files transformers reads (tokenizer.json, tokenizer_config.json with
the jinja chat template and special tokens), world-readable.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers

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
CHAT_FORMATS = ("chatml", "gemma")
# Gemma turns: bos, then '<start_of_turn>{user|model}\n{content}<end_of_turn>\n'; a system message is
# folded into the first user turn ('{system}\n\n{user}'), as Gemma 3's own template does.
_GEMMA_JINJA = (
    "{{ bos_token }}"
    "{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\\n\\n' %}"
    "{% else %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\\n' + ns.system"
    " + (message['content'] | trim) + '<end_of_turn>\\n' }}{% set ns.system = '' %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
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


def _spm_bpe_backend(tokens: Sequence[str], types, path: str) -> tokenizers.Tokenizer:
    """SentencePiece-BPE with byte fallback from a GGUF vocabulary alone (Gemma files carry no merges).

    Spaces become U+2581; a word is merged bottom-up where the pair (a, b) ranks by the file position of
    the piece a + b (earlier = merged first; Gemma's scores do not follow its merge order, its token order
    does), then the longer left piece. Pieces written with literal spaces are respelled with U+2581.
    """
    space = "\u2581"
    spelled = [space * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab: dict[str, int] = {}
    for i, tok in enumerate(spelled):
        vocab[tok] = i
    ranked = []
    for tok, rank in vocab.items():
        splits = [(tok[:k], tok[k:]) for k in range(1, len(tok)) if tok[:k] in vocab and tok[k:] in vocab]
        splits.sort(key=lambda ab: (vocab[ab[0]], vocab[ab[1]]))
        ranked.extend((rank, -len(a), -len(b), n, a, b) for n, (a, b) in enumerate(splits))
    ranked.sort(key=lambda r: r[:4])
    unk = "<unk>" if "<unk>" in vocab else None
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[(r[4], r[5]) for r in ranked], unk_token=unk,
                                              fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", space)
    backend.decoder = decoders.Sequence([decoders.Replace(space, " "), decoders.ByteFallback(), decoders.Fuse()])
    return backend


class Tokenizer:
    """Byte-level BPE or SentencePiece-BPE tokenizer with special-token ids and a chat template.

    bos_id / eos_id / pad_id: ints or None. stop_ids: ids that end a generated reply (eos and
    <|im_end|>/<|endoftext|> when present). default_system: system prompt inserted by
    `apply_chat_template` when the conversation has none (SmolLM2-Instruct's template does this).
    chat_format: "chatml" or "gemma" (default: "gemma" when the vocabulary has <start_of_turn> and no
    <|im_start|>).
    """

    def __init__(self, backend: tokenizers.Tokenizer, *, bos_id: int | None = None,
                 eos_id: int | None = None, pad_id: int | None = None, add_bos: bool = False,
                 default_system: str | None = None, chat_format: str | None = None):
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
        for special in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"):
            tid = backend.token_to_id(special)
            if tid is not None:
                stops.add(tid)
        self.stop_ids = tuple(sorted(stops))
        if chat_format is None:
            gemma = backend.token_to_id("<start_of_turn>") is not None
            chat_format = "gemma" if gemma and backend.token_to_id("<|im_start|>") is None else "chatml"
        if chat_format not in CHAT_FORMATS:
            raise ValueError(f"Tokenizer.chat_format must be one of {CHAT_FORMATS}, got {chat_format!r}")
        self.chat_format = chat_format

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_gguf(cls, path: str | os.PathLike, *, reader=None) -> Tokenizer:
        """Rebuild the tokenizer from `tokenizer.ggml.*` metadata: model 'gpt2' (byte-level BPE with the
        file's merges) or 'llama' (SentencePiece BPE with byte fallback; merges derived from the vocabulary
        in file order, see `_spm_bpe_backend`).

        reader: an already opened gguf.GGUFReader of `path` (opening a file parses all its metadata)."""
        import gguf
        import numpy as np

        path = os.fspath(path)
        if reader is None:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"GGUF file not found: {path}")
            reader = gguf.GGUFReader(path)
        kind = _gguf_field(reader, "tokenizer.ggml.model", path)
        if kind not in ("gpt2", "llama"):
            raise ValueError(f"{path}: tokenizer.ggml.model={kind!r} is not supported ('gpt2' BPE or 'llama' "
                             "SentencePiece BPE)")
        tokens = _gguf_field(reader, "tokenizer.ggml.tokens", path)
        types = np.asarray(_gguf_field(reader, "tokenizer.ggml.token_type", path, [1] * len(tokens)))
        if len(types) != len(tokens):
            raise ValueError(f"{path}: tokenizer.ggml.token_type has {len(types)} entries, "
                             f"tokenizer.ggml.tokens has {len(tokens)}")
        if kind == "llama":
            if _gguf_field(reader, "tokenizer.ggml.add_space_prefix", path, False):
                raise ValueError(f"{path}: tokenizer.ggml.add_space_prefix=True (Llama-2 style SentencePiece) "
                                 "is not supported")
            backend = _spm_bpe_backend(tokens, types, path)
        else:
            backend = cls._byte_level_backend(reader, tokens, path)
        control = int(gguf.TokenType.CONTROL)
        user = int(gguf.TokenType.USER_DEFINED)
        backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                    for i in np.flatnonzero(types == control)])
        # user-defined pieces are matched whole, except those respelled for SentencePiece (runs of spaces)
        backend.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                            for i in np.flatnonzero(types == user) if backend.token_to_id(tokens[i]) == i])
        if backend.get_vocab_size(with_added_tokens=True) != len(tokens):
            raise ValueError(f"{path}: the rebuilt tokenizer has {backend.get_vocab_size(with_added_tokens=True)} "
                             f"ids, tokenizer.ggml.tokens has {len(tokens)}")
        template = _gguf_field(reader, "tokenizer.chat_template", path, "")
        match = _DEFAULT_SYSTEM_RE.search(template)
        return cls(backend,
                   bos_id=_gguf_field(reader, "tokenizer.ggml.bos_token_id", path, None),
                   eos_id=_gguf_field(reader, "tokenizer.ggml.eos_token_id", path, None),
                   pad_id=_gguf_field(reader, "tokenizer.ggml.padding_token_id", path, None),
                   add_bos=bool(_gguf_field(reader, "tokenizer.ggml.add_bos_token", path, False)),
                   default_system=match.group(1) if match else None)

    @staticmethod
    def _byte_level_backend(reader, tokens, path: str) -> tokenizers.Tokenizer:
        merges = _gguf_field(reader, "tokenizer.ggml.merges", path)
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
        return backend

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
    def encode(self, text: str, *, add_bos: bool | None = None, add_special_tokens: bool | None = None
               ) -> list[int]:
        """Token ids of `text`; special tokens written literally (e.g. <|im_start|>) map to their ids.
        A BOS is prepended when add_bos (default: the checkpoint's add_bos). add_special_tokens has Hugging
        Face's meaning: False adds no BOS (callers encoding pieces of a template), True the default."""
        if not isinstance(text, str):
            raise ValueError(f"encode: text must be a str, got {type(text).__name__}")
        if add_special_tokens is False:
            if add_bos:
                raise ValueError("encode: add_bos=True contradicts add_special_tokens=False")
            add_bos = False
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
        appends '<|im_start|>assistant\\n' (the start of the reply to generate).

        chat_format "gemma": '<bos>' then '<start_of_turn>{user|model}\\n{content.strip()}<end_of_turn>\\n'
        per turn (assistant is 'model'), a system message folded into the next turn as '{system}\\n\\n';
        the generation prompt is '<start_of_turn>model\\n'."""
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
            if self.chat_format == "gemma":
                continue
            if i == 0 and role != "system" and self.default_system:
                parts.append(f"<|im_start|>system\n{self.default_system}<|im_end|>\n")
            parts.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        if self.chat_format == "gemma":
            parts = self._gemma_turns(conversation, add_generation_prompt)
        text = "".join(parts)
        return self.encode(text, add_bos=False) if tokenize else text

    def _gemma_turns(self, conversation, add_generation_prompt: bool) -> list[str]:
        bos = "" if self.bos_id is None else self.backend.id_to_token(self.bos_id)
        parts, system = [bos], ""
        for message in conversation:
            if message["role"] == "system":
                system = message["content"] + "\n\n"
                continue
            role = "model" if message["role"] == "assistant" else "user"
            parts.append(f"<start_of_turn>{role}\n{system}{message['content'].strip()}<end_of_turn>\n")
            system = ""
        if add_generation_prompt:
            parts.append("<start_of_turn>model\n")
        return parts

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
        backend = self.backend
        if self.add_bos and self.bos_id is not None:  # transformers adds BOS through the post-processor
            from tokenizers import processors

            backend = tokenizers.Tokenizer.from_str(self.backend.to_str())
            bos = self.backend.id_to_token(self.bos_id)
            backend.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A $B:1", special_tokens=[(bos, self.bos_id)])
        backend.save(tok_path)

        def content(tid):
            return None if tid is None else self.backend.id_to_token(tid)

        template = _CHATML_JINJA.replace(
            "default_system", repr(self.default_system) if self.default_system else "''")
        if self.chat_format == "gemma":
            template = _GEMMA_JINJA
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

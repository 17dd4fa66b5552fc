"""KV-cache decoding against the memory-bandwidth bound, on the default backend (a GPU or TPU).

    python -m benchmarks.decode_bound                           # SmolLM2-135M shapes, bf16, batches 1 / 16 / 64
    python -m benchmarks.decode_bound --model llama3_8b --batches 1,8 --json decode.json

A decode step reads every parameter and the whole KV cache once, so its time is at least
    (parameter bytes + KV-cache bytes) / HBM bandwidth,
and tokens/s is at most batch / that time. The decode time is isolated as the difference of two runs of the
sampler (wind_jax.sampling, greedy, random weights of the preset's shapes) that differ only in the number of
new tokens, so prefill and compilation cancel. Bandwidths are the vendors' datasheet figures.
"""
from __future__ import annotations

import argparse
import json
import time

HBM_BYTES_PER_S = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "TPU v4": 1.2e12, "TPU v5 lite": 8.2e11,
                   "TPU v5e": 8.2e11, "TPU v5p": 2.76e12}


def bandwidth_for(device_kind: str) -> float | None:
    for name, bw in HBM_BYTES_PER_S.items():
        if name.lower() in device_kind.lower():
            return bw
    return None


def step_bytes(cfg, num_params: int, batch: int, length: int, cache_bytes: int = 2) -> float:
    """Bytes one decode step reads at cache length `length`: the parameters (in cfg.param_dtype) and the K and
    V caches of every layer."""
    param_bytes = 2 if cfg.param_dtype == "bfloat16" else 4
    kv = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * length * batch * cache_bytes
    return num_params * param_bytes + kv


def measure(cfg, batch: int, prompt_len: int, new_tokens: int, repeats: int = 3) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from wind_jax.models import Transformer
    from wind_jax.sampling import sample

    model = Transformer(cfg, rngs=nnx.Rngs(0))
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model)))
    prompts = jax.numpy.asarray(np.random.default_rng(0).integers(1, cfg.vocab_size, (batch, prompt_len)),
                                jax.numpy.int32)

    def run(n):
        out = sample(model, prompts, None, jax.random.key(0), max_new_tokens=n, greedy=True)
        jax.block_until_ready(out.tokens)

    times = {}
    for n in (1, new_tokens):
        run(n)  # compile
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            run(n)
            best = min(best, time.perf_counter() - t0)
        times[n] = best
    per_step = (times[new_tokens] - times[1]) / (new_tokens - 1)
    kind = jax.devices()[0].device_kind
    out = {"device_kind": kind, "batch": batch, "prompt": prompt_len, "new_tokens": new_tokens,
           "num_params": num_params, "step_ms": 1e3 * per_step, "tokens_per_s": batch / per_step,
           "prefill_plus_one_ms": 1e3 * times[1]}
    bw = bandwidth_for(kind)
    if bw:
        mean_len = prompt_len + new_tokens / 2
        bound = step_bytes(cfg, num_params, batch, mean_len) / bw
        out.update(bound_step_ms=1e3 * bound, fraction_of_bound=bound / per_step)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2_135m", help="a model-config preset (classmethod) name")
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    from wind_jax.models import LlamaConfig
    preset = getattr(LlamaConfig, args.model, None)
    if preset is None:
        raise SystemExit(f"--model {args.model!r} is not a model-config preset")
    cfg = preset(dtype=args.dtype, param_dtype=args.dtype)
    rows = [measure(cfg, int(b), args.prompt, args.new_tokens) for b in args.batches.split(",")]
    print(f"{args.model} ({args.dtype}), prompt {args.prompt}, {args.new_tokens} new tokens, greedy, "
          f"{rows[0]['device_kind']}, {rows[0]['num_params'] / 1e6:.0f}M params")
    print(f"{'batch':>6} {'step ms':>9} {'tokens/s':>10} {'bound ms':>9} {'of bound':>9}")
    for r in rows:
        print(f"{r['batch']:>6} {r['step_ms']:>9.3f} {r['tokens_per_s']:>10.0f} "
              f"{r.get('bound_step_ms', float('nan')):>9.3f} {r.get('fraction_of_bound', float('nan')):>9.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()

"""Model benchmarks on CPU, side by side in one run.

    .venv/bin/python -m benchmarks.model            # default sizes
    .venv/bin/python -m benchmarks.model --quick    # smaller, for a smoke run

1. Decode tokens/s: wind_jax.sampling.sample (prefill + KV-cache while_loop, greedy) versus uncached greedy
   decoding (a jitted full forward over a fixed-size buffer per new token).
2. Forward: jitted wind_jax Transformer versus transformers' LlamaForCausalLM (PyTorch, eager, no_grad) on
   the same config and weights (skipped with a note when torch/transformers are not importable).
Prints a table; --json PATH also writes the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wind_jax.models import LlamaConfig, Transformer
from wind_jax.models.convert import params_to_hf
from wind_jax.sampling import sample


def _timeit(fn, repeats):
    fn()  # warm-up / compile
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@jax.jit(static_argnums=0)
def _forward(graphdef, state, tokens, mask):
    return nnx.merge(graphdef, state)(tokens, attention_mask=mask)[0]


def decode_benchmark(model, batch, prompt_len, new_tokens, repeats):
    rng = np.random.default_rng(0)
    prompts = jnp.asarray(rng.integers(0, model.config.vocab_size, (batch, prompt_len)), jnp.int32)
    key = jax.random.key(0)

    def cached():
        out = sample(model, prompts, None, key, max_new_tokens=new_tokens, greedy=True)
        return jax.block_until_ready(out.tokens)

    graphdef, state = nnx.split(model)
    total = prompt_len + new_tokens

    def uncached():
        buf = np.zeros((batch, total), np.int32)
        buf[:, :prompt_len] = np.asarray(prompts)
        for t in range(prompt_len, total):
            mask = jnp.asarray(np.arange(total)[None] < t).repeat(batch, 0)
            logits = _forward(graphdef, state, jnp.asarray(buf), mask)
            buf[:, t] = np.asarray(jnp.argmax(logits[:, t - 1], -1))
        return buf

    c_tok = np.asarray(cached())[:, 0, prompt_len:]
    u_tok = uncached()[:, prompt_len:]
    agree = float(np.mean(c_tok == u_tok))
    t_cached = _timeit(cached, repeats)
    t_uncached = _timeit(uncached, max(1, repeats // 2))
    n = batch * new_tokens
    return {"cached_tokens_per_s": n / t_cached, "uncached_tokens_per_s": n / t_uncached,
            "speedup": t_uncached / t_cached, "greedy_agreement": agree}


def torch_forward_benchmark(model, batch, seq_len, repeats):
    try:
        import torch
        import transformers
    except Exception as e:  # noqa: BLE001 - optional extra
        return {"skipped": f"torch/transformers not importable ({type(e).__name__}: {e})"}
    c = model.config
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**c.to_hf_dict())).eval()
    sd = {name: torch.tensor(value) for name, value in params_to_hf(model).items()}
    hf.load_state_dict(sd, strict=not c.tie_word_embeddings)
    tokens = np.random.default_rng(1).integers(0, c.vocab_size, (batch, seq_len))
    tt = torch.tensor(tokens)
    graphdef, state = nnx.split(model)
    jt, jm = jnp.asarray(tokens, jnp.int32), jnp.ones((batch, seq_len), bool)

    def run_jax():
        return jax.block_until_ready(_forward(graphdef, state, jt, jm))

    def run_torch():
        with torch.no_grad():
            return hf(tt).logits

    max_diff = float(np.max(np.abs(np.asarray(run_jax()) - run_torch().numpy())))
    t_jax, t_torch = _timeit(run_jax, repeats), _timeit(run_torch, repeats)
    return {"jax_ms": 1e3 * t_jax, "torch_ms": 1e3 * t_torch, "torch_over_jax": t_torch / t_jax,
            "max_abs_logit_diff": max_diff, "torch_threads": torch.get_num_threads(),
            "transformers": transformers.__version__, "torch": torch.__version__}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        config = LlamaConfig.tiny(vocab_size=512, hidden_size=128, intermediate_size=344, num_layers=2,
                                  num_heads=4, num_kv_heads=2, max_position_embeddings=512)
        batch, prompt_len, new_tokens, seq_len, repeats = 2, 16, 16, 64, 2
    else:
        config = LlamaConfig.tiny(vocab_size=2048, hidden_size=256, intermediate_size=688, num_layers=4,
                                  num_heads=8, num_kv_heads=4, max_position_embeddings=1024)
        batch, prompt_len, new_tokens, seq_len, repeats = 4, 64, 64, 256, 3
    model = Transformer(config, rngs=nnx.Rngs(0))
    dec = decode_benchmark(model, batch, prompt_len, new_tokens, repeats)
    fwd = torch_forward_benchmark(model, batch, seq_len, repeats)

    print(f"backend {jax.default_backend()} ({os.cpu_count()} CPUs); config: vocab {config.vocab_size}, "
          f"hidden {config.hidden_size}, layers {config.num_layers}, heads {config.num_heads}/"
          f"{config.num_kv_heads} kv, {config.num_params / 1e6:.2f}M params")
    print(f"\n{'decode (greedy, batch %d, prompt %d, %d new)' % (batch, prompt_len, new_tokens):<52}{'value':>12}")
    print(f"{'  KV-cache sampler tokens/s':<52}{dec['cached_tokens_per_s']:>12.1f}")
    print(f"{'  uncached full-forward tokens/s':<52}{dec['uncached_tokens_per_s']:>12.1f}")
    print(f"{'  speedup cached / uncached':<52}{dec['speedup']:>12.2f}")
    print(f"{'  greedy token agreement cached vs uncached':<52}{dec['greedy_agreement']:>12.3f}")
    print(f"\n{'forward (batch %d, seq %d)' % (batch, seq_len):<52}{'value':>12}")
    if "skipped" in fwd:
        print("  " + fwd["skipped"])
    else:
        print(f"{'  wind_jax (jit) ms':<52}{fwd['jax_ms']:>12.2f}")
        print(f"{'  transformers LlamaForCausalLM (torch %s) ms' % fwd['torch']:<52}{fwd['torch_ms']:>12.2f}")
        print(f"{'  ratio torch / wind_jax':<52}{fwd['torch_over_jax']:>12.2f}")
        print(f"{'  max |logit difference|':<52}{fwd['max_abs_logit_diff']:>12.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": config.to_hf_dict(), "decode": dec, "forward": fwd}, f, indent=2)
    return dec, fwd


if __name__ == "__main__":
    main()

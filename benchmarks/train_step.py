"""Throughput of wind_jax.train policy_step (DPO loss): tokens/s and step time, 1 vs 8 fake CPU devices.

    python -m benchmarks.train_step                 # CPU table: 1 vs 8 fake devices (separate subprocesses)
    python -m benchmarks.train_step --accelerator   # on a GPU/TPU: a ~0.5B bf16 config and its MFU

Each device count runs in its own subprocess because XLA_FLAGS must be set before jax is imported.
Tokens counted = batch * sequence length * 2 responses (chosen, rejected) per step.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# Dense bf16 peak FLOP/s per device, for MFU (vendor datasheets).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5e": 197e12,
                   "TPU v5p": 459e12}


def mfu(num_params: int, tokens: float, seconds: float, peak_flops: float) -> float:
    """Model FLOPs utilization: 6 * N * tokens / seconds / peak (forward + backward, attention omitted)."""
    if seconds <= 0 or peak_flops <= 0:
        raise ValueError("seconds and peak_flops must be positive")
    return 6.0 * num_params * tokens / seconds / peak_flops


def peak_flops_for(device_kind: str) -> float | None:
    for name, flops in PEAK_BF16_FLOPS.items():
        if name.lower() in device_kind.lower():
            return flops
    return None


def _measure(config_name: str, batch: int, length: int, mesh_shape, steps: int, micro: int,
             attention: str = "reference", remat: str = "none") -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from wind_jax import sharding, train
    from wind_jax.models import LlamaConfig, Transformer

    if config_name == "small":
        cfg = LlamaConfig.tiny(vocab_size=1024, hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4,
                               num_kv_heads=2)
    else:  # ~0.5B, bf16 compute
        cfg = LlamaConfig.tiny(vocab_size=32768, hidden_size=1536, intermediate_size=4096, num_layers=16,
                               num_heads=12, num_kv_heads=4, max_position_embeddings=4096, dtype="bfloat16",
                               attention=attention, remat=remat)
    mesh = sharding.make_mesh(mesh_shape)
    graphdef, state = sharding.create_sharded_state(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))
    tx = train.make_optimizer(train.OptimizerConfig(learning_rate=1e-5))
    opt_state = train.init_optimizer_state(tx, state, mesh)
    rng = np.random.default_rng(0)
    host = {"tokens": {}, "response_mask": {}, "attention_mask": {}}
    for name in ("chosen", "rejected"):
        host["tokens"][name] = rng.integers(1, cfg.vocab_size, (batch, length)).astype(np.int32)
        host["attention_mask"][name] = np.ones((batch, length), bool)
        host["response_mask"][name] = np.arange(length)[None].repeat(batch, 0) >= length // 4
    host["ref_chosen"] = host["ref_rejected"] = np.full((batch,), -100.0, np.float32)
    data = sharding.shard_host_batch(host, mesh)
    step = train.jit_policy_step(graphdef, state, opt_state, data, mesh, loss_name="dpo", optimizer=tx,
                                 num_micro_batches=micro)
    t0 = time.perf_counter()
    state, opt_state, m = step(state, opt_state, data)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        state, opt_state, m = step(state, opt_state, data)
    jax.block_until_ready((state, m))
    dt = (time.perf_counter() - t0) / steps
    tokens = 2 * batch * length
    out = {"devices": len(jax.devices()), "mesh": list(mesh.shape.values()), "params": num_params, "batch": batch,
           "length": length, "step_s": dt, "tokens_per_s": tokens / dt, "first_call_s": compile_s,
           "device_kind": jax.devices()[0].device_kind, "loss": float(m["loss"]), "attention": cfg.attention,
           "remat": cfg.remat}
    peak = peak_flops_for(out["device_kind"])
    if peak:
        out["mfu"] = mfu(num_params, tokens, dt, peak * len(jax.devices()))
    return out


def _child(args) -> None:
    print("RESULT " + json.dumps(_measure(args.config, args.batch, args.length, tuple(args.mesh), args.steps,
                                          args.micro)))


def _spawn(devices: int, args) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    cmd = [sys.executable, "-m", "benchmarks.train_step", "--child", "--config", args.config, "--batch",
           str(args.batch), "--length", str(args.length), "--steps", str(args.steps), "--micro", str(args.micro),
           "--mesh", "-1", "1", "1"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in res.stdout.splitlines() if line.startswith("RESULT ")]
    if res.returncode or not lines:
        raise RuntimeError(f"benchmark child ({devices} devices) failed:\n{res.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--accelerator", action="store_true", help="run the ~0.5B config on the default backend")
    p.add_argument("--config", default="small", choices=["small", "500m"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--micro", type=int, default=1)
    p.add_argument("--mesh", type=int, nargs=3, default=[-1, 1, 1])
    p.add_argument("--attention", default="reference", help="attention backend of the 500m config (e.g. cudnn)")
    p.add_argument("--remat", default="none", help="rematerialization policy of the 500m config (none, dots, full)")
    args = p.parse_args(argv)
    if args.child:
        return _child(args)
    if args.accelerator:
        if args.config == "small":
            args.config = "500m"
        r = _measure(args.config, args.batch, args.length, tuple(args.mesh), args.steps, args.micro,
                     args.attention, args.remat)
        print(json.dumps(r, indent=1))
        return
    rows = [_spawn(d, args) for d in (1, 8)]
    print(f"policy_step (dpo, adamw), config={args.config}, params={rows[0]['params']:,}, "
          f"batch={args.batch} x 2 responses x {args.length} tokens, CPU ({os.cpu_count()} cores)")
    print(f"{'devices':>8} {'mesh':>10} {'step (ms)':>10} {'tokens/s':>10} {'1st call (s)':>13} {'loss':>8}")
    for r in rows:
        print(f"{r['devices']:>8} {str(tuple(r['mesh'])):>10} {1e3 * r['step_s']:>10.1f} {r['tokens_per_s']:>10.0f} "
              f"{r['first_call_s']:>13.1f} {r['loss']:>8.4f}")


if __name__ == "__main__":
    main()

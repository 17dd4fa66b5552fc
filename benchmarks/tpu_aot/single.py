"""One program planned on its own: the policy's training step, or the sampler's decode step.

Training: wind_jax.train.steps.jit_policy_step (loss --method, AdamW from make_optimizer, parameters
float32, compute bfloat16) lowered on ShapeDtypeStructs with the mesh's shardings and compiled by libtpu
(`pip install wind_jax[tpu-aot]`). Decode: wind_jax.sampling.jit_decode_step (one token for --batch rows
against a --cache-length KV cache, parameters bfloat16 unless --param-dtype, cache donated).

Printed per chip: argument / temporary / total GiB against the chip's HBM (compiled.memory_analysis()),
compile seconds on this host, the compiler's FLOPs (compiled.cost_analysis()), its estimated step time
and, for training, MFU = 6 N tokens / chips / (estimated step time x peak bf16 FLOP/s); for decode the
HBM bound = (parameter + KV-cache bytes per chip) / HBM bandwidth. ESTIMATES of XLA's cost model.
"""
from __future__ import annotations

import os
import sys
import time

from benchmarks.tpu_aot import costs
from benchmarks.tpu_aot.cli import make_mesh, model_config


def abstract_model(config, loss_name: str, *, offset_head: bool | None = None):
    """(graphdef, abstract state) of the policy (wrapped in PolicyWithOffset when the loss needs it)."""
    from flax import nnx

    from wind_jax import losses
    from wind_jax.models import Transformer
    from wind_jax.train.steps import PolicyWithOffset

    spec = losses.get_loss(loss_name)
    wrap = "offset" in spec.policy_keys if offset_head is None else offset_head

    def make():
        policy = Transformer(config, rngs=nnx.Rngs(0))
        return PolicyWithOffset(policy, rngs=nnx.Rngs(1)) if wrap else policy

    with nnx.use_eager_sharding(False):
        return nnx.split(nnx.eval_shape(make))


def sds(shape, dtype, sharding=None):
    import jax

    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def lower_train(args, config, mesh):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from wind_jax import losses
    from wind_jax.train.steps import OptimizerConfig, jit_policy_step, make_optimizer

    spec = losses.get_loss(args.method)
    graphdef, state = abstract_model(config, args.method)
    tx = make_optimizer(OptimizerConfig(name="adamw", learning_rate=1e-5, max_grad_norm=1.0))
    opt_state = jax.eval_shape(tx.init, nnx.split_state(state, nnx.Param, ...)[0])
    b, t = args.batch, args.length
    responses = [k for k in spec.policy_keys if k != "offset"]
    batch = {"tokens": {r: sds((b, t), jnp.int32) for r in responses},
             "response_mask": {r: sds((b, t), jnp.bool_) for r in responses},
             "attention_mask": {r: sds((b, t), jnp.bool_) for r in responses}}
    batch.update({k: sds((b,), jnp.float32) for k in spec.batch_keys})
    step = jit_policy_step(graphdef, state, opt_state, batch, mesh, loss_name=args.method, optimizer=tx)
    with jax.set_mesh(mesh):  # no traced hparams, no row index
        lowered = step.jitted.lower(state, opt_state, batch, {}, None)
    return lowered, b * t * len(responses)


def decode_cache(config, rows: int, slots: int):
    import jax.numpy as jnp

    kv = sds((config.num_layers, rows, slots, config.num_kv_heads, config.head_dim), jnp.dtype(config.dtype))
    cache = {"k": kv, "v": kv, "mask": sds((rows, slots), jnp.bool_), "index": sds((), jnp.int32)}
    return cache, 2 * kv.size * kv.dtype.itemsize + rows * slots


def lower_decode_step(config, mesh, rows: int, slots: int, state=None, graphdef=None):
    import jax
    import jax.numpy as jnp

    from wind_jax.sampling import jit_decode_step

    if state is None:
        graphdef, state = abstract_model(config, "dpo")
    cache, cache_bytes = decode_cache(config, rows, slots)
    step = jit_decode_step(graphdef, state, cache, mesh)
    with jax.set_mesh(mesh):
        lowered = step.jitted.lower(state, cache, sds((rows,), jnp.int32), sds((rows,), jnp.bool_))
    return lowered, cache_bytes


def plan_single(args):
    import jax
    import numpy as np

    from wind_jax import sharding

    devices = costs.devices_for(args.platform, args.topology)
    chips = len(devices)
    mesh, mesh_shape = make_mesh(args, devices)
    config = model_config(args)
    chip = costs.chip_of(args.topology) if args.platform == "tpu" else None

    def lower(cfg, on_mesh=None):
        if args.decode:
            return lower_decode_step(cfg, on_mesh or mesh, args.batch, args.cache_length)
        return lower_train(args, cfg, on_mesh or mesh)

    try:  # a program that does not compile (out of HBM, a shape splash refuses) is a reason, not a traceback
        t0 = time.perf_counter()
        lowered, size = lower(config)  # size: KV-cache bytes (decode) or tokens per step (training)
        lower_s = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        compiled = lowered.compile()
        compile_s, compile_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    except Exception as e:  # noqa: BLE001
        what = "decode step" if args.decode else f"{args.method} step"
        raise SystemExit(f"{args.model} {what} does not compile for {args.topology} (mesh {mesh_shape}): "
                         f"{type(e).__name__}: {str(e)[:600]}") from None
    mem = costs.memory_of(compiled)
    total_gib = mem["argument_gib"] + mem["output_gib"] + mem["temp_gib"] + mem["code_gib"]
    cost, cost_source, ignored = costs.cost_of(compiled), "compiler", {}
    if config.scan_layers and config.num_layers > 2 and args.layer_costs:
        print(f"  (scanned program: arguments {mem['argument_gib']:.2f} GiB, temporaries {mem['temp_gib']:.2f} "
              f"GiB, compile {compile_s:.1f} s; now the 1- and 2-layer unrolled compiles for the FLOP count)",
              flush=True)
        lc = costs.layer_costs(lambda k, m: lower(config.replace(num_layers=k, scan_layers=False), m)[0],
                               config.num_layers, args.platform, args.topology, mesh_shape)
        cost, ignored = lc["cost"], lc.get("ignored", {})
        cost_source = lc.get("source") or f"not computed ({lc['reason']})"
    elif config.scan_layers and config.num_layers > 2:
        cost, cost_source = {}, "not computed (scanned: XLA counts the loop body once; see --layer-costs)"
    flops = cost.get("flops")
    est_s, est_source = costs.estimate_seconds(cost, chip)
    n = config.num_params
    out = {"topology": args.topology, "platform": args.platform, "model": args.model, "chips": chips,
           "mesh": dict(zip(sharding.MESH_AXES, mesh_shape)), "num_params": n, "remat": config.remat,
           "attention": config.attention, "param_dtype": config.param_dtype,
           "argument_gib": mem["argument_gib"], "temp_gib": mem["temp_gib"], "per_chip_gib": total_gib,
           "hbm_gib": None if chip is None else chip.hbm_gib, "lower_s": lower_s, "compile_s": compile_s,
           "compile_cpu_s": compile_cpu_s, "host_load_1min": os.getloadavg()[0],
           "flops_per_chip": flops, "bytes_per_chip": cost.get("bytes accessed"), "cost_source": cost_source,
           "ignored_cost_keys": ignored, "estimated_step_s": est_s, "estimate_source": est_source,
           "jax": jax.__version__}
    if args.decode:
        param_bytes = n * np.dtype(config.param_dtype).itemsize
        bound = (param_bytes + size) / chips / chip.hbm_bytes_per_s if chip else None
        out.update({"mode": "decode", "rows": args.batch, "cache_length": args.cache_length,
                    "hbm_bound_s": bound, "estimate_over_bound": est_s / bound if (bound and est_s) else None})
    else:
        model_flops = 6.0 * n * size / chips
        out.update({"mode": "train", "method": args.method, "batch": args.batch, "length": args.length,
                    "tokens": size, "model_flops_per_chip": model_flops,
                    "flops_ratio": flops / model_flops if flops else None,
                    "estimated_mfu": (model_flops / (est_s * chip.peak_bf16_flops)) if (chip and est_s) else None})
    return out


def report(o):
    hbm = f" of {o['hbm_gib']:.0f} GiB HBM ({100 * o['per_chip_gib'] / o['hbm_gib']:.0f}%)" if o["hbm_gib"] else ""
    what = (f"decode step, {o['rows']} rows, cache {o['cache_length']}" if o["mode"] == "decode" else
            f"{o['method']} step, batch {o['batch']} x {o['length']}")
    print(f"{o['model']} ({o['num_params'] / 1e9:.2f}B params, {o['param_dtype']}) {what} on {o['topology']} "
          f"({o['chips']} chips, mesh {o['mesh']}, remat {o['remat']}, attention {o['attention']})")
    print(f"  per chip: arguments {o['argument_gib']:.2f} GiB, temporaries {o['temp_gib']:.2f} GiB, "
          f"total {o['per_chip_gib']:.2f} GiB{hbm}")
    print(f"  compile {o['compile_s']:.1f} s on this host ({o['compile_cpu_s']:.1f} CPU-s, load "
          f"{o['host_load_1min']:.1f}; lowering {o['lower_s']:.1f} s)")
    flops = "not computed" if o["flops_per_chip"] is None else f"{o['flops_per_chip']:.3e}"
    print(f"  compiler FLOPs per chip {flops} ({o['cost_source']})")
    for k, why in o["ignored_cost_keys"].items():
        print(f"  cost key {k!r} left out: {why}")
    if o["estimated_step_s"] is not None:
        print(f"  ESTIMATED step time {1e3 * o['estimated_step_s']:.1f} ms ({o['estimate_source']}; an estimate "
              "of XLA's cost model, not a measurement)")
    if o["mode"] == "train":
        if o["flops_ratio"] is not None:
            print(f"  6 N tokens / chips = {o['model_flops_per_chip']:.3e}; compiler / model FLOPs = "
                  f"{o['flops_ratio']:.2f}")
        if o["estimated_mfu"] is not None:
            print(f"  ESTIMATED MFU {100 * o['estimated_mfu']:.1f}%")
    elif o["estimate_over_bound"]:
        print(f"  HBM bound per token {1e3 * o['hbm_bound_s']:.2f} ms; estimate / bound = "
              f"{o['estimate_over_bound']:.2f}")
    sys.stdout.flush()

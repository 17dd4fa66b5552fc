"""Plan a TPU slice from a CPU host: compile the real policy step (or the sampler's decode step) with the
TPU compiler for a topology and print the compiler's own per-chip memory, FLOPs and time estimate.

    TPU_SKIP_MDS_QUERY=1 .venv/bin/python -m benchmarks.tpu_aot --topology v4:2x2x4 --model llama3_8b \
        --method wind_sq --batch 64 --length 1024 [--mesh D,F,T] [--remat full] [--attention splash] \
        [--json PATH]
    ... --decode --batch 64 --cache-length 2048 --topology v5e:2x4 --mesh 1,1,8      # one decode step
    ... --platform cpu --topology 8 ...        # the same program for 8 local CPU devices (compile time)

Training: wind_jax.train.steps.jit_policy_step (loss --method, AdamW from make_optimizer, parameters
float32, compute bfloat16) lowered on ShapeDtypeStructs with the mesh's shardings and compiled by libtpu
(`pip install wind_jax[tpu-aot]`). Decode: wind_jax.sampling.jit_decode_step (one token for --batch rows
against a --cache-length KV cache, parameters bfloat16 unless --param-dtype, cache donated).

Printed per chip: argument / temporary / total GiB against the chip's HBM (compiled.memory_analysis()),
compile seconds on this host, the compiler's FLOPs (compiled.cost_analysis()), its estimated step time
and, for training, MFU = 6 N tokens / chips / (estimated step time x peak bf16 FLOP/s); for decode the
HBM bound = (parameter + KV-cache bytes per chip) / HBM bandwidth. These are ESTIMATES of XLA's cost
model, not measurements on a TPU. Models: any LlamaConfig preset (llama3_8b, smollm2_135m, tiny, ...).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import sys
import time

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

GIB = 2.0 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    hbm_gib: float
    peak_bf16_flops: float  # FLOP/s per chip
    hbm_bytes_per_s: float


# Public per-chip figures (Cloud TPU system architecture pages).
CHIPS = {
    "v4": Chip(32.0, 275e12, 1228e9),
    "v5e": Chip(16.0, 197e12, 819e9),
    "v5p": Chip(95.0, 459e12, 2765e9),
    "v6e": Chip(32.0, 918e12, 1640e9),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--topology", required=True, help='e.g. v4:2x2x4, v5e:4x4, v5p:2x2x4 (or a device count '
                   'with --platform cpu)')
    p.add_argument("--platform", default="tpu", choices=("tpu", "cpu"))
    p.add_argument("--model", default="llama3_8b", help="a LlamaConfig preset (classmethod) name")
    p.add_argument("--method", default="wind_sq", help="loss name (wind_jax.losses registry)")
    p.add_argument("--batch", type=int, default=64, help="global batch (sequences, or decode rows)")
    p.add_argument("--length", type=int, default=1024, help="training sequence length")
    p.add_argument("--mesh", default=None, help="data,fsdp,tensor sizes (default: fsdp = all chips)")
    p.add_argument("--remat", default="full", help="LlamaConfig.remat: none / full / dots")
    p.add_argument("--attention", default=None, help="LlamaConfig.attention (default: splash on TPU, "
                   "xla on CPU)")
    p.add_argument("--scan-layers", default=True, action=argparse.BooleanOptionalAction)
    p.add_argument("--param-dtype", default=None, help="default float32 (training), bfloat16 (decode)")
    p.add_argument("--decode", action="store_true", help="plan the sampler's decode step instead")
    p.add_argument("--cache-length", type=int, default=2048, help="KV-cache slots for --decode")
    p.add_argument("--layer-costs", default=True, action=argparse.BooleanOptionalAction,
                   help="FLOPs / time of a scanned model from unrolled 1- and 2-layer compiles (XLA counts a "
                        "loop body once)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    for name in ("batch", "length", "cache_length"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    return args


def chip_of(topology: str) -> Chip:
    kind = topology.split(":")[0]
    if kind not in CHIPS:
        raise SystemExit(f"--topology {topology!r}: unknown chip {kind!r} (known: {sorted(CHIPS)})")
    return CHIPS[kind]


def devices_for(args):
    if args.platform == "cpu":
        import jax

        n = int(args.topology)
        if len(jax.devices("cpu")) < n:
            raise SystemExit(f"--platform cpu --topology {n}: only {len(jax.devices('cpu'))} CPU devices "
                             f"(set XLA_FLAGS=--xla_force_host_platform_device_count={n})")
        return jax.devices("cpu")[:n]
    from jax.experimental import topologies

    kw = {"chip_config_name": "megacore"} if args.topology.startswith("v4") else {}
    try:
        return list(topologies.get_topology_desc(topology_name=args.topology, platform="tpu", **kw).devices)
    except Exception as e:  # noqa: BLE001 - libtpu absent or bad name: say which
        raise SystemExit(f"--topology {args.topology!r}: no TPU topology ({type(e).__name__}: {e}); "
                         "install the tpu-aot extra (jax[tpu]) and use a name like v4:2x2x4") from None


def model_config(args):
    from wind_jax.models import LlamaConfig

    preset = getattr(LlamaConfig, args.model, None)
    if preset is None or args.model.startswith("_") or not callable(preset) or args.model in (
            "replace", "from_hf_dict", "to_hf_dict"):
        raise SystemExit(f"--model {args.model!r} is not a LlamaConfig preset")
    attention = args.attention or ("splash" if args.platform == "tpu" else "xla")
    param_dtype = args.param_dtype or ("bfloat16" if args.decode else "float32")
    return preset(dtype="bfloat16", param_dtype=param_dtype, remat=args.remat, attention=attention,
                  scan_layers=args.scan_layers)


def _abstract_model(config, method):
    from flax import nnx

    from wind_jax import losses
    from wind_jax.models import Transformer
    from wind_jax.train.steps import PolicyWithOffset

    spec = losses.get_loss(method)

    def make():
        policy = Transformer(config, rngs=nnx.Rngs(0))
        return PolicyWithOffset(policy, rngs=nnx.Rngs(1)) if "offset" in spec.policy_keys else policy

    with nnx.use_eager_sharding(False):
        return nnx.split(nnx.eval_shape(make)), spec


def _sds(shape, dtype):
    import jax

    return jax.ShapeDtypeStruct(shape, dtype)


def lower_train(args, config, mesh):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from wind_jax.train.steps import OptimizerConfig, jit_policy_step, make_optimizer

    (graphdef, state), spec = _abstract_model(config, args.method)
    tx = make_optimizer(OptimizerConfig(name="adamw", learning_rate=1e-5, max_grad_norm=1.0))
    params = nnx.split_state(state, nnx.Param, ...)[0]
    opt_state = jax.eval_shape(tx.init, params)
    b, t = args.batch, args.length
    responses = [k for k in spec.policy_keys if k != "offset"]
    batch = {"tokens": {r: _sds((b, t), jnp.int32) for r in responses},
             "response_mask": {r: _sds((b, t), jnp.bool_) for r in responses},
             "attention_mask": {r: _sds((b, t), jnp.bool_) for r in responses}}
    batch.update({k: _sds((b,), jnp.float32) for k in spec.batch_keys})
    step = jit_policy_step(graphdef, state, opt_state, batch, mesh, loss_name=args.method, optimizer=tx)
    extra = ({}, None)[:len(inspect.signature(step).parameters) - 3]  # no traced hparams, no row index
    with jax.set_mesh(mesh):
        lowered = step.jitted.lower(state, opt_state, batch, *extra)
    tokens = b * t * len(responses)
    return lowered, tokens


def lower_decode(args, config, mesh):
    import jax
    import jax.numpy as jnp

    from wind_jax.sampling import jit_decode_step

    (graphdef, state), _ = _abstract_model(config, "dpo")
    rows, slots = args.batch, args.cache_length
    kv = _sds((config.num_layers, rows, slots, config.num_kv_heads, config.head_dim), jnp.dtype(config.dtype))
    cache = {"k": kv, "v": kv, "mask": _sds((rows, slots), jnp.bool_), "index": _sds((), jnp.int32)}
    step = jit_decode_step(graphdef, state, cache, mesh)
    with jax.set_mesh(mesh):
        lowered = step.jitted.lower(state, cache, _sds((rows,), jnp.int32), _sds((rows,), jnp.bool_))
    cache_bytes = 2 * kv.size * kv.dtype.itemsize + rows * slots
    return lowered, cache_bytes


def main(argv=None):
    args = parse_args(argv)
    import jax
    import numpy as np

    from wind_jax import sharding

    devices = devices_for(args)
    chips = len(devices)
    mesh_shape = (1, chips, 1) if args.mesh is None else tuple(int(x) for x in args.mesh.split(","))
    try:
        mesh = sharding.make_mesh(mesh_shape, devices=devices)
    except ValueError as e:
        raise SystemExit(f"--mesh {args.mesh}: {e}") from None
    config = model_config(args)
    chip = chip_of(args.topology) if args.platform == "tpu" else None

    def lower(cfg, on_mesh=None):
        return (lower_decode if args.decode else lower_train)(args, cfg, on_mesh or mesh)

    t0 = time.perf_counter()
    lowered, size = lower(config)  # size: KV-cache bytes (decode) or tokens per step (training)
    cache_bytes = tokens = size
    lower_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    compiled = lowered.compile()
    compile_s, compile_cpu_s = time.perf_counter() - t0, time.process_time() - c0

    mem = compiled.memory_analysis()
    arg_gib = mem.argument_size_in_bytes / GIB
    temp_gib = mem.temp_size_in_bytes / GIB
    out_gib = (mem.output_size_in_bytes - mem.alias_size_in_bytes) / GIB
    total_gib = arg_gib + out_gib + temp_gib + mem.generated_code_size_in_bytes / GIB
    cost, cost_source = _cost(compiled), "compiler"
    if config.scan_layers and config.num_layers > 2 and args.layer_costs:
        print(f"  (scanned program: arguments {arg_gib:.2f} GiB, temporaries {temp_gib:.2f} GiB, compile "
              f"{compile_s:.1f} s; now the 1- and 2-layer unrolled compiles for the FLOP count)", flush=True)
        cost, cost_source = _layer_extrapolated_cost(args, config, mesh_shape, lower, cost)
    elif config.scan_layers and config.num_layers > 2:
        cost, cost_source = {}, "not computed (scanned: XLA counts the loop body once; see --layer-costs)"
    flops = float(cost.get("flops", 0.0))
    bytes_accessed = float(cost.get("bytes accessed", 0.0))
    est_s = cost.get("optimal_seconds")
    est_source = cost_source + " (optimal_seconds)"
    if est_s is None or float(est_s) <= 0:
        est_s = None
        if chip is not None and flops > 0:  # roofline of the compiler's counts
            est_s = max(flops / chip.peak_bf16_flops, bytes_accessed / chip.hbm_bytes_per_s)
            est_source = f"roofline of the {cost_source} flops / bytes"
    n = config.num_params
    out = {"topology": args.topology, "platform": args.platform, "model": args.model, "chips": chips,
           "mesh": dict(zip(sharding.MESH_AXES, mesh_shape)), "num_params": n,
           "remat": config.remat, "attention": config.attention, "param_dtype": config.param_dtype,
           "argument_gib": arg_gib, "temp_gib": temp_gib, "per_chip_gib": total_gib,
           "hbm_gib": None if chip is None else chip.hbm_gib, "lower_s": lower_s, "compile_s": compile_s,
           "compile_cpu_s": compile_cpu_s, "host_load_1min": os.getloadavg()[0],
           "flops_per_chip": flops, "bytes_per_chip": bytes_accessed, "cost_source": cost_source,
           "estimated_step_s": None if est_s is None else float(est_s), "estimate_source": est_source,
           "jax": jax.__version__}
    if args.decode:
        param_bytes = n * np.dtype(config.param_dtype).itemsize
        bound = (param_bytes + cache_bytes) / chips / chip.hbm_bytes_per_s if chip else None
        out.update({"mode": "decode", "rows": args.batch, "cache_length": args.cache_length,
                    "hbm_bound_s": bound, "estimate_over_bound": None if not (bound and est_s) else est_s / bound})
    else:
        model_flops = 6.0 * n * tokens / chips
        out.update({"mode": "train", "method": args.method, "batch": args.batch, "length": args.length,
                    "tokens": tokens, "model_flops_per_chip": model_flops,
                    "flops_ratio": flops / model_flops if flops else None,
                    "estimated_mfu": (model_flops / (est_s * chip.peak_bf16_flops)) if (chip and est_s) else None})
    report(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


def _layer_extrapolated_cost(args, config, mesh_shape, lower, fallback):
    """XLA's cost analysis counts a while-loop body once, so a scanned model's FLOPs are taken from the
    unrolled step with 1 and 2 layers (same batch, mesh and shardings), extrapolated linearly to
    num_layers (the layers are identical). If those compiles do not fit the chip's HBM (the unrolled
    program is scheduled differently), they run on a v5p topology with the same chip count: the per-chip
    FLOPs of the partitioned program do not depend on the chip."""
    import numpy as np

    from wind_jax import sharding

    def costs(mesh):
        low = lambda k: lower(config.replace(num_layers=k, scan_layers=False), mesh)[0]  # noqa: E731
        return [_cost(low(k).compile()) for k in (1, 2)]

    source = "compiler, unrolled 1- and 2-layer steps extrapolated to all layers"
    try:
        c1, c2 = costs(None)
    except Exception as e:  # noqa: BLE001 - RESOURCE_EXHAUSTED from the TPU compiler
        if "RESOURCE_EXHAUSTED" not in str(e) or args.platform != "tpu":
            raise
        chips = int(np.prod(mesh_shape))
        alt = {8: "v5p:2x2x2", 16: "v5p:2x2x4", 32: "v5p:2x4x4"}.get(chips)
        if alt is None:
            print(f"  layer-cost compiles do not fit and no v5p topology of {chips} chips is known: FLOPs "
                  "below count the loop body once", flush=True)
            return fallback, "compiler (scanned: loop body counted once)"
        alt_args = argparse.Namespace(**{**vars(args), "topology": alt})
        mesh = sharding.make_mesh(mesh_shape, devices=devices_for(alt_args))
        c1, c2 = costs(mesh)
        source += f" (compiled on {alt}, same chip count and mesh: they ran out of HBM on {args.topology})"
    extra = config.num_layers - 1
    cost = {k: c1[k] + extra * (c2[k] - c1[k]) for k in c1 if k in c2 and k != "optimal_seconds"}
    if "optimal_seconds" in c1 and "optimal_seconds" in c2 and "v5p" not in source:
        cost["optimal_seconds"] = c1["optimal_seconds"] + extra * (c2["optimal_seconds"] - c1["optimal_seconds"])
    if any(c2[k] <= c1[k] for k in cost):  # a second layer that costs nothing: not linear, do not guess
        return {}, f"not computed (1- and 2-layer costs not increasing: {c1} -> {c2}; use --no-scan-layers)"
    return cost, source


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {k: float(v) for k, v in cost.items() if k in ("flops", "bytes accessed", "optimal_seconds")}


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
    print(f"  compiler FLOPs per chip {o['flops_per_chip']:.3e}, bytes {o['bytes_per_chip']:.3e} "
          f"({o['cost_source']})")
    if o["estimated_step_s"] is not None:
        print(f"  ESTIMATED step time {1e3 * o['estimated_step_s']:.1f} ms ({o['estimate_source']}; an estimate "
              "of XLA's cost model, not a measurement)")
    if o["mode"] == "train":
        if o["flops_ratio"] is not None:
            print(f"  6 N tokens / chips = {o['model_flops_per_chip']:.3e}; compiler / model FLOPs = "
                  f"{o['flops_ratio']:.2f}")
        if o["estimated_mfu"] is not None:
            print(f"  ESTIMATED MFU {100 * o['estimated_mfu']:.1f}%")
    elif o["hbm_bound_s"] is not None:
        print(f"  HBM bound per token {1e3 * o['hbm_bound_s']:.2f} ms; estimate / bound = "
              f"{o['estimate_over_bound']:.2f}" if o["estimate_over_bound"] else "")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

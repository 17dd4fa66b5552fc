"""Flags of `python -m benchmarks.tpu_aot` and the dispatch to the single-program or iteration plan."""
from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

NOT_PRESETS = ("replace", "from_hf_dict", "to_hf_dict")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Plan a TPU slice with the TPU compiler (estimates, not measurements)")
    p.add_argument("--topology", required=True, help='e.g. v4:2x2x4, v5e:4x4, v5p:2x2x4 (or a device count '
                   'with --platform cpu)')
    p.add_argument("--platform", default="tpu", choices=("tpu", "cpu"))
    p.add_argument("--model", default="llama3_8b", help="a LlamaConfig preset (classmethod) name")
    p.add_argument("--method", default="wind_sq", help="loss name (single program) or method name (--iteration)")
    p.add_argument("--batch", type=int, default=64, help="global batch (sequences, decode rows, or prompts per "
                   "iteration with --iteration)")
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
    p.add_argument("--iteration", action="store_true", help="plan every program of one outer iteration")
    p.add_argument("--judge", default="llama3_8b", help="--iteration: the oracle's LlamaConfig preset")
    p.add_argument("--oracle", default="reward", choices=("reward", "judge"),
                   help="--iteration: a reward model (RewardHead) or an LLM judge (both presentation orders)")
    p.add_argument("--samples", type=int, default=None, help="--iteration: samples per prompt (default: the "
                   "method's)")
    p.add_argument("--prompt-length", type=int, default=512, help="--iteration: prompt tokens")
    p.add_argument("--max-new-tokens", type=int, default=512, help="--iteration: response tokens")
    p.add_argument("--programs", default=None, help="--iteration: comma-separated subset of rollout, "
                   "decode_step, reference_logprobs, judge, policy_step (default: all)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    for name in ("batch", "length", "cache_length", "prompt_length", "max_new_tokens"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.samples is not None and args.samples < 1:
        raise SystemExit(f"--samples must be positive, got {args.samples}")
    if args.iteration and args.decode:
        raise SystemExit("--iteration already plans the decode step: drop --decode")
    return args


def preset(name: str, flag: str = "--model", **kw):
    from wind_jax.models import LlamaConfig

    fn = getattr(LlamaConfig, name, None)
    if fn is None or name.startswith("_") or not callable(fn) or name in NOT_PRESETS:
        raise SystemExit(f"{flag} {name!r} is not a LlamaConfig preset")
    return fn(**kw)


def model_config(args, param_dtype=None):
    attention = args.attention or ("splash" if args.platform == "tpu" else "xla")
    param_dtype = param_dtype or args.param_dtype or ("bfloat16" if args.decode else "float32")
    return preset(args.model, dtype="bfloat16", param_dtype=param_dtype, remat=args.remat, attention=attention,
                  scan_layers=args.scan_layers)


def make_mesh(args, devices):
    from wind_jax import sharding

    shape = (1, len(devices), 1) if args.mesh is None else tuple(int(x) for x in args.mesh.split(","))
    try:
        return sharding.make_mesh(shape, devices=devices), shape
    except ValueError as e:
        raise SystemExit(f"--mesh {args.mesh}: {e}") from None


def main(argv=None):
    args = parse_args(argv)
    if args.iteration:
        from benchmarks.tpu_aot.iteration import plan_iteration, report
    else:
        from benchmarks.tpu_aot.single import plan_single as plan_iteration, report
    out = plan_iteration(args)
    report(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out

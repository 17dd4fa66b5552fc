"""Every program of one outer iteration planned together (issue 20): memory per chip, compile time, FLOPs.

resident_gib = what lives in HBM through the whole iteration, per chip: policy parameters (float32) and
AdamW moments, pi_ref (bfloat16), J-BOND's anchor (bfloat16) when the method has one, the oracle's model
(bfloat16, FROZEN_AXIS_RULES). Each program adds its transient bytes: its temporaries (the rollout's hold
its KV cache, freed when it returns), its outputs and the arguments that are not resident (prompts, the
batch). peak_gib = resident_gib + the largest program's transient bytes. Programs' memory and compile
time are those of the real (scanned) programs; FLOPs come from their unrolled 1- and 2-layer programs
(costs.extrapolate), the rollout's as its own plus (max_new_tokens - 1) decode steps (XLA counts the
decode loop's body once). model_flops: 2 N per token forward (rollout, reference, judge), 6 N per token
for the policy step. Every time and FLOP count is an estimate of XLA's cost model, not a measurement.
"""
from __future__ import annotations

import os
import sys
import time

from benchmarks.tpu_aot import costs, programs
from benchmarks.tpu_aot.cli import make_mesh, model_config, preset

ALL = ("rollout", "decode_step", "reference_logprobs", "judge", "policy_step")
COMPILE_GOAL_S = 120.0
PEAK_GOAL = 0.9


def _compile(lowered_fn):
    t0 = time.perf_counter()
    lowered = lowered_fn()
    lower_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    compiled = lowered.compile()
    return compiled, lower_s, time.perf_counter() - t0, time.process_time() - c0


def plan_iteration(args):
    import jax

    from wind_jax import sharding
    from wind_jax.train.on_mesh import frozen_shardings

    devices = costs.devices_for(args.platform, args.topology)
    mesh, mesh_shape = make_mesh(args, devices)
    chip = costs.chip_of(args.topology) if args.platform == "tpu" else None
    policy_cfg = model_config(args, param_dtype="float32")
    ref_cfg = policy_cfg.replace(param_dtype="bfloat16")
    judge_cfg = preset(args.judge, "--judge", dtype="bfloat16", param_dtype="bfloat16", remat=args.remat,
                       attention=policy_cfg.attention, scan_layers=args.scan_layers)
    shape = programs.iteration_shape(args.method, args.samples, args.batch, args.prompt_length,
                                     args.max_new_tokens, args.oracle)
    wanted = ALL if not args.programs else tuple(p.strip() for p in args.programs.split(","))
    bad = sorted(set(wanted) - set(ALL))
    if bad:
        raise SystemExit(f"--programs: unknown {bad} (known: {list(ALL)})")
    count = max(c for _, c in shape.draws)   # the largest draw's rollout (every draw is the same program)
    gib = costs.GIB

    # resident states, per chip (closed form from the shardings; no TPU tile padding)
    pg, pstate, _, opt_state, _ = programs.policy_parts(shape, policy_cfg)
    _, ref_state = programs.abstract_model(ref_cfg, "dpo", offset_head=False)
    _, jstate, _, _ = programs.judge_model(shape, judge_cfg)

    def placed(tree, shardings):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)

    policy_b = costs.shard_bytes(placed(pstate, sharding.state_shardings(pstate, mesh)))
    opt_b = costs.shard_bytes(placed(opt_state, sharding.state_shardings(opt_state, mesh)))
    ref_b = costs.shard_bytes(placed(ref_state, sharding.state_shardings(ref_state, mesh)))
    judge_b = costs.shard_bytes(placed(jstate, frozen_shardings(jstate, mesh)))
    uses_anchor = any(src == "anchor" for src, _ in shape.draws)
    resident = {"policy_params": policy_b / gib, "optimizer_state": opt_b / gib, "reference": ref_b / gib,
                "anchor": ref_b / gib if uses_anchor else 0.0, "judge": judge_b / gib}
    resident_gib = sum(resident.values())
    kv_gib = programs.kv_cache_bytes_per_chip(shape, policy_cfg, mesh, count) / gib
    resident_args = {"rollout": policy_b, "decode_step": policy_b, "reference_logprobs": ref_b,
                     "judge": judge_b, "policy_step": policy_b + opt_b}

    lowerers = {"rollout": (policy_cfg, lambda c, m: programs.lower_rollout(shape, c, m, count)),
                "decode_step": (policy_cfg, lambda c, m: programs.lower_decode(shape, c, m, count)),
                "reference_logprobs": (ref_cfg, lambda c, m: programs.lower_reference(shape, c, m)),
                "judge": (judge_cfg, lambda c, m: programs.lower_judge(shape, c, m)),
                "policy_step": (policy_cfg, lambda c, m: programs.lower_policy_step(shape, c, m))}
    if not shape.ref_names:
        wanted = tuple(w for w in wanted if w != "reference_logprobs")
    out_programs = {}
    for name in wanted:
        cfg, lower = lowerers[name]
        print(f"[{name}] compiling (load {os.getloadavg()[0]:.1f})", flush=True)
        out_programs[name] = _plan_program(name, cfg, lower, mesh, mesh_shape, args, resident_args[name] / gib,
                                           full=(name != "decode_step" or not args.scan_layers))
        print(f"[{name}] {_line(out_programs[name])}", flush=True)
    _add_decode_loop(out_programs, shape)
    _model_flops(out_programs, shape, policy_cfg.num_params, judge_cfg, count, len(devices))
    if "decode_step" in out_programs:
        _hbm_bound(out_programs["decode_step"], policy_b + kv_gib * gib, chip)

    transient = {k: p.get("transient_gib") for k, p in out_programs.items() if p.get("transient_gib") is not None}
    peak_program = max(transient, key=transient.get) if transient else None
    peak = resident_gib + (transient[peak_program] if peak_program else 0.0)
    out = {"mode": "iteration", "topology": args.topology, "platform": args.platform, "chips": len(devices),
           "mesh": dict(zip(sharding.MESH_AXES, mesh_shape)), "model": args.model, "judge": args.judge,
           "oracle": args.oracle, "method": args.method, "samples": shape.n, "prompts": shape.prompts,
           "prompt_length": shape.prompt_length, "max_new_tokens": shape.max_new_tokens,
           "pairs_per_prompt": shape.pairs, "num_params": policy_cfg.num_params,
           "judge_num_params": int(sum(x.size for x in jax.tree.leaves(jstate))),
           "remat": policy_cfg.remat, "attention": policy_cfg.attention,
           "resident": {**resident, "kv_cache (inside the rollout's temporaries)": kv_gib},
           "resident_gib": resident_gib, "peak_gib": peak, "peak_program": peak_program,
           "hbm_gib": None if chip is None else chip.hbm_gib, "programs": out_programs,
           "host_load_1min": os.getloadavg()[0], "jax": jax.__version__}
    out["goals"] = _goals(out, resident)
    return out


def _plan_program(name, cfg, lower, mesh, mesh_shape, args, resident_arg_gib, full=True) -> dict:
    rec = {}
    layer_cfg = lambda k: cfg.replace(num_layers=k, scan_layers=False)  # noqa: E731
    if full:
        try:
            compiled, lower_s, compile_s, cpu_s = _compile(lambda: lower(cfg, mesh))
        except Exception as e:  # noqa: BLE001 - e.g. RESOURCE_EXHAUSTED: a reason, not a crash
            return {"error": f"{type(e).__name__}: {str(e)[:400]}", "compile_s": None, "flops_per_chip": None}
        mem = costs.memory_of(compiled)
        rec.update(mem, lower_s=lower_s, compile_s=compile_s, compile_cpu_s=cpu_s,
                   transient_gib=max(0.0, mem["argument_gib"] - resident_arg_gib) + mem["temp_gib"]
                   + mem["output_gib"])
        cost, source, ignored = costs.cost_of(compiled), "compiler (the program itself)", {}
    if args.scan_layers and args.layer_costs:
        t0 = time.perf_counter()
        lc = costs.layer_costs(lambda k, m: lower(layer_cfg(k), m or mesh), cfg.num_layers, args.platform,
                               args.topology, mesh_shape)
        rec["layer_compiles_s"] = time.perf_counter() - t0
        cost, ignored = lc["cost"], lc.get("ignored", {})
        source = lc.get("source") or f"not computed: {lc['reason']}"
        if not full:
            rec["compile_s"] = rec["layer_compiles_s"]
            rec["note"] = ("memory of the 1- and 2-layer programs not extrapolated; the rollout program holds "
                           "this step inside its decode loop")
    elif args.scan_layers:
        cost, source = {}, "not computed (scanned: XLA counts the loop body once; see --layer-costs)"
    flops = cost.get("flops")
    rec.update(flops_per_chip=flops if flops and flops > 0 else None, bytes_per_chip=cost.get("bytes accessed"),
               optimal_seconds=cost.get("optimal_seconds"), cost_source=source, ignored_cost_keys=ignored)
    if rec["flops_per_chip"] is None:
        rec["flops_note"] = f"no positive FLOP count ({source})"
    return rec


def _add_decode_loop(progs, shape):
    """The rollout's decode loop body is counted once: add (max_new_tokens - 1) decode steps, key by key."""
    r, d = progs.get("rollout"), progs.get("decode_step")
    if not r or not d or r.get("flops_per_chip") is None:
        return
    extra = shape.max_new_tokens - 1
    for key in ("flops_per_chip", "bytes_per_chip", "optimal_seconds"):
        if r.get(key) and d.get(key):
            r[key] = r[key] + extra * d[key]
        elif r.get(key):
            r["ignored_cost_keys"][key] = "the decode step's value is missing: not scaled to every token"
            r[key] = None
    r["cost_source"] += f" + {extra} decode steps"


def _model_flops(progs, shape, n_policy, judge_cfg, count, chips):
    n_judge = judge_cfg.num_params
    b, tp, tn, t = shape.prompts, shape.prompt_length, shape.max_new_tokens, shape.length
    judge_passes = 2 if shape.oracle == "reward" else 1   # a reward model scores [x|a] and [x|b]
    model = {"rollout": 2.0 * n_policy * (b * tp + b * count * tn),
             "decode_step": 2.0 * n_policy * b * count,
             "reference_logprobs": 2.0 * n_policy * b * t * sum(shape.rows[r] for r in shape.ref_names),
             "judge": 2.0 * n_judge * judge_passes * b * shape.pairs * (2 if shape.oracle == "judge" else 1)
             * shape.judge_length,
             "policy_step": 6.0 * n_policy * b * t * sum(shape.rows.values())}
    for name, p in progs.items():
        p["model_flops_per_chip"] = model[name] / chips
        p["flops_ratio"] = p["flops_per_chip"] / p["model_flops_per_chip"] if p.get("flops_per_chip") else None


def _hbm_bound(dec, bytes_per_chip, chip):
    """Decode: (parameter + KV-cache bytes per chip) / HBM bandwidth against the cost model's estimate."""
    if chip is None:
        return
    est, source = costs.estimate_seconds({k: v for k, v in (("flops", dec.get("flops_per_chip")),
                                          ("bytes accessed", dec.get("bytes_per_chip")),
                                          ("optimal_seconds", dec.get("optimal_seconds"))) if v}, chip)
    bound = bytes_per_chip / chip.hbm_bytes_per_s
    dec.update(hbm_bound_s=bound, estimated_s=est, estimate_source=source,
               estimate_over_bound=est / bound if est else None)


def _goals(o, resident) -> dict:
    from benchmarks.tpu_aot.report import advice
    g = {"compile_under_120s": {k: (p.get("compile_s") is not None and p["compile_s"] < COMPILE_GOAL_S)
                                for k, p in o["programs"].items()}}
    failed = {k: p["error"] for k, p in o["programs"].items() if "error" in p}
    if o["hbm_gib"]:
        g["peak_within_90pct_hbm"] = o["peak_gib"] <= PEAK_GOAL * o["hbm_gib"]
        if not g["peak_within_90pct_hbm"]:
            g["over"] = advice(o, resident)
        elif failed:   # a program that did not compile may be the peak
            g["peak_within_90pct_hbm"] = None
    if failed:
        g["failed_programs"] = failed
    return g


def _line(p) -> str:
    if "error" in p:
        return f"FAILED: {p['error'][:200]}"
    mem = (f"args {p['argument_gib']:.2f} GiB, temps {p['temp_gib']:.2f} GiB, compile {p['compile_s']:.1f} s"
           if "argument_gib" in p else f"1-/2-layer compiles {p.get('compile_s', 0):.1f} s")
    flops = "FLOPs not computed" if p["flops_per_chip"] is None else f"FLOPs/chip {p['flops_per_chip']:.3e}"
    return f"{mem}, {flops}"


def report(o):
    from benchmarks.tpu_aot.report import print_iteration
    print_iteration(o)
    sys.stdout.flush()

"""Text of an iteration plan and, where the peak does not fit, which program / buffer is over and what
would change it."""
from __future__ import annotations

REMEDY = {
    "policy_step": "its activations: more micro-batches (num_micro_batches) or a smaller minibatch per step",
    "rollout": "its KV cache and logits: roll out the prompts in chunks, fewer samples per call, or a larger "
               "slice (the cache is split over the batch axes and kv heads)",
    "decode_step": "its KV cache: fewer rows per decode call",
    "reference_logprobs": "its activations: score the rows in chunks",
    "judge": "its activations: judge in smaller chunks (JudgeOracle batch_size)",
}
RESIDENT_REMEDY = {
    "optimizer_state": "AdamW moments in bfloat16, or a larger slice (they are split over every chip)",
    "policy_params": "bfloat16 master weights, or a larger slice",
    "judge": "a smaller judge / reward model, or offload it to host memory between the judging phases",
    "reference": "precompute pi_ref log-probs once per prompt set, or offload pi_ref between phases",
    "anchor": "offload the anchor between phases",
}


def advice(o, resident) -> list[str]:
    """One line per buffer that takes a large share of the peak, largest first."""
    hbm, peak, prog = o["hbm_gib"], o["peak_gib"], o["peak_program"]
    lines = [f"peak {peak:.2f} GiB > {0.9 * hbm:.1f} GiB (90% of {hbm:.0f} GiB) during {prog}; over by "
             f"{peak - 0.9 * hbm:.2f} GiB"]
    p = o["programs"].get(prog, {})
    parts = [(f"{prog} temporaries", p.get("temp_gib", 0.0), REMEDY.get(prog, ""))]
    parts += [(f"resident {k}", v, RESIDENT_REMEDY.get(k, "")) for k, v in resident.items() if v]
    for what, gib, remedy in sorted(parts, key=lambda x: -x[1]):
        if gib >= 0.1 * peak:
            lines.append(f"{what}: {gib:.2f} GiB -> {remedy}")
    lines.append("or a larger slice: every buffer above except replicated ones shrinks with the chip count")
    return lines


def print_iteration(o):
    hbm = o["hbm_gib"]
    pct = (lambda g: f" ({100 * g / hbm:.0f}% of {hbm:.0f} GiB)") if hbm else (lambda g: "")
    print(f"{o['method']} iteration: {o['model']} policy ({o['num_params'] / 1e9:.2f}B) + {o['judge']} "
          f"{o['oracle']} ({o['judge_num_params'] / 1e9:.2f}B) on {o['topology']} ({o['chips']} chips, mesh "
          f"{o['mesh']}); {o['prompts']} prompts x {o['samples']} samples, prompt {o['prompt_length']} + "
          f"response {o['max_new_tokens']} tokens, {o['pairs_per_prompt']} pair(s) per prompt")
    print("  resident per chip: " + ", ".join(f"{k} {v:.2f} GiB" for k, v in o["resident"].items()))
    print(f"  resident {o['resident_gib']:.2f} GiB; peak {o['peak_gib']:.2f} GiB{pct(o['peak_gib'])} during "
          f"{o['peak_program']}")
    for name, p in o["programs"].items():
        if "error" in p:
            print(f"  {name}: FAILED {p['error'][:300]}")
            continue
        mem = (f"args {p['argument_gib']:.2f} + temps {p['temp_gib']:.2f} GiB, compile {p['compile_s']:.1f} s "
               f"({p['compile_cpu_s']:.1f} CPU-s)" if "argument_gib" in p
               else f"1-/2-layer compiles {p['compile_s']:.1f} s")
        fl = (f"FLOPs/chip {p['flops_per_chip']:.3e} (x{p['flops_ratio']:.2f} of the model's)"
              if p["flops_per_chip"] else f"FLOPs not computed: {p.get('flops_note', '')}")
        print(f"  {name}: {mem}; {fl}")
        for k, why in p.get("ignored_cost_keys", {}).items():
            print(f"    cost key {k!r} left out: {why}")
        if p.get("estimate_over_bound"):
            print(f"    ESTIMATED {1e3 * p['estimated_s']:.2f} ms per token vs HBM bound {1e3 * p['hbm_bound_s']:.2f}"
                  f" ms: {p['estimate_over_bound']:.2f}x ({p['estimate_source']}; not a measurement)")
    g = o["goals"]
    slow = [k for k, ok in g["compile_under_120s"].items() if not ok]
    print(f"  goals: peak <= 90% HBM: {g.get('peak_within_90pct_hbm', 'n/a (no HBM figure)')}; "
          f"compile < 120 s: {'all' if not slow else 'not ' + ', '.join(slow)} (load {o['host_load_1min']:.1f})")
    for line in g.get("over", []):
        print(f"    {line}")

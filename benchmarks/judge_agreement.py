"""How often an LLM judge prefers the correct reply of the verifiable task (wind_jax.train.verifiable).

    python -m benchmarks.judge_agreement --judges self,outputs/gemma3/gemma-3-270m-q4_k_m.gguf \
        --json outputs/judge_agreement.json

pi_ref (SmolLM2-135M-Instruct) answers `--prompts` validation problems `--samples` times (temperature 1);
every duel of two replies of a prompt where exactly one is correct goes to each judge (wind_jax.train.oracle.
llm_judge: the A/B template, both presentation orders averaged; a judge of another vocabulary reads the decoded
texts). The verifier's gold preference for the correct reply is 1, so a judge that knows the task gives
P(correct beats wrong) near 1 and a judge that cannot tell gives 1/2. Printed per judge: the mean of that
probability (bootstrap interval over prompts), the share of duels it decides for the correct reply (Wilson
interval) and the mean |P - 1/2| (how decisive it is at all). "self" is the policy's own checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def duels(ro, tokens, mask):
    """(prompt index [D], prompt Tokens, correct-reply Tokens, wrong-reply Tokens) over the pairs i < j of each
    prompt's replies with exactly one correct."""
    from wind_jax.sampling import Tokens
    tp = tokens.shape[1]
    rows, good, bad = [], [], []
    for x in range(ro.correct.shape[0]):
        for i in range(ro.correct.shape[1]):
            for j in range(i + 1, ro.correct.shape[1]):
                if ro.correct[x, i] != ro.correct[x, j]:
                    win, lose = (i, j) if ro.correct[x, i] else (j, i)
                    rows.append(x), good.append((x, win)), bad.append((x, lose))
    rows = np.asarray(rows, np.int64)
    reply = lambda idx: Tokens(*(np.stack([a[x, m, tp:] for x, m in idx])  # noqa: E731
                                  for a in (ro.tokens, ro.response_mask)))
    return rows, Tokens(tokens[rows], mask[rows]), reply(good), reply(bad)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.judge_agreement", description=__doc__.split("\n")[0])
    ap.add_argument("--judges", default="self", help="comma list of 'self', .gguf files or Hugging Face dirs")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max_new_tokens", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16, help="duels per judge call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    import jax

    from wind_jax.train import verifiable as v
    from wind_jax.train.oracle import RetokenizingOracle, llm_judge
    from wind_jax.train.tasks import default_gguf, load_llm
    policy_path = default_gguf()
    _, policy, tok = load_llm(policy_path)
    problems = v.problems("validation", args.prompts, seed=args.seed)
    ro = v.rollout(policy, tok, problems, jax.random.key(args.seed), num_samples=args.samples,
                   max_new_tokens=args.max_new_tokens, eos_token_id=tok.eos_id)
    tokens, mask = v.encode_prompts(problems, tok)
    rows, prompt, good, bad = duels(ro, tokens, mask)
    out = {"policy": policy_path, "args": vars(args), "pi_ref_accuracy": float(ro.correct.mean()),
           "duels": int(len(rows)), "prompts_with_duels": int(len(set(rows.tolist()))), "judges": {}}
    print(f"pi_ref accuracy {ro.correct.mean():.3f}; {len(rows)} duels with one correct reply "
          f"on {out['prompts_with_duels']} prompts", flush=True)
    for name in [j.strip() for j in args.judges.split(",") if j.strip()]:
        t0 = time.perf_counter()
        model, judge_tok = (policy, tok) if name == "self" else load_llm(name)[1:]
        judge = llm_judge(model, judge_tok, tok, batch_size=args.batch)
        p = np.asarray(judge.probability(prompt, good, bad), np.float64)
        per_prompt = np.array([p[rows == x].mean() for x in np.unique(rows)])
        wins = int((p > 0.5).sum())
        out["judges"][name] = {
            "mean_p_correct": float(p.mean()), "mean_p_ci95": v.bootstrap_interval(per_prompt, seed=args.seed),
            "decides_for_correct": wins / len(p), "decides_ci95": v.wilson_interval(wins, len(p)),
            "mean_abs_p_minus_half": float(np.abs(p - 0.5).mean()), "p_range": [float(p.min()), float(p.max())],
            "retokenized": isinstance(judge, RetokenizingOracle), "queries": int(judge.num_queries),
            "seconds": round(time.perf_counter() - t0, 1)}
        r = out["judges"][name]
        print(f"{name}: P(correct beats wrong) {r['mean_p_correct']:.3f} {np.round(r['mean_p_ci95'], 3).tolist()}, "
              f"decides for the correct reply {r['decides_for_correct']:.3f} "
              f"{np.round(r['decides_ci95'], 3).tolist()}, mean |P - 1/2| {r['mean_abs_p_minus_half']:.4f}, "
              f"{r['seconds']} s", flush=True)
        del model
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json + ".tmp", "w") as f:
            json.dump(out, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return out


if __name__ == "__main__":
    main()

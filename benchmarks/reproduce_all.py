"""Regenerate every result figure of the project with one command (`make figures`):

  contextual_bandit/   Figure-1 analog on exact tabular games  (experiments.contextual_bandit)
  bandit/              Alg. 3 vs baselines on contextual bandits, tuned per method (benchmarks.bandit_study)
  llm_frontier/        every LLM method on its win-rate/KL curve vs the optimal frontier (benchmarks.llm_frontier)
  figure2/             Figure-2 analog, per-iteration time split (benchmarks.figure2)

    python -m benchmarks.reproduce_all --out_dir docs/figures   # not timed end to end: bandit 15-20 min,
                                                                # llm_frontier an estimated 1.5-2 h (2 CPU cores)
    python -m benchmarks.reproduce_all --only=contextual_bandit,bandit    # a subset

Each stage runs in its own process (a failure names the stage and its log). Heavy run directories
(checkpoints, metric logs) go under --work_dir; --out_dir receives only the figures, their JSON / markdown and
one log per stage, written to a temporary directory first and moved into place when the stage succeeds, so a
failed stage never leaves half-regenerated figures.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

STAGES = ("contextual_bandit", "bandit", "llm_frontier", "figure2")


def _commands(stage: str, tmp: str, work: str, size: str) -> tuple[list[list[str]], list[str]]:
    """(commands to run, globs under the work dir whose files are published) of one stage."""
    py = [sys.executable, "-m"]
    if stage == "contextual_bandit":
        return [py + ["experiments.contextual_bandit", f"--out_dir={tmp}"]], []
    if stage == "bandit":
        return [py + ["benchmarks.bandit_study", f"--out_dir={tmp}"]], []
    if stage == "llm_frontier":
        return ([py + ["benchmarks.llm_frontier", f"--out_dir={work}"]],
                [os.path.join(work, "compare", "comparison.*"), os.path.join(work, "compare", "*.png")])
    if stage == "figure2":
        return ([py + ["benchmarks.figure2", f"--out_dir={work}", f"--size={size}", f"--budget={b}"]
                 for b in ("prompts", "queries")],
                [os.path.join(work, size, "figure2_*")])
    raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")


def run_stage(stage: str, out_dir: str, work_dir: str, size: str, log=print) -> str:
    """Run one stage; on success replace <out_dir>/<stage> by its fresh outputs and return that path."""
    final = os.path.join(out_dir, stage)
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{stage}-", dir=out_dir)
    try:
        cmds, published = _commands(stage, tmp, work_dir, size)
        t = time.time()
        with open(os.path.join(tmp, "log.txt"), "w") as logf:
            for cmd in cmds:
                logf.write("$ " + " ".join(cmd[1:]) + "\n")
                logf.flush()
                rc = subprocess.call(cmd, stdout=logf, stderr=subprocess.STDOUT)
                if rc != 0:
                    keep = os.path.join(out_dir, f"{stage}.failed.log")
                    shutil.copy(os.path.join(tmp, "log.txt"), keep)
                    raise RuntimeError(f"stage {stage!r} failed (exit {rc}) running {' '.join(cmd[2:])}; log: {keep}")
        for pattern in published:
            for f in glob.glob(pattern):
                shutil.copy(f, tmp)
        for f in glob.glob(os.path.join(tmp, "*.json")):
            if os.path.getsize(f) > 2_000_000:  # keep the published tree small; the work dir has everything
                os.remove(f)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        log(f"[reproduce_all] {stage}: {time.time() - t:.0f} s -> {final}")
        return final
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out_dir", default="docs/figures", help="figures, JSON, markdown and logs")
    p.add_argument("--work_dir", default="outputs/reproduce_all", help="run directories (checkpoints)")
    p.add_argument("--size", default="small", help="size preset of the LLM stages (benchmarks/llm_results.py)")
    p.add_argument("--only", default=",".join(STAGES), help="comma-separated subset of " + ",".join(STAGES))
    a = p.parse_args(argv)
    stages = [s.strip() for s in a.only.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise SystemExit(f"--only: unknown or empty stages {unknown}; choose from {STAGES}")
    for s in stages:
        run_stage(s, os.path.abspath(a.out_dir), os.path.abspath(a.work_dir), a.size)


if __name__ == "__main__":
    main()

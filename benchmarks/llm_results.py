"""Shared machinery of the LLM-alignment results (benchmarks.llm_frontier: every method on its own win-rate /
KL curve against the optimal frontier; benchmarks.figure2: Figure-2 analog): size presets, per-method
budgets, running experiments.llm_alignment.run in one process (equal shapes share compiled programs),
reading its metric records, and formatting.

Budgets (MATH.md "Algorithm 3" and "Baselines"; accounting of wind_jax/train/loop.py, per prompt):
  wind_sq, wind_sq_offset, wind_kl, wind_nce   2 samples of pi_t, 1 query (one duel)
  dpo                                         n = 2 samples, n(n-1)/2 = 1 query (round robin)
  sppo, sppo_beta                             K = 5 samples, K(K-1)/2 = 10 queries
  jbond                                       1 sample of pi_t + 2 of the anchor, 3 queries
  bon_distill                                 n = 4 samples, 6 queries
  bonbon                                      n = 8 samples of pi_ref, 28 queries
(read from the method records of wind_jax.methods, so a changed n / K changes the counts)
An equal QUERY budget Q gives each method floor(Q / queries per prompt) prompts per iteration; an equal
SAMPLE budget S gives floor(S / samples per prompt). Every method keeps the same optimizer steps per
iteration. The measured counts are read back from the run's metrics.jsonl and reported next to the plan.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import time
from collections.abc import Mapping, Sequence

METHODS = ("wind_sq", "wind_sq_offset", "wind_kl", "wind_nce", "sppo", "sppo_beta", "jbond", "bonbon", "dpo",
           "bon_distill")
PHASES = ("sampling", "judging", "logprobs", "training", "eval", "other")


@dataclasses.dataclass(frozen=True)
class Size:
    """A run size: set-up steps (pre-training and head) and outer-loop shape. `base_prompts` is WIND's
    prompts per iteration; budgets are base_prompts queries or 2 * base_prompts samples per iteration."""
    pretrain_steps: int
    head_steps: int
    num_iterations: int
    base_prompts: int
    steps_per_iteration: int
    batch_size: int
    eval_prompts: int


SIZES = {
    # smoke tests only (not a result)
    "tiny": Size(pretrain_steps=60, head_steps=60, num_iterations=2, base_prompts=32, steps_per_iteration=4,
                 batch_size=32, eval_prompts=64),
    # default of the benchmarks: set-up as in experiments/configs/llm_alignment.py, half the prompts,
    # 4 outer iterations (the whole table about 11 min on 2 quiet CPU cores with the WIND sweep)
    "small": Size(pretrain_steps=300, head_steps=300, num_iterations=4, base_prompts=128, steps_per_iteration=16,
                  batch_size=64, eval_prompts=256),
    # the experiment's own defaults (experiments/configs/llm_alignment.py)
    "full": Size(pretrain_steps=300, head_steps=300, num_iterations=6, base_prompts=256, steps_per_iteration=16,
                 batch_size=64, eval_prompts=256),
}


def get_size(name: str) -> Size:
    if name not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {name!r}")
    return SIZES[name]


def per_prompt_cost(method: str, num_samples: int = 0) -> tuple[int, int]:
    """(samples, preference queries) one prompt costs `method` per outer iteration, read from its record in
    wind_jax.methods (num_samples = n / K; 0 = the method's default)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    from wind_jax.methods import get_method
    rec = get_method(method)
    n = rec.n(num_samples)
    return rec.total_samples(n), rec.queries(n)


def prompts_for_budget(method: str, budget: str, base_prompts: int, num_samples: int = 0) -> int:
    """Prompts per iteration giving `method` the budget of WIND at `base_prompts` prompts:
    budget="queries" (base_prompts queries), "samples" (2 * base_prompts samples) or "prompts" (equal prompts)."""
    if base_prompts < 1:
        raise ValueError(f"base_prompts must be >= 1, got {base_prompts}")
    samples, queries = per_prompt_cost(method, num_samples)
    if budget == "prompts":
        return base_prompts
    if budget == "queries":
        return max(1, base_prompts // queries)
    if budget == "samples":
        return max(1, (2 * base_prompts) // samples)
    raise ValueError(f'budget must be "queries", "samples" or "prompts", got {budget!r}')


# ------------------------------------------------------------------------------------------ running
def make_config(method: str, seed: int, size: Size, prompts: int, out_dir: str,
                loop_overrides: Mapping[str, float] | None = None,
                language_overrides: Mapping[str, float] | None = None):
    """The experiment's config (experiments/configs/llm_alignment.py) at this size; plots/TensorBoard off;
    `loop_overrides` replaces fields of config.loop (e.g. beta and eta of a KL sweep), `language_overrides`
    fields of config.language (a task variant, e.g. a larger nontransitive_strength)."""
    from experiments.configs.llm_alignment import get_config
    c = get_config()
    c.method, c.seed, c.out_dir = method, int(seed), out_dir
    c.plot, c.tensorboard = False, False
    c.pretrain.steps, c.head.steps = size.pretrain_steps, size.head_steps
    c.loop.num_iterations = size.num_iterations
    c.loop.prompts_per_iteration = int(prompts)
    c.loop.steps_per_iteration = size.steps_per_iteration
    c.loop.batch_size = size.batch_size
    c.loop.eval_prompts = size.eval_prompts
    for k, v in (loop_overrides or {}).items():
        if k not in c.loop:
            raise ValueError(f"loop_overrides: config.loop has no field {k!r}")
        setattr(c.loop, k, v)
    for k, v in (language_overrides or {}).items():
        if k not in c.language:
            raise ValueError(f"language_overrides: config.language has no field {k!r}")
        setattr(c.language, k, v)
    return c


def _quiet():
    from absl import logging
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO


def prepare_setup(root: str, seed: int, size: Size, language_overrides: Mapping[str, float] | None = None
                  ) -> str:
    """Pre-train the reference policy and the preference head of `seed` once (cached); returns its dir."""
    from wind_jax.train.tasks import synthetic_setup
    _quiet()
    setup_root = os.path.join(root, "setups", f"seed{seed}")
    c = make_config("wind_sq", seed, size, size.base_prompts, setup_root, language_overrides=language_overrides)
    synthetic_setup(c, setup_root)
    return os.path.join(setup_root, "setup")


def load_setup(root: str, seed: int, size: Size, language_overrides: Mapping[str, float] | None = None):
    """(config, lang, pi_ref, head, info) of the cached set-up of `seed` (prepare_setup first)."""
    from wind_jax.train.tasks import synthetic_setup
    _quiet()
    setup_root = os.path.join(root, "setups", f"seed{seed}")
    c = make_config("wind_sq", seed, size, size.base_prompts, setup_root, language_overrides=language_overrides)
    return (c, *synthetic_setup(c, setup_root))


def run_one(run_dir: str, method: str, seed: int, size: Size, prompts: int, setup_dir: str,
            fresh: bool = False, loop_overrides: Mapping[str, float] | None = None,
            language_overrides: Mapping[str, float] | None = None, keep_policy: bool = False):
    """One experiments.llm_alignment.run in this process (compiled programs are shared with earlier runs of
    equal shapes); the set-up of `seed` is copied in, so it is not trained again. Returns the iteration records.
    A finished run found in run_dir is resumed (returns at once) unless fresh=True. keep_policy=True returns
    (records, final policy) instead."""
    from experiments import llm_alignment
    _quiet()
    if fresh and os.path.exists(run_dir):
        shutil.rmtree(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    if not os.path.exists(os.path.join(run_dir, "setup")):
        shutil.copytree(setup_dir, os.path.join(run_dir, "setup"))
    c = make_config(method, seed, size, prompts, run_dir, loop_overrides, language_overrides)
    result = llm_alignment.run(c, progress=False, verbose=False)
    records = [r for r in result.history if r.get("kind") == "iteration"]
    return (records, result.policy) if keep_policy else records


# ------------------------------------------------------------------------------------------ reading
def _warm(records: Sequence[Mapping]) -> list[Mapping]:
    return [r for r in records if r.get("iteration", 0) >= 2 and "time/iteration" in r]


def warm(records: Sequence[Mapping]) -> list[Mapping]:
    """Iteration records after warm-up: iteration >= 2 (iteration 1 compiles the sampler / judge / step)."""
    out = _warm(records)
    if not out:
        raise ValueError("records: no iteration >= 2 with timings (num_iterations must be >= 2)")
    return out


def warm_seconds(records: Sequence[Mapping]) -> float:
    """Median wall seconds of a warm outer iteration (time/iteration of the warm records); NaN if none."""
    ws = _warm(records)
    return float(statistics.median(r["time/iteration"] for r in ws)) if ws else float("nan")


def phase_medians(records: Sequence[Mapping]) -> dict[str, float]:
    """Median seconds per warm iteration of each phase; "other" = iteration - sum of the timed phases
    (prompt fetching, optimizer reset, placing the batch on devices), "total" = median time/iteration."""
    ws = warm(records)
    named = PHASES[:-1]
    out = {p: statistics.median(r.get(f"time/{p}", 0.0) for r in ws) for p in named}
    out["other"] = statistics.median(max(r["time/iteration"] - sum(r.get(f"time/{p}", 0.0) for p in named), 0.0)
                                     for r in ws)
    out["total"] = warm_seconds(ws)
    return out


def summarize_run(records: Sequence[Mapping]) -> dict[str, float]:
    """Final gold win rate / KL, samples and queries per iteration, median warm seconds per iteration."""
    its = [r for r in records if r.get("iteration", 0) >= 1]
    if not its:
        raise ValueError("records: no finished outer iteration")
    last = its[-1]
    T = last["iteration"]
    return {"win_rate": last["eval/win_rate_vs_ref"], "win_rate_stderr": last["eval/win_rate_vs_ref_stderr"],
            "kl": last["eval/kl_to_ref"], "samples_per_iter": last["counts/samples"] / T,
            "queries_per_iter": last["counts/queries"] / T, "sec_per_iter": phase_medians(records)["total"],
            "iterations": T}


def mean_spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (ddof=1; 0 for one value), min and max."""
    v = [float(x) for x in values]
    if not v:
        raise ValueError("values: empty")
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return {"mean": statistics.fmean(v), "sd": sd, "min": min(v), "max": max(v), "n": len(v)}


def load_note() -> str:
    la = os.getloadavg()
    return f"load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} (1/5/15 min) on {os.cpu_count()} cores"


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")


def write_json(path: str, obj) -> str:
    """Write `obj` as JSON atomically (a temporary file moved into place: readers never see half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return path


def save_figure(fig, path: str) -> str:
    """Lay out, write (PNG, 110 dpi) and close a matplotlib figure; returns path."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

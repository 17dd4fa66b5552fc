"""What the comparison runs: each method's sweep over its own regularizer (SWEEPS, its CENTER point), the
non-transitive task variant, the run sizes and the Plan of a whole comparison."""
from __future__ import annotations

import dataclasses

import numpy as np

from benchmarks import llm_results as R

KL_TARGETS = (0.25, 0.5, 1.0, 2.0)
LAMBDAS = np.concatenate([[0.0], np.geomspace(0.05, 2000.0, 120)])

# method -> list of (label, loop overrides); loss_hparams is config.loop's "name=value" string. Every method gets
# the same number of points (the same search budget); CENTER is the point of the hyperparameter search and of
# the non-transitive comparison.
_WIND_GRID = [("b=0.3 e=1", {"beta": 0.3, "eta": 1.0}), ("b=0.1 e=3", {"beta": 0.1, "eta": 3.0}),
              ("b=0.03 e=10", {"beta": 0.03, "eta": 10.0}), ("b=0.01 e=30", {"beta": 0.01, "eta": 30.0})]
SWEEPS = {
    "wind_sq": _WIND_GRID,
    "wind_sq_offset": _WIND_GRID,
    "wind_kl": _WIND_GRID,
    "wind_nce": _WIND_GRID,
    "sppo": [(f"e={e:g}", {"eta": e}) for e in (1.0, 3.0, 10.0, 30.0)],
    "sppo_beta": _WIND_GRID,
    "dpo": [(f"b={b:g}", {"beta": b}) for b in (10.0, 2.0, 0.5, 0.2)],
    # J-BOND: the EMA rate of its anchor and the weight gamma of its KL(pi || anchor) term
    "jbond": [(f"ema={a:g}", {"anchor_ema": a}) for a in (0.003, 0.02, 0.1)]
             + [("ema=0.1 g=0.3", {"anchor_ema": 0.1, "loss_hparams": "gamma=0.3"})],
    "bon_distill": [(f"alpha={a:g}", {"loss_hparams": f"alpha={a:g}"}) for a in (0.97, 0.9, 0.5, 0.0)],
    "bonbon": [(f"n={n}", {"num_samples": n}) for n in (2, 3, 4, 8)],
}
CENTER = {"wind_sq": "b=0.03 e=10", "wind_sq_offset": "b=0.03 e=10", "wind_kl": "b=0.03 e=10",
          "wind_nce": "b=0.03 e=10", "sppo": "e=10", "sppo_beta": "b=0.03 e=10", "dpo": "b=2", "jbond": "ema=0.02",
          "bon_distill": "alpha=0.5", "bonbon": "n=4"}


def middle(m: str):
    """(label, overrides) of the method's CENTER point (hyperparameter search, non-transitive variant)."""
    return next(p for p in SWEEPS[m] if p[0] == CENTER[m])


# gold preference dominated by the cyclic (rock-paper-scissors over token classes) term
NONTRANSITIVE = {"nontransitive_strength": 6.0, "reward_scale": 0.1, "match_bonus": 0.1}

SIZES = {
    # the comparison (reduced from experiments/configs/llm_alignment.py: 200 pre-training / head steps instead
    # of 300, 4 outer iterations instead of 6, a 64-query budget per iteration, 8 steps of 64 rows)
    "compare": R.Size(pretrain_steps=200, head_steps=200, num_iterations=4, base_prompts=64, steps_per_iteration=8,
                      batch_size=64, eval_prompts=256),
    # --quick: smoke test of the whole pipeline (not a result)
    "quick": R.Size(pretrain_steps=30, head_steps=30, num_iterations=2, base_prompts=16, steps_per_iteration=2,
                    batch_size=32, eval_prompts=16),
}


@dataclasses.dataclass(frozen=True)
class Plan:
    size: str = "compare"
    seeds: tuple[int, ...] = (0, 1, 2)
    heldout_seed: int = 100
    methods: tuple[str, ...] = tuple(SWEEPS)
    lrs: tuple[float, ...] = (1e-3, 3e-3)
    steps: tuple[int, ...] = (8, 16)  # optimizer steps per outer iteration (searched with the lr)
    ref_samples: int = 256        # M pi_ref samples per eval prompt (frontier)
    ref_opponents: int = 64       # K fresh pi_ref opponents per prompt (w_ref estimate)
    exploit_samples: int = 64     # samples / opponents of pi_T for the exploitability proxy
    exploit_kl: float = 0.5
    nontransitive_seeds: tuple[int, ...] = (0, 1, 2)
    nontransitive_sweep_seeds: tuple[int, ...] = (0, 1, 2)  # every sweep point: exploitability at matched KL
    tournament_samples: int = 4   # samples per eval prompt and policy in the round robin
    win_targets: tuple[float, ...] = (0.55, 0.6)
    kl_budget: float = 1.0
    budgets: tuple[str, ...] = ("queries", "samples")  # equal per-iteration budgets swept ("queries" first)
    stage: str = "all"            # "setup": set-ups and frontiers only; "runs": also the runs; "all": everything
    reuse_only: bool = False      # tables from the finished runs only (missing runs are left out, not run)
    hp_curves: bool = True        # every grid configuration's whole sweep on the held-out seed (sensitivity)


QUICK = dict(size="quick", seeds=(0,), heldout_seed=1, lrs=(1e-3, 3e-3), steps=(2, 4), ref_samples=16,
             ref_opponents=8, exploit_samples=8, nontransitive_seeds=(0,), nontransitive_sweep_seeds=(0,),
             tournament_samples=2)  # --quick: Plan fields replaced (a smoke test, not a result)


def hp_key(hp: tuple[float, int]) -> str:
    """Display / JSON key of hyperparameters (learning rate, optimizer steps per outer iteration)."""
    return f"lr={hp[0]:g} k={hp[1]}"


def parse_hp(key: str) -> tuple[float, int]:
    """hp_key's inverse: "lr=0.003 k=8" -> (0.003, 8)."""
    lr, k = key.split()
    return float(lr.split("=")[1]), int(k.split("=")[1])


def run_name(method: str, label: str, lr: float, steps: int, default_steps: int) -> str:
    """Run directory name; the steps per iteration appear only when they differ from the size's default."""
    k = "" if steps == default_steps else f"_k{steps}"
    return f"{method}_{label}_lr{lr:g}{k}".replace(" ", "_").replace("=", "")

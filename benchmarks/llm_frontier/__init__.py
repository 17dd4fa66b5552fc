"""Every LLM-alignment method on its own win-rate / KL curve, judged by its gap below the Monte Carlo optimal
frontier of the synthetic task's pi_ref (issue 13; MATH.md "The optimal win-rate / KL frontier").

Stages (all in one process: equal shapes share compiled programs, and beta / eta / lr are traced):
  1. frontier: per set-up seed, M samples of pi_ref on the evaluation prompts of the loop (the same prompts the
     loop's eval uses), w_ref of each from EXACT gold probabilities against K fresh pi_ref samples, the tilt
     family by self-normalized reweighting (wind_jax.monte_carlo_frontier.mc_frontier) as a bracket: "upper" tilts and
     evaluates on the same w estimate (biased up by its noise), "lower" tilts on half the opponents and
     evaluates on the other half (a real policy, biased down); best-of-n points under w_ref.
  2. hyperparameter search: per method, the same grid (--lrs x steps per outer iteration) on a held-out set-up
     seed: every grid configuration's whole sweep (hp_curves); the matched-KL choice (matched.select_matched:
     among the configurations reaching the most KL targets, the smallest mean chord gap over the targets all of
     them reach). The former single-point rule (the CENTER point closest below the frontier, KL >= 0.1) is kept
     as a report (lr_search); --recheck reruns chosen methods' sweeps on the evaluation seeds at other
     configurations.
  3. sweep: each method over its own regularizer (SWEEPS: four points each), every seed, at an equal
     preference-QUERY budget per outer iteration (benchmarks/llm_results.py); queries, samples and warm seconds
     needed to reach a win rate within a KL budget are read from each run's per-iteration evaluations.
  4. non-transitive variant: gold preference dominated by the cyclic term (NONTRANSITIVE); per seed each method
     at its CENTER point; exploitability proxy = gold win rate against pi_T of the tilt of pi_T by its own gold
     win rates at KL budget --exploit_kl (lower is better); a round-robin tournament of the final policies under
     gold; agreement of the learned preference head with gold. On --nontransitive_sweep_seeds every sweep point
     runs, giving the exploitability proxy at matched KL.
  5. timing: each method's CENTER point once more on the held-out seed, the methods one after another in one
     process (--stage=all), so that warm seconds per iteration compare like with like; "seconds to reach" =
     iterations x that figure (compile excluded).

Gaps at matched KL use the chord rule (matched.py): between a seed's two bracketing sweep points the method is
their chord and the frontier its own chord between the same KLs. --review applies the review of the first
comparison (review.py: rescoring of committed results, paired bootstrap intervals against wind_sq, epochs,
equal-epochs and quarter-iteration runs).

A point above the frontier's upper curve by more than twice the combined standard error is flagged
("above_frontier") and printed: it is a bug to report, not a win.

    python -m benchmarks.llm_frontier --out_dir outputs/llm_frontier              # everything, one process
    python -m benchmarks.llm_frontier --quick --out_dir /tmp/llm_frontier_quick   # smoke (not a result)
Side by side: one `--stage=setup` process per group of seeds (--seeds, --heldout_seed, --nontransitive_seeds),
then several `--stage=runs` processes (each claims whole methods; once the searches are cached the first process
claims them all, so give such processes disjoint --methods), then `--stage=all` for the timing pass and tables.
Runs are compile-dominated on CPU: a method's first run compiles (minutes under load), later ones reuse it.

Writes <out_dir>/<size>/comparison.json, comparison.md, curves.png, nontransitive.png.

Modules: plan (sweeps, sizes, Plan), evaluation (draws, gold matrices, frontiers), runs (running, reusing,
set-ups), matched (chord gaps, matched-KL choice, epochs, paired bootstrap), scoring (points, resources to reach,
summary), search (stages 2-3), nontransitive (stage 4), comparison (all stages, timing, output), report (tables),
figures, review / review_tables / review_report (the review of the committed comparison); __main__.
"""
from benchmarks.llm_frontier.comparison import recheck, run_comparison
from benchmarks.llm_frontier.evaluation import frontier_at, gold_matrix, self_frontier
from benchmarks.llm_frontier.nontransitive import exploitability_at
from benchmarks.llm_frontier.plan import CENTER, KL_TARGETS, NONTRANSITIVE, SIZES, SWEEPS, Plan, middle
from benchmarks.llm_frontier.scoring import at_budget, choose_hp, cost_to_reach, curve_gaps, point

__all__ = ["CENTER", "KL_TARGETS", "NONTRANSITIVE", "SIZES", "SWEEPS", "Plan", "at_budget", "choose_hp",
           "cost_to_reach", "curve_gaps", "exploitability_at", "frontier_at", "gold_matrix", "middle", "point",
           "recheck", "run_comparison", "self_frontier"]

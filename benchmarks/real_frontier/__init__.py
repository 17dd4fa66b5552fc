"""WIND and its baselines on a real model (SmolLM2-135M-Instruct, the verifiable task of
wind_jax.train.verifiable) against the optimal win-rate / KL frontier estimated from pi_ref samples.

    python -m benchmarks.real_frontier --quick --out_dir outputs/real_frontier_quick        # slow-suite size
    python -m benchmarks.real_frontier --seeds 0,1,2 --out_dir outputs/real_frontier         # the measured run
    python -m benchmarks.real_frontier --seeds 0 --methods wind_sq,dpo --iterations 12 --queries 8 --steps 1 \
        --out_dir outputs/real_frontier_quarter     # the same queries and steps, evaluated every quarter iteration
    python -m benchmarks.real_frontier --report outputs/real_frontier/results.json           # tables again

Protocol (every number in the tables comes from the results.json the command writes):
- Every method runs the same outer loop (wind_jax.train.loop.AlignmentLoop) on the train split, the verifier
  as training oracle, LoRA on every projection, and is evaluated after EVERY iteration (iteration 0 = pi_ref)
  on the same `--eval_prompts` test prompts for every method and seed (`--eval_samples` replies each), KL
  from samples, win rate against pi_ref's per-prompt accuracy from `--frontier_samples` replies
  (analysis.curve; correctness preference: win rate = 1/2 + (acc - acc_ref)/2).
- Equal queries: `--queries` duels per iteration for every method (prompts per iteration = queries // its
  duels per prompt: wind_sq, wind_kl, dpo 1; sppo, sppo_beta K(K-1)/2 = 10 with K = 5).
- Equal steps: `--steps` optimizer steps of `--batch` rows per iteration, the same compute for every method;
  the passes over a method's own rows differ and are printed (`epochs`): SPPO draws fewer rows per query.
- Frontier: Monte Carlo estimate from pi_ref's replies judged by the verifier (biased up) and the closed form
  at the plug-in accuracies (biased down): they bracket the true frontier. Gaps at matched KL by the chord
  rule (analysis.py): both the method's curve and the frontier read on the straight line between the
  method's two points bracketing the target KL.
- Learning rate: with `--search_lrs`, each method's candidates run on the held-out training seeds
  (`--search_seeds`) and are scored on VALIDATION prompts (their own frontier) by the matched-KL rule, gaps
  averaged over those seeds (analysis.choose_lr); the chosen rate then runs on every seed and is scored on
  the test prompts. Without it, `--lr` for every method.
- Evaluations: after every iteration, and with `--eval_every_steps k` after every k optimizer steps inside
  one too (LoopConfig.eval_every_steps; the run's training is the same): denser curves, shorter chords.
- Paired comparison: each method minus wind_sq, per seed, averaged over seeds, with a bootstrap interval
  over evaluation prompts (analysis.paired_bootstrap); "ahead" / "behind" only where it excludes 0.
"""
from benchmarks.real_frontier.runs import LORA_TARGETS, METHODS, run_method  # noqa: F401

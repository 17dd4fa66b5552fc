"""wind_jax: WIND (win rate dominance) and iterative best-of-N distillation in JAX/Flax.

Subpackages: games (exact tabular solvers), losses (alignment losses + registry), bandit (practical WIND
with function approximation), models (Llama-family policy, heads, checkpoint conversion), sampling
(KV-cache sampler), sharding, train (pure steps, checkpointed outer loop, oracles), data (tfds builders).
Import them explicitly, e.g. `from wind_jax import games`.
"""

__version__ = "0.1.0"

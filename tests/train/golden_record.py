"""Record the golden numbers that the redesign must keep bit for bit (run once, before a refactor):

    python tests/train/golden_record.py      # writes tests/train/golden.json

loop: every loop method at the reduced size of tests/train/test_llm_alignment.py (8 fake devices, as the tests
run), its whole metric history except wall times; bandit: every method of make_methods + the offset
variants, one short make_run each on one game (exact metrics, counts, fit losses)."""
import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402


def loop_history(out_dir, method, **loop_overrides):
    from experiments import llm_alignment
    from experiments.configs.llm_alignment import get_config
    c = get_config()
    c.out_dir, c.method, c.seed = str(out_dir), method, 0
    c.plot = c.tensorboard = False
    c.model.update(dict(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1))
    c.pretrain.steps = c.head.steps = 20
    c.loop.update(dict(num_iterations=2, steps_per_iteration=2, prompts_per_iteration=16,
                       batch_size=16, eval_prompts=16, eval_samples_per_prompt=1))
    if method == "bon_distill":
        c.loop.loss_hparams = "alpha=0.5"
    c.loop.update(loop_overrides)
    res = llm_alignment.run(c, progress=False, verbose=False)
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in res.history]


def bandit_methods(beta, eta):
    """The bandit study's methods: make_methods plus the offset variants."""
    from wind_jax.bandit import algorithms
    ms = algorithms.make_methods(beta, eta)
    extra = [algorithms.with_offset(ms["wind_sq_offset"], "reset"),
             algorithms.with_offset(ms["wind_sq_offset"], "log_normalizer"),
             algorithms.with_offset(ms["wind_nce"], "learned", pseudo_count=0.5)]
    return {**ms, **{m.name: m for m in extra}}


def bandit_runs(only=None):
    """Every bandit method (or those named in `only`), 4 outer iterations x 5 inner steps, 2 seeds, on one
    non-transitive realizable game (X = 4, Y = 6), beta = 0.2, eta = 1."""
    import jax
    import jax.numpy as jnp
    import optax
    from wind_jax.bandit import algorithms
    try:
        from wind_jax.bandit.settings import equilibrium, make_setting
    except ImportError:
        from experiments.bandit_sample_efficiency import equilibrium, make_setting
    key = jax.random.key(3)
    P, policy, theta_ref = make_setting("nontransitive", "realizable", key, 4, 6, 2.0, 8)
    _, pi_star64 = equilibrium(policy, theta_ref, P, 0.2)
    pi_star = jnp.asarray(pi_star64, jnp.float32)
    states = jax.vmap(lambda k: algorithms.init_state(theta_ref, 4, k))(jax.random.split(jax.random.fold_in(key, 1), 2))
    out = {}
    for name, m in bandit_methods(0.2, 1.0).items():
        if only is not None and name not in only:
            continue
        batch = max(1, 24 // m.queries_per_prompt)
        run = jax.jit(algorithms.make_run(m, batch, optax.adam, 5, 4))
        o = jax.device_get(run(policy, algorithms.method_params(m, learning_rate=0.05, num_inner=5), states, P,
                               theta_ref, pi_star, jnp.asarray(True), jnp.asarray(4, jnp.int32)))
        out[name] = {"batch": batch, "metrics": {k: np.asarray(v).tolist() for k, v in o.metrics.items()},
                     "samples": np.asarray(o.samples).tolist(), "queries": np.asarray(o.queries).tolist(),
                     "fit_loss": np.asarray(o.fit_loss).tolist()}
        print(name, out[name]["metrics"]["kl_to_equilibrium"][0][-1], flush=True)
    return out


if __name__ == "__main__":
    import tempfile
    from wind_jax.methods import METHODS
    out = {"bandit": bandit_runs(), "loop": {}}
    for m in METHODS:
        with tempfile.TemporaryDirectory() as d:
            out["loop"][m] = loop_history(d, m)
            print(m, out["loop"][m][-1], flush=True)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=0, sort_keys=True)
    print("wrote", path)

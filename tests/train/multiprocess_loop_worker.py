"""Worker for tests/train/test_multiprocess.py::test_loop_two_processes_equals_one: one of N jax.distributed CPU
processes (4 fake devices each) running the outer loop on an (N * 4, 1, 1) mesh, each process sampling and
judging its own slice of every iteration's prompts.

Usage: python tests/train/multiprocess_loop_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR RESULT.npz
Also imported by the test for the single-process reference (`make_loop`). Every process prints
"global_step K" as each policy step's record is logged (at once: a checkpoint every step flushes them)
and, where a SIGTERM stopped the run (LoopResult.preempted), "PREEMPTED K <message>" instead of writing
RESULT.npz (tests/train/test_preemption_runs.py).
"""
import os
import sys

LOCAL_DEVICES = 4


def make_loop(out_dir, mesh):
    import jax  # noqa: F401
    from flax import nnx

    from wind_jax.models import LlamaConfig, Transformer
    from wind_jax.train import AlignmentLoop, FunctionPrompts, LoopConfig
    from wind_jax.train.oracle import GoldOracle
    from wind_jax.train.synthetic import EOS, PAD, SyntheticLanguage

    lang = SyntheticLanguage(vocab_size=12, prompt_len=3, max_response_len=4)
    model_cfg = LlamaConfig(vocab_size=lang.vocab_size, hidden_size=16, intermediate_size=32, num_layers=1,
                            num_heads=2, num_kv_heads=1, max_position_embeddings=32, tie_word_embeddings=False)
    cfg = LoopConfig(method="sppo", num_iterations=2, prompts_per_iteration=8, steps_per_iteration=2, batch_size=8,
                     num_samples=3, eval_prompts=8, eval_samples_per_prompt=1, max_new_tokens=lang.response_width,
                     eos_token_id=EOS, pad_token_id=PAD, async_checkpoint=False, learning_rate=1e-3, eta=2.0,
                     checkpoint_every_steps=1, seed=5)
    return AlignmentLoop(cfg, policy=Transformer(model_cfg, rngs=nnx.Rngs(0)), oracle=GoldOracle(lang.gold_preference),
                         out_dir=out_dir, prompts=FunctionPrompts(lang.sample_prompts, seed=1),
                         eval_oracle=GoldOracle(lang.gold_preference),
                         eval_prompts=FunctionPrompts(lang.sample_prompts, seed=2), tensorboard=False,
                         progress=False, mesh=mesh)


def gathered(tree):
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    leaves = jax.tree.leaves(tree)
    return [np.asarray(x) for x in multihost_utils.process_allgather(leaves, tiled=True)]


def main(process_id, num_processes, port, out_dir, result):
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import numpy as np

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from wind_jax import sharding

    assert sharding.initialize(f"localhost:{port}", num_processes, process_id)
    mesh = sharding.make_mesh((num_processes * LOCAL_DEVICES, 1, 1))
    loop = make_loop(out_dir, mesh)
    log = loop._log

    def log_and_print(record, kind):
        log(record, kind)
        if kind == "step":
            print(f"global_step {record['global_step']}", flush=True)
    loop._log = log_and_print
    res = loop.run()
    loop.close()
    if res.preempted:
        print(f"PREEMPTED {loop.counters['global_step']} {res.preempted}", flush=True)
        jax.distributed.shutdown()
        return
    params = gathered(loop.state)
    if process_id == 0:
        wins = [r["eval/win_rate_vs_ref"] for r in res.history if r["kind"] == "iteration"]
        np.savez(result, wins=np.asarray(wins), **{f"p{i}": p for i, p in enumerate(params)})
    jax.distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])

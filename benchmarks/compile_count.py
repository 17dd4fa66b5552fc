"""XLA programs compiled by the LLM-alignment run, per phase, in a fresh process (JAX_LOG_COMPILES records):
the synthetic set-up (pre-training + preference head), iteration 1 of the loop (sampling, judging, batch,
training, evaluation) and later iterations (which must compile nothing). A program named after a single
primitive (add, concatenate, gather, ...) is an eager one-op program: host glue that escaped a jitted program.

    python -m benchmarks.compile_count --method=wind_sq            # the default synthetic config
    python -m benchmarks.compile_count --method=sppo --json=/tmp/compiles.json

Also prints the warm-iteration share of each phase of the loop's own timers (time/*), "other" being the
host-side glue outside the timed phases.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
from collections import Counter


class _Compiles(logging.Handler):
    """Collects the names of programs XLA finished compiling (jax_log_compiles)."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("Finished XLA compilation of "):
            self.names.append(msg[len("Finished XLA compilation of "):].split(" in ")[0])


def _is_one_op(name: str) -> bool:
    """jit(<primitive>) programs that JAX builds for an eager op on a jax.Array."""
    import jax
    inner = name[len("jit("):-1] if name.startswith("jit(") else name
    prims = {p.name for p in vars(jax.lax).values() if hasattr(p, "name") and hasattr(p, "bind")}
    prims |= {"convert_element_type", "broadcast_in_dim", "concatenate", "gather", "scatter", "dynamic_slice",
              "bernoulli", "fold_in", "random_bits", "random_split", "random_wrap", "random_seed", "iota",
              "add", "mul", "sub", "div", "select_n", "squeeze", "reshape", "transpose", "copy", "copy_p"}
    return inner in prims


def count(method: str = "wind_sq", num_iterations: int = 3, overrides=()) -> dict:
    import jax
    jax.config.update("jax_log_compiles", True)
    handler = _Compiles()
    for name in ("jax._src.dispatch", "jax._src.interpreters.pxla"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger(name).propagate = False
    from experiments.configs.llm_alignment import get_config
    from wind_jax.train import tasks
    c = get_config()
    c.method, c.plot, c.tensorboard = method, False, False
    c.loop.num_iterations = num_iterations
    for item in overrides:
        k, v = item.split("=", 1)
        node = c
        *path, leaf = k.split(".")
        for p in path:
            node = node[p]
        node[leaf] = type(node[leaf])(v)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        c.out_dir = tmp
        loop = tasks.build_loop(c, progress=False, verbose=False).loop
        out["setup"] = list(handler.names)
        handler.names.clear()
        phases: dict[int, list[str]] = {}
        orig = loop.evaluate

        def evaluate(t):  # iteration t's compiles end with its evaluation
            res = orig(t)
            phases[t] = list(handler.names)
            handler.names.clear()
            return res
        loop.evaluate = evaluate
        result = loop.run()
        loop.close()
    out["evaluation_0"] = phases.get(0, [])
    out["iteration_1"] = phases.get(1, [])
    out["later_iterations"] = [n for t, names in phases.items() if t >= 2 for n in names]
    its = [r for r in result.history if r["kind"] == "iteration" and r["iteration"] >= 2]
    shares = {}
    if its:
        keys = ("sampling", "judging", "logprobs", "training", "eval")
        total = statistics.median(r["time/iteration"] for r in its)
        for k in keys:
            shares[k] = statistics.median(r.get(f"time/{k}", 0.0) for r in its) / total
        shares["other"] = 1.0 - sum(shares.values())
        shares["seconds"] = total
    return {"method": method, "compiles": {k: len(v) for k, v in out.items()},
            "one_op": {k: [n for n in v if _is_one_op(n)] for k, v in out.items()},
            "programs": {k: dict(Counter(v)) for k, v in out.items()}, "warm_iteration_share": shares}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", default="wind_sq")
    p.add_argument("--num_iterations", type=int, default=3)
    p.add_argument("--set", action="append", default=[], help="config override key=value, e.g. loop.prompts_per_iteration=64")
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    res = count(a.method, a.num_iterations, a.set)
    for phase, n in res["compiles"].items():
        print(f"{phase:18s} {n:3d} programs, {len(res['one_op'][phase])} one-op: {res['programs'][phase]}")
    if res["warm_iteration_share"]:
        print("warm iteration share: " + ", ".join(f"{k} {v:.2f}" for k, v in res["warm_iteration_share"].items()))
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

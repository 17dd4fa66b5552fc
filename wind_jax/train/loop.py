"""The Orbax-checkpointed outer loop on a device mesh, one for every method (MATH.md "Algorithm 3",
"Baselines"; the methods are records of wind_jax.methods).

Each outer iteration t: the collector (wind_jax.train.rollout) samples, judges and assembles the
iteration's batch -> `steps_per_iteration` sharded policy steps (wind_jax.train.steps.jit_policy_step: beta,
eta and the learning rate traced, the minibatch gathered inside the step) -> evaluation
(wind_jax.train.evaluate: gold win rate vs pi_ref, KL(pi_t || pi_ref) from samples; queries, samples, wall
time split into sampling / judging / batch / training) -> checkpoint.

Determinism and crash safety: random keys are derived on the host from (seed, iteration, purpose) and
prompts come from position-indexed streams, so the global batch is the same whatever the number of
processes. A checkpoint holds named pytrees {"policy", "opt", "anchor", "offset"} (readable without the
module tree), the RNG key and counters; inside an iteration a checkpoint every `checkpoint_every_steps`
steps also stores the iteration's batch, so a resumed run continues from the exact step. On resume
metrics.jsonl is truncated to the checkpoint. Non-finite losses or gradients stop the run before any save,
and oracle answers are checked (shape, finite, in [0, 1]) before they are used.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from wind_jax import sharding
from wind_jax.models import Transformer
from wind_jax.models.lora import apply_lora
from wind_jax.train.checkpoint import Checkpointer, abstract_like, from_named, named
from wind_jax.train.config import LoopConfig
from wind_jax.train.evaluate import Evaluator
from wind_jax.train.metrics import MetricsLogger, progress_bar, read_jsonl
from wind_jax.train.oracle import PreferenceOracle
from wind_jax.train.preemption import PreemptionGuard
from wind_jax.train.programs import PROGRAMS, signature
from wind_jax.train.rollout import Collector, NonFiniteError, PromptStream, Timer
from wind_jax.train.steps import (OptimizerConfig, PolicyWithOffset, init_optimizer_state, jit_policy_step,
                                  make_optimizer)


def _frozen_copy(state, mesh, dtype=None):
    """A copy of `state` laid out on `mesh` by its logical axes (never aliasing the caller's buffers: steps
    donate), floating leaves cast to `dtype` when given (pi_ref and the anchor in the compute dtype)."""
    state = sharding.shard_state(state, mesh, copy=True)
    if dtype is None:
        return state
    return jax.tree.map(lambda x: x.astype(dtype) if jax.numpy.issubdtype(x.dtype, jax.numpy.floating) else x, state)


@jax.jit
def _ema(anchor, policy, lam):
    """theta_a <- (1 - lam) theta_a + lam theta (J-BOND's anchor; MATH.md Baselines)."""
    return jax.tree.map(lambda a, p: (1.0 - lam) * a + lam * p.astype(a.dtype), anchor, policy)


@dataclasses.dataclass
class LoopResult:
    policy: Any              # the trained wind_jax Transformer (pi_T, or pi_t where a preemption stopped it)
    history: list[dict]      # every metric record (step and iteration)
    out_dir: str
    preempted: str = ""      # where a SIGTERM stopped the run (saved; the same command resumes), "" otherwise


class AlignmentLoop:
    """Build once, then `run()`. See the module docstring for the data flow.

    policy: the Transformer to align (pi_0), or a zero-argument function building it (initialized
    directly into sharded arrays); reference: pi_ref (default: a frozen copy of the policy); oracle: the
    training preference oracle; eval_oracle: the evaluator's gold oracle (None: no win rate); prompts /
    eval_prompts: PromptStreams; mesh: the device mesh (default: every device on "data"); run_config:
    extra config (e.g. the experiment's) stored with checkpoints and compared on resume.
    """

    def __init__(self, config: LoopConfig, *, policy, oracle: PreferenceOracle, prompts: PromptStream,
                 out_dir: str, reference=None, eval_oracle: PreferenceOracle | None = None,
                 eval_prompts: PromptStream | None = None, run_config: Mapping[str, Any] | None = None,
                 mesh: Mesh | None = None, tensorboard: bool = True, progress: bool | None = None,
                 verbose: bool = False):
        self.cfg = config
        self.method = config.method_record
        self.spec = self.method.spec
        self.out_dir = os.path.abspath(out_dir)
        self.mesh = mesh if mesh is not None else sharding.make_mesh(sharding.MeshConfig())
        self.oracle = oracle
        self.is_main = jax.process_index() == 0
        self.verbose, self.progress = verbose, progress
        for name in ("prompts_per_iteration", "eval_prompts"):  # (a batch not divisible by the mesh is replicated)
            if getattr(config, name) % jax.process_count():
                raise ValueError(f"LoopConfig.{name}={getattr(config, name)} must be divisible by the "
                                 f"{jax.process_count()} processes")

        # Policy (+ LoRA adapters, + offset head), reference, anchor: sharded on the mesh by their logical axes.
        self.trainable = "lora" if config.lora_rank else "all"
        base = policy if isinstance(policy, nnx.Module) else nnx.eval_shape(policy)
        if not isinstance(base, Transformer):
            raise ValueError(f"policy must be a wind_jax Transformer (or a function building one), "
                             f"got {type(base).__name__}")
        self.policy_graphdef = nnx.split(base)[0]
        self.model_config = base.config

        def wrap(model):
            if config.lora_rank:
                model = apply_lora(model, config.lora_rank, config.lora_alpha, config.lora_targets,
                                   rngs=nnx.Rngs(config.seed))
            if self.method.needs_offset:
                model = PolicyWithOffset(model, rngs=nnx.Rngs(config.seed))
            return model

        if isinstance(policy, nnx.Module):
            self.graphdef, state = nnx.split(wrap(policy))
            self.state = _frozen_copy(state, self.mesh)
        else:
            self.graphdef, self.state = sharding.create_sharded_state(lambda: wrap(policy()), self.mesh)
        frozen = self.model_config.dtype if config.frozen_dtype == "compute" else None
        ref = self._sampling_state(self.state) if reference is None or reference is policy else nnx.split(reference)[1]
        self.ref_state = _frozen_copy(ref, self.mesh, frozen)   # a copy of pi_0 (never of the caller's arrays)
        self.anchor_state = _frozen_copy(self.ref_state, self.mesh) if self.method.uses("anchor") else None
        self.tx = make_optimizer(OptimizerConfig(name=config.optimizer, learning_rate=float(config.learning_rate),
                                                 max_grad_norm=float(config.max_grad_norm),
                                                 injectable_learning_rate=True))
        self.opt_state = init_optimizer_state(self.tx, self.state, self.mesh, trainable=self.trainable)
        self.collector = Collector(config, policy_graphdef=self.policy_graphdef, mesh=self.mesh, prompts=prompts,
                                   oracle=oracle)
        self.evaluator = Evaluator(self.collector, eval_prompts or prompts, eval_oracle)
        self.run_config = {"loop": dataclasses.asdict(config), **(dict(run_config or {}))}
        self.ckpt = Checkpointer(os.path.join(self.out_dir, "checkpoints"), config=self.run_config,
                                 max_to_keep=config.max_to_keep, async_save=config.async_checkpoint)
        self.logger = MetricsLogger(self.out_dir, tensorboard=tensorboard and self.is_main) if self.is_main else None
        self.counters = {"queries": 0, "samples": 0, "global_step": 0}
        self._pending: list[tuple[dict, Any]] = []

    # ---------------------------------------------------------------------------- models
    def policy_model(self):
        """The current policy pi_t as a plain wind_jax Transformer (LoRA adapters merged in)."""
        return nnx.merge(self.policy_graphdef, self._sampling_state(self.state))

    def ref_model(self):
        """pi_ref as a wind_jax Transformer."""
        return nnx.merge(self.policy_graphdef, self.ref_state)

    def _sampling_state(self, state):
        """The plain Transformer state of the policy: the offset head left out, LoRA adapters merged in
        (one jitted program)."""
        if self.trainable == "lora":
            graphdef, mesh = self.graphdef, self.mesh

            def merged(s):
                module = nnx.merge(graphdef, s)
                module = module.policy if isinstance(module, PolicyWithOffset) else module
                return nnx.split(module.merged())[1]

            def build():
                out = jax.eval_shape(merged, state)
                return jax.jit(merged, out_shardings=sharding.state_shardings(out, mesh))
            return PROGRAMS.get(("lora_merge", graphdef, mesh, signature(state)), build)(state)
        return state["policy"] if self.method.needs_offset else state

    def _trained_parts(self, state) -> dict:
        """What a checkpoint holds of the trained module: {"policy": ..., "offset": ...} (LoRA: adapters only)."""
        policy = state["policy"] if self.method.needs_offset else state
        if self.trainable == "lora":
            policy = nnx.split_state(policy, nnx.LoRAParam, ...)[0]
        parts = {"policy": policy}
        if self.method.needs_offset:
            parts["offset"] = state["offset_head"]
        return parts

    def run_info(self) -> dict:
        """Mesh and parameter bytes held per device (written to <out_dir>/run.json)."""
        leaves = jax.tree.leaves(self.state)
        dev = self.mesh.devices.flat[0]
        per_device = sum(s.data.nbytes for x in leaves for s in x.addressable_shards if s.device == dev)
        return {"mesh": {k: int(v) for k, v in self.mesh.shape.items()}, "processes": jax.process_count(),
                "param_bytes_per_device": int(per_device), "param_bytes_total": int(sum(x.nbytes for x in leaves)),
                "method": self.cfg.method, "samples_per_prompt": self.cfg.samples_per_prompt,
                "queries_per_prompt": self.cfg.queries_per_prompt}

    def _say(self, msg: str):
        if self.is_main and self.verbose:
            print(msg, flush=True)

    def build_batch(self, t: int, timer: Timer | None = None) -> dict:
        """Sample, judge and assemble the iteration batch (wind_jax.train.rollout)."""
        models = {"policy": self._sampling_state(self.state), "reference": self.ref_state,
                  "anchor": self.anchor_state}
        batch = self.collector.collect(t, models, timer or Timer())
        self.counters["samples"] += self.cfg.samples_per_prompt * self.cfg.prompts_per_iteration
        self.counters["queries"] += self.cfg.queries_per_prompt * self.cfg.prompts_per_iteration
        return batch

    def evaluate(self, t: int, step: int = 0) -> dict:
        """Gold win rate of pi_t vs pi_ref and KL(pi_t || pi_ref) (wind_jax.train.evaluate); step > 0: the
        policy after `step` optimizer steps of iteration t."""
        return self.evaluator.evaluate(t, self._sampling_state(self.state), self.ref_state, step)

    # ---------------------------------------------------------------------------- checkpoints
    def _ckpt_id(self, t: int, k: int) -> int:
        return t * (self.cfg.steps_per_iteration + 1) + k

    def _tree(self) -> dict:
        tree = {k: named(v) for k, v in self._trained_parts(self.state).items()}
        tree["opt"] = named(self.opt_state)
        if self.anchor_state is not None:
            tree["anchor"] = named(self.anchor_state)
        return tree

    def _save(self, t: int, k: int, batch=None):
        self._flush()
        meta = {"iteration": t, "step_in_iteration": k, "counters": dict(self.counters),
                "data_position": t * self.cfg.prompts_per_iteration, "oracle": self.oracle.state_dict()}
        self.ckpt.save(self._ckpt_id(t, k), self._tree(), meta, extra=batch)  # CheckpointWriteError names it

    def _restore(self):
        """-> (iteration, step_in_iteration, batch or None), or None when there is no checkpoint."""
        step = self.ckpt.latest_step()
        if step is None:
            return None
        meta = self.ckpt.read_meta(step)
        extra_target = None
        if meta.get("has_extra"):
            extra_target = abstract_like(self.collector.batch_template(self.ref_state, self.anchor_state))
        tree, meta, batch = self.ckpt.restore(step, target=abstract_like(self._tree()), extra_target=extra_target)
        parts = {k: from_named(v, tree[k], k) for k, v in self._trained_parts(self.state).items()}
        current = self.state["policy"] if self.method.needs_offset else self.state
        policy = nnx.merge_state(current, parts["policy"]) if self.trainable == "lora" else parts["policy"]
        if self.method.needs_offset:
            self.state["policy"], self.state["offset_head"] = policy, parts["offset"]
        else:
            self.state = policy
        self.opt_state = from_named(self.opt_state, tree["opt"], "opt")
        if self.anchor_state is not None:
            self.anchor_state = from_named(self.anchor_state, tree["anchor"], "anchor")
        self.counters = dict(meta["counters"])
        self.oracle.load_state_dict(meta["oracle"])
        if self.is_main:  # drop the records written after this checkpoint
            gs, t = self.counters["global_step"], int(meta["iteration"])
            keep = [r for r in (read_jsonl(self.logger.path) if os.path.exists(self.logger.path) else [])
                    if (r["kind"] == "step" and r["global_step"] <= gs)
                    or (r["kind"] == "iteration" and r["iteration"] <= t)
                    or (r["kind"] == "eval" and r["global_step"] <= gs)]
            self.logger.reset(keep)
        return int(meta["iteration"]), int(meta["step_in_iteration"]), batch

    # ---------------------------------------------------------------------------- metrics
    def _log(self, rec: dict, kind: str):
        if self.logger is not None:
            self.logger.log(rec, kind=kind)

    def _flush(self):
        """Step metrics stay on the device until here (once per iteration and before each save)."""
        if not self._pending:
            return
        values = jax.device_get([m for _, m in self._pending])
        for (rec, _), m in zip(self._pending, values):
            bad = [k for k in ("loss", "grad_norm") if not np.isfinite(m[k])]
            if bad:
                raise NonFiniteError(f"non-finite {bad} at iteration {rec['iteration']}, step {rec['step']} "
                                     f"(oracle {self.oracle.name!r}); nothing after the last checkpoint was saved")
            self._log({**rec, **{f"train/{k}": v for k, v in m.items()}}, "step")
        self._pending = []

    def _report(self, rec: dict):
        win = rec.get("eval/win_rate_vs_ref")
        win = "" if win is None else f"win rate vs ref {win:.3f} ± {rec.get('eval/win_rate_vs_ref_stderr', 0):.3f}, "
        if "eval/accuracy" in rec:
            win = f"accuracy {rec['eval/accuracy']:.3f} (pi_ref {rec['eval/accuracy_ref']:.3f}), " + win
        secs = rec.get("time/iteration")
        where = f"iteration {rec['iteration']}/{self.cfg.num_iterations}"
        if "step" in rec:
            where = f"iteration {rec['iteration'] + 1}/{self.cfg.num_iterations}, step {rec['step']}"
        self._say(f"[{self.cfg.method}] {where}: {win}"
                  f"KL {rec['eval/kl_to_ref']:.3f}, queries {rec['counts/queries']}"
                  + ("" if secs is None else f", {secs:.1f} s"))

    # ---------------------------------------------------------------------------- run
    def run(self) -> LoopResult:
        """Run (or resume) to the last iteration. A SIGTERM (TPU VM preemption) stops it after the current policy
        step, at a step every process agrees on, with a checkpoint saved there (`LoopResult.preempted`)."""
        guard = PreemptionGuard()
        if threading.current_thread() is threading.main_thread():  # Python delivers signals there only
            guard.install()
        try:
            return self._run(guard)
        finally:
            guard.uninstall()

    def _run(self, guard: PreemptionGuard) -> LoopResult:
        cfg = self.cfg
        S = cfg.steps_per_iteration
        if self.is_main:
            os.makedirs(self.out_dir, exist_ok=True)
            with open(os.path.join(self.out_dir, "run.json"), "w") as f:
                json.dump(self.run_info(), f, indent=1)
        resumed = self._restore()
        if resumed is None:
            if self.logger is not None:
                self.logger.reset([])  # records of a run killed before its first checkpoint
            t0, k0, batch = 0, 0, None
            rec = {"iteration": 0, "global_step": 0, "counts/queries": 0, "counts/samples": 0, **self.evaluate(0)}
            self._log(rec, "iteration")
            self._report(rec)
        else:
            t0, k0, batch = resumed
            self._say(f"[{cfg.method}] resumed at iteration {t0}, step {k0} from {self.ckpt.directory}")
        bar = progress_bar(cfg.num_iterations * S, desc=cfg.method,
                           disable=None if self.progress is None else not self.progress)
        bar.update(t0 * S + k0)
        for t in range(t0, cfg.num_iterations):
            timer, it_start = Timer(), time.perf_counter()
            static, dynamic = cfg.hparams(t)
            lr = cfg.value("learning_rate", t)
            if k0 == 0 or batch is None:
                k0 = 0
                batch = self.build_batch(t, timer)
                if cfg.reset_optimizer:
                    self.opt_state = init_optimizer_state(self.tx, self.state, self.mesh, trainable=self.trainable)
            n_rows = next(iter(batch["tokens"].values())).shape[0]
            step = jit_policy_step(self.graphdef, self.state, self.opt_state, batch, self.mesh,
                                   loss_name=self.method.loss, optimizer=self.tx,
                                   hparams={k: v for k, v in static.items() if k in self.spec.defaults},
                                   traced=tuple(dynamic) + ("learning_rate",), response_width=cfg.max_new_tokens,
                                   minibatch=True, trainable=self.trainable)
            dyn = {**dynamic, "learning_rate": lr}
            t_train = time.perf_counter()
            for k in range(k0, S):
                self.state, self.opt_state, metrics = step(self.state, self.opt_state, batch, dyn,
                                                           self._minibatch_rows(t, k, n_rows))
                if self.anchor_state is not None:
                    self.anchor_state = _ema(self.anchor_state, self._sampling_state(self.state),
                                             np.float32(cfg.anchor_ema))
                self.counters["global_step"] += 1
                self._pending.append(({"iteration": t, "step": k, "global_step": self.counters["global_step"],
                                       "hp/learning_rate": lr, **{f"hp/{n}": v for n, v in dynamic.items()}},
                                      metrics))
                bar.update(1)
                if cfg.eval_every_steps and (k + 1) % cfg.eval_every_steps == 0 and k + 1 < S:
                    self._flush()
                    t_eval = time.perf_counter()
                    rec = {"iteration": t, "step": k + 1, "global_step": self.counters["global_step"],
                           "counts/queries": self.counters["queries"], "counts/samples": self.counters["samples"],
                           **self.evaluate(t, k + 1), "time/eval": time.perf_counter() - t_eval}
                    timer.add("time/eval", rec["time/eval"])
                    self._log(rec, "eval")
                    self._report(rec)
                if guard.should_stop(self.counters["global_step"]):
                    self._save(t, k + 1, batch)
                    return self._finish(bar, f"{guard.message()}; stopped at iteration {t}, step {k + 1}, checkpoint "
                                             f"{self._ckpt_id(t, k + 1)} in {self.ckpt.directory}: run the same "
                                             f"command to resume")
                if cfg.checkpoint_every_steps and (k + 1) % cfg.checkpoint_every_steps == 0 and k + 1 < S:
                    self._save(t, k + 1, batch)
            self._flush()
            timer.add("time/training", time.perf_counter() - t_train - timer.t.get("time/eval", 0.0))
            t_eval = time.perf_counter()
            ev = self.evaluate(t + 1)
            timer.add("time/eval", time.perf_counter() - t_eval)
            rec = {"iteration": t + 1, "global_step": self.counters["global_step"],
                   "counts/queries": self.counters["queries"], "counts/samples": self.counters["samples"],
                   "hp/learning_rate": lr, **{f"hp/{n}": v for n, v in dynamic.items()}, **ev,
                   **timer.t, "time/iteration": time.perf_counter() - it_start}
            self._log(rec, "iteration")
            self._report(rec)
            self._save(t + 1, 0)
            k0, batch = 0, None
        return self._finish(bar)

    def _finish(self, bar, preempted: str = "") -> LoopResult:
        bar.close()
        self.ckpt.wait()
        if preempted:
            self._say(f"[{self.cfg.method}] {preempted}")
        if self.logger is not None:
            self.logger.close()
        history = self.logger.history if self.logger is not None else []
        return LoopResult(self.policy_model(), history, self.out_dir, preempted)

    def _minibatch_rows(self, t: int, k: int, n_rows: int) -> np.ndarray:
        """Rows of step k: a per-(iteration, epoch) permutation, cut into batch_size chunks."""
        bs = min(self.cfg.batch_size, n_rows)
        per_epoch = max(n_rows // bs, 1)
        epoch, j = divmod(k, per_epoch)
        perm = np.random.default_rng([self.cfg.seed, t, epoch]).permutation(n_rows)
        return perm[j * bs:(j + 1) * bs].astype(np.int32)

    def close(self):
        self.ckpt.close()

    def export(self, directory: str, *, tokenizer=None, tokenizer_dir=None, overwrite: bool = True) -> str | None:
        """Write the current policy as a Hugging Face directory (process 0; wind_jax.models.convert.export_hf)."""
        from wind_jax.models.convert import export_hf
        policy = self.policy_model()
        if not self.is_main:
            return None
        return export_hf(policy, self.model_config, directory, tokenizer_dir, tokenizer=tokenizer,
                         overwrite=overwrite)

"""The programs of one outer iteration, lowered on ShapeDtypeStructs with the shardings the loop uses.

Each `lower_*(shape, cfg, mesh)` returns a jax Lowered; `cfg` is the policy's (or the oracle's) config, so
the caller can lower the same program with 1 and 2 unrolled layers for the FLOP count.
  rollout             wind_jax.sampling.sample_state (prefill + while-loop decode, KV cache rows over the
                      batch axes and kv heads over "tensor"), policy parameters float32, compute bfloat16
  decode_step         wind_jax.sampling.jit_decode_step: one token of the rollout's decode loop
  reference_logprobs  wind_jax.train.steps.jit_logprob_step on pi_ref held in bfloat16 (the loop computes
                      them inside its batch program; same forward, same shardings)
  judge               the oracle's forward (wind_jax.train.on_mesh.jit_frozen): a RewardHead over
                      [prompt | a] and [prompt | b] (reward_pair_fn), or an LLM judge over both orders
  policy_step         wind_jax.train.steps.jit_policy_step (AdamW, injected learning rate and every loss
                      hparam traced, response_width = max_new_tokens), parameters and moments float32
"""
from __future__ import annotations

import dataclasses
import math
import types

from benchmarks.tpu_aot.single import abstract_model, decode_cache, lower_decode_step, sds

JUDGE_TEMPLATE_LENGTHS = (16, 4, 4, 8)   # prefix, before_a, before_b, question tokens of the planned judge


@dataclasses.dataclass(frozen=True)
class Shape:
    """Sizes of one iteration (prompts B, prompt / response tokens, the method's draws and rows)."""

    method: str
    n: int
    prompts: int
    prompt_length: int
    max_new_tokens: int
    draws: tuple            # ((source, count), ...)
    pairs: int              # duels per prompt
    rows: dict              # response name -> rows per prompt
    ref_names: tuple        # responses whose pi_ref log-probs need a forward
    oracle: str             # "reward" or "judge"

    @property
    def length(self) -> int:
        return self.prompt_length + self.max_new_tokens

    def judge_rows(self, shards: int) -> int:
        r = self.prompts * self.pairs * (2 if self.oracle == "judge" else 1)
        return math.ceil(r / shards) * shards     # FrozenForward pads rows to the batch shards

    @property
    def judge_length(self) -> int:
        if self.oracle == "reward":
            return self.length
        return sum(JUDGE_TEMPLATE_LENGTHS) + self.prompt_length + 2 * self.max_new_tokens


def iteration_shape(method_name: str, samples, prompts: int, prompt_length: int, max_new_tokens: int,
                    oracle: str) -> Shape:
    import jax
    import jax.numpy as jnp

    from wind_jax import methods

    try:
        method = methods.get_method(method_name)
        n = method.n(samples or 0)
    except (KeyError, ValueError) as e:
        raise SystemExit(f"--method {method_name!r} / --samples {samples}: {e}") from None
    q = method.queries(n)
    spec = method.spec
    hp = {**dict(spec.defaults), **dict(method.extra_hparams), **dict(method.fixed_hparams), "n": float(n)}
    i32 = jnp.int32
    t = methods.Tournament(sds((prompts, q), jnp.float32), sds((prompts, q), i32), sds((prompts, q), i32),
                           sds((prompts,), i32), sds((prompts,), i32))
    index = jax.eval_shape(lambda tt: dict(method.assemble(tt, n, hp).index), t)
    per_prompt = {name: int(idx.shape[1]) for name, idx in index.items()}
    role_source = {"ref": "reference", "anchor": "anchor"}
    ref = tuple(sorted({key.partition("_")[2] for key in spec.batch_keys
                        if key.partition("_")[0] in role_source
                        and method.sources.get(key.partition("_")[2]) != role_source[key.partition("_")[0]]}))
    return Shape(method_name, n, prompts, prompt_length, max_new_tokens, method.counts(n), q, per_prompt, ref,
                 oracle)


def rollout_program():
    """The sampler's jitted rollout program (prefill + decode loop): a public `jit_generate` when
    wind_jax.sampling has one, else its module-level jit (sample_state cannot be traced under an outer jit:
    it enters jax.set_mesh and checks the prompt mask's shards)."""
    from wind_jax import sampling

    public = getattr(sampling, "jit_generate", None)
    return (public, "wind_jax.sampling.jit_generate") if public is not None else (
        getattr(sampling, "_generate_jit"), "wind_jax.sampling's rollout jit (no public entry yet)")


def lower_rollout(shape: Shape, cfg, mesh, count: int):
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding

    from wind_jax import sharding
    from wind_jax.sampling import SamplingSettings, decode_params

    graphdef, state = abstract_model(cfg, "dpo", offset_head=False)
    b, tp = shape.prompts, shape.prompt_length
    rows = NamedSharding(mesh, sharding.batch_spec(2, mesh, size=b))
    state = jax.tree.map(lambda x, sh: sds(x.shape, x.dtype, sh), state, sharding.state_shardings(state, mesh))
    settings = SamplingSettings(num_samples=count, max_new_tokens=shape.max_new_tokens)
    key = jax.eval_shape(lambda: jax.random.key(0))
    program, _ = rollout_program()
    with jax.set_mesh(mesh):
        return program.lower(graphdef, state, sds((b, tp), jnp.int32, rows), sds((b, tp), jnp.bool_, rows),
                             sds(key.shape, key.dtype, sharding.replicated(mesh)), decode_params(1.0), settings,
                             mesh)


def lower_decode(shape: Shape, cfg, mesh, count: int):
    return lower_decode_step(cfg, mesh, shape.prompts * count, shape.length)[0]


def _response_batch(names_rows: dict, prompts: int, length: int):
    import jax.numpy as jnp

    return {"tokens": {r: sds((prompts * k, length), jnp.int32) for r, k in names_rows.items()},
            "response_mask": {r: sds((prompts * k, length), jnp.bool_) for r, k in names_rows.items()},
            "attention_mask": {r: sds((prompts * k, length), jnp.bool_) for r, k in names_rows.items()}}


def lower_reference(shape: Shape, cfg, mesh):
    import jax

    from wind_jax.train.steps import jit_logprob_step

    graphdef, state = abstract_model(cfg, "dpo", offset_head=False)
    batch = _response_batch({r: shape.rows[r] for r in shape.ref_names}, shape.prompts, shape.length)
    step = jit_logprob_step(graphdef, state, batch, mesh, response_width=shape.max_new_tokens)
    with jax.set_mesh(mesh):
        return step.jitted.lower(state, batch)


def judge_model(shape: Shape, cfg):
    """(graphdef, abstract state, forward fn, number of inputs) of the planned oracle."""
    from flax import nnx

    from wind_jax.models import Transformer
    from wind_jax.models.heads import RewardHead
    from wind_jax.train.oracle import JudgeTemplate, judge_first_choice_fn, reward_pair_fn

    if shape.oracle == "reward":
        make, fn, inputs = (lambda: RewardHead(cfg, rngs=nnx.Rngs(0))), reward_pair_fn, 6
    else:
        p, a, b, q = JUDGE_TEMPLATE_LENGTHS
        template = JudgeTemplate((1,) * p, (2,) * a, (3,) * b, (4,) * q, answer_a=5, answer_b=6)
        make, fn, inputs = (lambda: Transformer(cfg, rngs=nnx.Rngs(0))), judge_first_choice_fn(template), 3
    with nnx.use_eager_sharding(False):
        graphdef, state = nnx.split(nnx.eval_shape(make))
    return graphdef, state, fn, inputs


def lower_judge(shape: Shape, cfg, mesh):
    import jax
    import jax.numpy as jnp

    from wind_jax.train.on_mesh import batch_shards, jit_frozen
    from wind_jax.train.oracle import length_multiple

    graphdef, state, fn, inputs = judge_model(shape, cfg)
    jitted = jit_frozen(graphdef, state, fn, mesh, num_inputs=inputs)
    r = shape.judge_rows(batch_shards(mesh))
    m = length_multiple(types.SimpleNamespace(config=cfg))   # the oracle pads its inputs to this multiple
    if shape.oracle == "reward":
        tp, tn = shape.prompt_length, shape.max_new_tokens
        tn += -(tp + tn) % m
        args = [sds((r, t), dt) for t in (tp, tn, tn) for dt in (jnp.int32, jnp.bool_)]
    else:
        t = shape.judge_length + (-shape.judge_length % m)
        args = [sds((r, t), jnp.int32), sds((r, t), jnp.bool_), sds((r, t), jnp.int32)]
    with jax.set_mesh(mesh):
        return jitted.lower(state, *args)


def policy_parts(shape: Shape, cfg):
    """(graphdef, state, optimizer, opt_state, batch) of the iteration's policy step (abstract)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from wind_jax import methods
    from wind_jax.train.steps import OptimizerConfig, make_optimizer

    spec = methods.get_method(shape.method).spec
    graphdef, state = abstract_model(cfg, spec.name)
    tx = make_optimizer(OptimizerConfig(name="adamw", learning_rate=1e-5, max_grad_norm=1.0,
                                        injectable_learning_rate=True))
    opt_state = jax.eval_shape(tx.init, nnx.split_state(state, nnx.Param, ...)[0])
    names = {r: k for r, k in shape.rows.items() if r in spec.policy_keys}
    batch = _response_batch(names, shape.prompts, shape.length)
    rows = shape.prompts * next(iter(names.values()))
    batch.update({k: sds((rows,), jnp.float32) for k in spec.batch_keys})
    return graphdef, state, tx, opt_state, batch


def lower_policy_step(shape: Shape, cfg, mesh):
    import jax
    import jax.numpy as jnp

    from wind_jax import methods
    from wind_jax.train.steps import jit_policy_step

    spec = methods.get_method(shape.method).spec
    graphdef, state, tx, opt_state, batch = policy_parts(shape, cfg)
    traced = tuple(spec.defaults) + ("learning_rate",)
    step = jit_policy_step(graphdef, state, opt_state, batch, mesh, loss_name=spec.name, optimizer=tx,
                           traced=traced, response_width=shape.max_new_tokens)
    dyn = {k: sds((), jnp.float32) for k in traced}
    with jax.set_mesh(mesh):
        return step.jitted.lower(state, opt_state, batch, dyn, None)


def kv_cache_bytes_per_chip(shape: Shape, cfg, mesh, count: int) -> int:
    """Bytes one chip holds of the rollout's KV cache (rows over the batch axes, kv heads over "tensor")."""
    import jax
    from jax.sharding import NamedSharding

    from benchmarks.tpu_aot.costs import shard_bytes
    from wind_jax.sampling import cache_specs

    cache, _ = decode_cache(cfg, shape.prompts * count, shape.length)
    specs = cache_specs(mesh, cache)
    return shard_bytes({k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=NamedSharding(mesh, specs[k]))
                        for k, v in cache.items()})

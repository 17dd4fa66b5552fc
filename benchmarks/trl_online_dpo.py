"""TRL 1.16's online DPO trainer on the verifiable task, as benchmarks.trl_side_by_side runs it (its docstring
gives the protocol): the verifier as a pairwise judge and as TRL's reward function, the prompt-id check, the
trainer with its sampling / pi_ref passes timed, the per-iteration optimizer reset, and the run."""
from __future__ import annotations

import math
import os
import time

import numpy as np

LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # every projection (as real_frontier)


# ------------------------------------------------------------------------------------------ the judge
class VerifierPairwiseJudge:
    """The verifier as a pairwise judge (the interface of TRL's former BasePairwiseJudge):
    judge(prompts, completions) -> for each prompt the index (0 or 1) of the preferred completion; the
    correct one when exactly one is correct, a fair coin when both or neither are (gold
    P = 1/2 + (c(y) - c(y'))/2). One query per pair, counted in `num_queries`."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.num_queries = 0

    def judge(self, prompts: list[str], completions: list[list[str]], shuffle_order: bool = True) -> list[int]:
        del shuffle_order  # the verifier reads each reply on its own: order cannot matter
        from wind_jax.train.verifiable import correct_from_text
        if len(prompts) != len(completions):
            raise ValueError(f"judge: {len(prompts)} prompts but {len(completions)} completion pairs")
        out = []
        for prompt, pair in zip(prompts, completions):
            if len(pair) != 2:
                raise ValueError(f"judge: expected 2 completions per prompt, got {len(pair)}")
            c0, c1 = (correct_from_text(prompt, reply) for reply in pair)
            self.num_queries += 1
            out.append(int(self.rng.integers(2)) if c0 == c1 else (0 if c0 else 1))
        return out


def _text(x) -> str:
    """A TRL completion (plain text or [{"role": "assistant", "content": ...}]) as text."""
    return x if isinstance(x, str) else "".join(m["content"] for m in x)


def judge_reward(judge: VerifierPairwiseJudge, render, timings: dict):
    """The judge as a TRL reward function: TRL 1.16 calls it with 2B prompts / completions (completion i and
    i + B answer prompt i) and takes the first as chosen iff its reward >= the second's; rewards 1 / 0 from
    one judge call per pair make the judge's pick the chosen one. `render` turns a conversation into the
    prompt text the judge reads; seconds are added to timings["judging"]."""

    def verifier_judge(prompts, completions, **_):
        t0 = time.perf_counter()
        b = len(prompts) // 2
        texts = [render(p) for p in prompts[:b]]
        picks = judge.judge(texts, [[_text(completions[i]), _text(completions[i + b])] for i in range(b)])
        rewards = [0.0] * (2 * b)
        for i, k in enumerate(picks):
            rewards[i + k * b] = 1.0
        timings["judging"] += time.perf_counter() - t0
        return rewards

    return verifier_judge


# ------------------------------------------------------------------------------------------ set-up
def check_prompt_ids(hf_tokenizer, tokenizer, problem_list) -> None:
    """TRL's rendering of the conversations (maybe_apply_chat_template, then the tokenizer without special
    tokens) must give the loop's prompt token ids (verifiable.encode_prompts)."""
    from trl.data_utils import maybe_apply_chat_template

    from wind_jax.train import verifiable as v
    tokens, mask = v.encode_prompts(problem_list, tokenizer)
    for i, p in enumerate(problem_list):
        text = maybe_apply_chat_template({"prompt": v.chat_messages(p)}, hf_tokenizer)["prompt"]
        ids = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids != tokens[i][mask[i]].tolist():
            raise RuntimeError(f"TRL's prompt {i} tokenizes differently from the loop's: {text!r}")


def loop_eos(tokenizer) -> int:
    return tokenizer.eos_id if tokenizer.eos_id is not None else 0


# ------------------------------------------------------------------------------------------ TRL
def _trl_trainer_class():
    """OnlineDPOTrainer (trl.experimental.online_dpo in TRL 1.16) with its sampling and pi_ref passes timed."""
    import torch
    from trl.experimental.online_dpo import OnlineDPOTrainer

    class TimedOnlineDPOTrainer(OnlineDPOTrainer):
        timings: dict

        def _generate(self, *a, **k):
            t0 = time.perf_counter()
            out = super()._generate(*a, **k)
            self.timings["sampling"] += time.perf_counter() - t0
            return out

        def _forward(self, *a, **k):
            if torch.is_grad_enabled():  # the policy's pass (its time is training)
                return super()._forward(*a, **k)
            t0 = time.perf_counter()
            out = super()._forward(*a, **k)
            self.timings["logprobs"] += time.perf_counter() - t0
            return out

    return TimedOnlineDPOTrainer


def _trl_callback(steps_per_iteration: int, timings: dict, records: list, log_records: list):
    """Times every optimizer step, closes an iteration every S steps (its split into a record) and clears the
    AdamW state at each iteration start (the loop's reset_optimizer)."""
    from transformers import TrainerCallback

    class IterationCallback(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, **kw):
            if state.global_step and state.global_step % steps_per_iteration == 0 and optimizer is not None:
                getattr(optimizer, "optimizer", optimizer).state.clear()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            timings["step"] += time.perf_counter() - self.t0
            if state.global_step % steps_per_iteration == 0:
                rec = {k: timings[k] for k in ("sampling", "judging", "logprobs")}
                rec["training"] = timings["step"] - sum(rec.values())
                rec["total"] = timings["step"]
                records.append(rec)
                for k in timings:
                    timings[k] = 0.0

        def on_log(self, args, state, control, logs=None, **kw):
            if logs:
                log_records.append({"step": state.global_step, **logs})

    return IterationCallback()


def _reinit_lora_a(model, seed: int) -> int:
    """peft's lora_A <- U(+-sqrt(6 / fan_in)) (the loop's He-uniform init); B stays 0. Returns the count."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    n = 0
    for name, p in model.named_parameters():
        if "lora_A" in name and name.endswith(".weight"):
            limit = math.sqrt(6.0 / p.shape[1])
            with torch.no_grad():
                p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) * 2 * limit - limit)
            n += 1
    return n


def run_trl(args, hf_dir: str, problem_list, order, export_dir: str, work: str) -> dict:
    """TRL's online DPO over the loop's prompt order; returns timings, queries and its merged export."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.online_dpo import OnlineDPOConfig

    from wind_jax.models.tokenizer import Tokenizer
    from wind_jax.train import verifiable as v
    P, S = args.prompts, args.steps
    tok = AutoTokenizer.from_pretrained(hf_dir)
    check_prompt_ids(tok, Tokenizer.from_dir(hf_dir), [problem_list[i] for i in order[:P]])
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.generation_config.eos_token_id = loop_eos(Tokenizer.from_dir(hf_dir))  # the loop's one EOS id
    data = Dataset.from_list([{"prompt": v.chat_messages(problem_list[i])} for i in order])
    timings = {"sampling": 0.0, "judging": 0.0, "logprobs": 0.0, "step": 0.0}
    records, logs = [], []
    judge = VerifierPairwiseJudge(seed=args.seed)
    render = lambda msgs: tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)  # noqa: E731
    cfg = OnlineDPOConfig(
        output_dir=os.path.join(work, "trl"), per_device_train_batch_size=P // S, gradient_accumulation_steps=1,
        max_steps=args.iterations * S, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
        optim="adamw_torch", weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        max_grad_norm=1.0, beta=args.beta, loss_type="sigmoid", max_new_tokens=args.max_new_tokens,
        temperature=1.0, top_k=0, top_p=1.0, train_sampling_strategy="sequential", report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True, seed=args.seed, use_cpu=True,
        dataloader_num_workers=0, gradient_checkpointing=False)  # TRL's default (True) also turns off the KV cache
    peft_cfg = LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, lora_dropout=0.0,
                          target_modules=LORA_TARGETS.split(","), task_type="CAUSAL_LM")
    trainer_cls = _trl_trainer_class()
    trainer = trainer_cls(model=model, reward_funcs=judge_reward(judge, render, timings), args=cfg,
                          train_dataset=data, processing_class=tok, peft_config=peft_cfg,
                          callbacks=[_trl_callback(S, timings, records, logs)])
    from transformers.trainer_callback import PrinterCallback
    trainer.remove_callback(PrinterCallback)
    trainer.timings = timings
    n_lora = _reinit_lora_a(trainer.model, args.seed)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(export_dir)
    tok.save_pretrained(export_dir)
    return {"per_iteration": records, "seconds_train": seconds, "queries": judge.num_queries,
            "samples": 2 * len(data), "optimizer_steps": trainer.state.global_step, "lora_a_reinitialized": n_lora,
            "batch_pairs_per_step": P // S, "torch_threads": torch.get_num_threads(), "trl_logs": logs}

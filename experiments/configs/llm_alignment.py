"""Config of experiments.llm_alignment (ml_collections). `task="synthetic"` (default, no downloads, < 10 min
on 2 CPU cores) or `task="real"` (SmolLM2-135M-Instruct GGUF or a local HF Llama dir, JSONL prompts, LLM
judge). Override from the command line: --config.method=wind_kl --config.loop.num_iterations=6.

Why the synthetic defaults of the outer loop (MATH.md, Alg. 2 / Alg. 3):
- beta = 0.1 (KL strength): the WIND equilibrium tilts pi_ref by exp(w / beta), a clearly visible but
  bounded move on this 13-token language.
- eta = 3: exact WIND (MD form) contracts toward pi*_beta by a factor 1 - eta beta per outer iteration and
  needs eta beta <= 1. With eta = 1 four iterations cover only 1 - 0.9^4 = 34% of the way; eta beta = 0.3
  with num_iterations = 6 covers 1 - 0.7^6 = 88%, while the per-iteration target change stays moderate
  (eta |w - 1/2| <= 1.5 nats) so 16 Adam steps can fit it.
- oracle_mode = "prob": the training oracle is a learned preference head, so its probability P(y > y') is
  available; MATH.md Alg. 3 allows it as the target in place of a Bernoulli draw. It has the same
  conditional mean w_{pi_t}(y) (same population minimizer) and less variance. Still ONE query per duel.
- prompts_per_iteration = 256, steps_per_iteration = 16, batch 64: two passes over WIND's 512 rows.
- pre-training 300 steps reaches the reference process's NLL (about 11.5 nats per response); the head
  (300 steps, rank 2) agrees with the gold preference on about 80% of reference pairs.
Measured (reduced set-up: 200 pre-training / head steps, wind_sq_offset, seeds 0-2;
tests/train/test_llm_alignment.py::test_wind_raises_gold_win_rate_beyond_seed_spread): gold win rate vs pi_ref
0.568 / 0.568 / 0.573 after 6 iterations, versus 0.517 +- 0.009 with the former eta = 1, T = 3, Bernoulli
targets.
"""
import ml_collections

from wind_jax.train.config import config_dict


def get_config(task: str = "synthetic") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = task
    # any name of wind_jax.methods.METHODS (wind_sq, sppo, dpo, bon_distill, ...)
    c.method = "wind_sq"
    c.seed = 0
    c.out_dir = ""         # "" = outputs/llm_alignment/<method>
    c.mesh = "-1,1,1"      # ("data", "fsdp", "tensor") sizes; -1 = all remaining devices
    c.oracle = "head"      # training oracle: synthetic: head | gold; real: judge | reward_model
    c.export_dir = ""      # write the final policy as a Hugging Face directory when set
    c.plot = True
    c.tensorboard = True

    c.loop = config_dict(   # every LoopConfig field; these differ from its defaults
        num_iterations=6, prompts_per_iteration=256, steps_per_iteration=16, batch_size=64, beta=0.1, eta=3.0,
        learning_rate=2e-3, oracle_mode="prob", max_new_tokens=7, eval_prompts=256)

    # synthetic task
    c.language = ml_collections.ConfigDict(dict(
        vocab_size=16, prompt_len=4, min_response_len=2, max_response_len=6, copy_prob=0.3,
        reward_scale=1.0, match_bonus=0.5, nontransitive_strength=2.0, seed=0))
    c.model = ml_collections.ConfigDict(dict(
        hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2))
    c.pretrain = ml_collections.ConfigDict(dict(steps=300, batch_size=64, learning_rate=3e-3))
    c.head = ml_collections.ConfigDict(dict(steps=300, batch_size=64, learning_rate=3e-3, rank=2,
                                            soft_targets=True))

    # real task
    c.real = ml_collections.ConfigDict(dict(
        model_path="",       # a .gguf file or a Hugging Face Llama directory; "" = SmolLM2-135M-Instruct GGUF
        judge_path="",       # .gguf / HF dir of any family (another vocabulary reads the texts); "" = the policy
        prompts_jsonl="",    # {"prompt": ...} / chat lines; "" = a ShareGPT extract written to out_dir
        num_prompts=16, max_prompt_tokens=64, chat_template=True,
        skip_invalid=False,      # skip malformed JSONL lines (printing "N of M skipped: reasons") instead of failing
        reward_model_path="",    # a Hugging Face LlamaForSequenceClassification directory (oracle=reward_model)
        judge_max_tokens=0))     # judge inputs longer than this are refused; 0 = the judge's context length
    # verifiable task (wind_jax.train.verifiable): the real model on problems with one correct answer, judged
    # by correctness (P(y > y') = 1/2 + (c(y) - c(y'))/2, so win rate vs pi_ref = 1/2 + (acc - acc_ref)/2)
    c.verifiable = ml_collections.ConfigDict(dict(
        train_prompts=512, families="larger,smaller,largest3,parity"))
    if task == "verifiable":
        # Measured 2026-12-04, CPU-2 shared (BENCHMARKS.md "Verifiable task: SmolLM2 aligned"); 64 prompts =
        # 128 rows and 8 steps of 16 = one pass per iteration, eval 96 prompts x 2 (win-rate s.e. ~0.021):
        # - lr 1e-3 (32 prompts x 4 steps): diverged in the first iteration (loss 2.25 -> 8.3), accuracy
        #   0.318 vs pi_ref 0.396, KL 1.01.
        # - lr 3e-4, 3 iterations: accuracy - accuracy_ref +0.036 / +0.078 / -0.005, KL 0.12 / 0.45 / 0.91:
        #   the third iteration spends KL for nothing.
        # - lr 1.5e-4, 2 iterations, 96 evaluation prompts: +0.021 / +0.078, win rate 0.510 / 0.539 +- 0.021,
        #   KL 0.064 / 0.203; 6 min wall. The final 95% interval [0.498, 0.580] touched 1/2.
        # - these values (the same training, 192 evaluation prompts x 2 against one pi_ref draw; measured
        #   2026-12-07, quiet machine): accuracy 0.372 / 0.424 / 0.448 vs pi_ref 0.359, win rate 0.507 / 0.533
        #   / 0.544 +- 0.016 (final 95% interval [0.512, 0.576]: a measurable gain), KL 0.093 / 0.189; 12.3 min
        #   wall. Evaluation is half of an iteration (127 of 254 s; the prompts with their solved example
        #   dominate, not the ~3-token replies).
        c.oracle = "verifier"
        c.loop.update(dict(num_iterations=2, prompts_per_iteration=64, steps_per_iteration=8, batch_size=16,
                           beta=0.1, eta=3.0, learning_rate=1.5e-4, lora_rank=8, lora_alpha=16.0,
                           lora_targets="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                           oracle_mode="sample", max_new_tokens=8, eval_prompts=192, eval_samples_per_prompt=2,
                           eval_fixed_reference=True, async_checkpoint=False))
    elif task == "real":
        c.oracle = "judge"
        c.loop.update(dict(num_iterations=1, prompts_per_iteration=4, steps_per_iteration=1, batch_size=8,
                           max_new_tokens=8, eval_prompts=4, eval_samples_per_prompt=1,
                           learning_rate=1e-6, async_checkpoint=False))
    elif task != "synthetic":
        raise ValueError(f'task must be "synthetic", "real" or "verifiable", got {task!r}')
    return c

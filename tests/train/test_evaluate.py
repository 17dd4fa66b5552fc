"""experiments.evaluate: the log-probs and KL it reports (tiny models, exact), and SmolLM2 against itself."""
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import evaluate
from wind_jax.models import LlamaConfig, Transformer
from wind_jax.sampling import sample


@pytest.mark.interop
@pytest.mark.slow
def test_smollm2_against_itself(smollm2_gguf, tmp_path):
    """The project's Hugging Face export of SmolLM2 evaluated against the GGUF it came from: KL ~ 0, win
    rate 1/2 inside its interval, the identity win = 1/2 + (acc - acc_ref)/2, one query per duel; the
    optional LLM judge answers on the same duels."""
    from wind_jax.models import convert
    config, model, tokenizer = convert.load_gguf(smollm2_gguf)
    export = convert.export_hf(model, config, tmp_path / "smollm2_hf", tokenizer=tokenizer)
    del model
    out_path = tmp_path / "eval.json"
    result = evaluate.main(["--policy", export, "--reference", smollm2_gguf, "--num_prompts", "8", "--samples",
                            "4", "--max_new_tokens", "8", "--judge", smollm2_gguf, "--output", str(out_path)])
    assert json.loads(out_path.read_text()) == json.loads(json.dumps(result))
    assert abs(result["kl"]["mean"]) < 1e-3 and result["kl"]["ci95"][0] <= 0.0 + 1e-3
    w = result["win_rate"]
    assert w["ci95"][0] <= 0.5 <= w["ci95"][1]
    acc, ref_acc = result["accuracy"]["mean"], result["reference_accuracy"]["mean"]
    assert w["mean"] == pytest.approx(0.5 + (acc - ref_acc) / 2)
    assert w["queries"] == 8 * 4
    assert 0 < result["response_length"]["mean"] <= 8
    assert not os.path.exists(str(out_path) + ".tmp")
    judge = result["judge_win_rate"]  # the same duels judged by SmolLM2 itself (both orders averaged)
    assert judge["queries"] == 8 * 4 and 0 < judge["ci95"][0] <= judge["mean"] <= judge["ci95"][1] < 1


def _exact_kl(policy, reference, prompt, eos):
    """KL(pi || pi_ref) of two-token replies by enumeration from plain forward passes (no masks, no sampler):
    a reply is [eos] or [a, b] (a != eos, any b)."""
    def next_logp(model, seq):
        logits, _ = model(np.asarray([seq], np.int32))
        return np.asarray(jax.nn.log_softmax(logits[0, -1].astype(np.float32)))
    kl = 0.0
    lp1, lr1 = next_logp(policy, prompt), next_logp(reference, prompt)
    for a in range(lp1.size):
        if a == eos:
            kl += np.exp(lp1[a]) * (lp1[a] - lr1[a])
            continue
        lp2, lr2 = next_logp(policy, prompt + [a]), next_logp(reference, prompt + [a])
        joint = lp1[a] + lp2
        kl += np.sum(np.exp(joint) * (joint - lr1[a] - lr2))
    return kl


@pytest.mark.slow  # 3000 samples from two models: ~15 s
def test_kl_from_samples_matches_enumeration():
    """reference_logprobs of the sampler's replies reproduces the sampler's log pi under the policy, and
    E[log pi - reference_logprobs(pi_ref)] is the exact KL (enumerated) within 4 standard errors, for two
    different tiny models and left-padded prompts of two lengths."""
    cfg = LlamaConfig(vocab_size=5, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                      num_kv_heads=1, max_position_embeddings=16, tie_word_embeddings=False)
    policy, reference = Transformer(cfg, rngs=nnx.Rngs(1)), Transformer(cfg, rngs=nnx.Rngs(2))
    for model, scale in ((policy, 60.0), (reference, 20.0)):  # peaked, different next-token distributions
        model.lm_head.kernel[...] = model.lm_head.kernel[...] * scale
    prompts = [[3, 4, 2], [2, 2]]
    tokens = np.array([[3, 4, 2], [0, 2, 2]], np.int32)
    out = sample(policy, tokens, tokens > 0, jax.random.key(0), num_samples=3000, max_new_tokens=2,
                 eos_token_id=1, pad_token_id=0)
    rows = [np.asarray(x) for x in (out.tokens, out.response_mask, out.attention_mask)]
    # chunks of 1024 rows: 6000 = 5 x 1024 + 880, so the last chunk is padded
    lp_pol = evaluate.reference_logprobs(policy, *rows, chunk=1024)
    np.testing.assert_allclose(lp_pol, np.asarray(out.logprobs), atol=1e-4)  # the sampler's own log pi
    lp_ref = evaluate.reference_logprobs(reference, *rows, chunk=1024)
    d = np.asarray(out.logprobs) - lp_ref
    for i, prompt in enumerate(prompts):
        exact = _exact_kl(policy, reference, prompt, eos=1)
        se = d[i].std() / np.sqrt(d.shape[1])
        assert exact > 0.1 and abs(d[i].mean() - exact) < 4 * se, (i, d[i].mean(), exact, se)

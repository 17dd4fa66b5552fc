"""import_reward_model: a Hugging Face LlamaForSequenceClassification (num_labels 1) as a wind_jax RewardHead.

Fast tests build the classifier directory from an exported wind_jax backbone plus a score tensor and check
r = w . h_last + b in float64 numpy, the Bradley-Terry oracle function and the input errors. The interop
test checks parity with transformers' scores (1e-4) on a random checkpoint written by transformers.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from wind_jax.models import LlamaConfig, RewardHead, Transformer, export_hf
from wind_jax.models.convert import import_reward_model
from wind_jax.models.heads import reward_prob_fn


class Tok:  # the (.tokens, .mask) pair the oracle functions take (wind_jax.train.oracle.Tokens)
    def __init__(self, tokens, mask):
        self.tokens, self.mask = jnp.asarray(tokens), jnp.asarray(mask)


def classifier_dir(tmp_path, *, num_labels=1, arch="LlamaForSequenceClassification", bias=False):
    """A classifier checkpoint: the exported backbone's model.* tensors + score.weight [num_labels, hidden]."""
    config = LlamaConfig.tiny(num_layers=2)
    backbone = Transformer(config, rngs=nnx.Rngs(3))
    out = export_hf(backbone, config, tmp_path / "rm")
    tensors = {k: v for k, v in load_file(os.path.join(out, "model.safetensors")).items()
               if not k.startswith("lm_head")}
    rng = np.random.default_rng(0)
    tensors["score.weight"] = rng.normal(size=(num_labels, config.hidden_size)).astype(np.float32)
    if bias:
        tensors["score.bias"] = np.array([0.75], np.float32)
    save_file(tensors, os.path.join(out, "model.safetensors"))
    cfg = json.loads(open(os.path.join(out, "config.json")).read())
    cfg.update(architectures=[arch], id2label={str(i): f"LABEL_{i}" for i in range(num_labels)})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f)
    return out, backbone, tensors


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    """One classifier directory shared by the tests that only read it."""
    return classifier_dir(tmp_path_factory.mktemp("shared"))[0]


@pytest.mark.parametrize("bias", [False, True])
def test_reward_is_score_of_last_real_hidden_state(tmp_path, bias):
    out, backbone, tensors = classifier_dir(tmp_path, bias=bias)
    config, head = import_reward_model(out)
    assert isinstance(head, RewardHead) and config.tie_word_embeddings
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, config.vocab_size, size=(3, 9)).astype(np.int32)
    mask = np.arange(9)[None] < np.array([[9], [5], [1]])  # right padding of different lengths
    hidden = np.asarray(backbone.hidden(jnp.asarray(tokens), attention_mask=jnp.asarray(mask)), np.float64)
    last = mask.sum(1) - 1
    expected = hidden[np.arange(3), last] @ tensors["score.weight"][0].astype(np.float64) + (0.75 if bias else 0)
    np.testing.assert_allclose(np.asarray(head(jnp.asarray(tokens), jnp.asarray(mask))), expected,
                               rtol=1e-5, atol=1e-5)


def test_bradley_terry_oracle_function(rm_dir):
    _, head = import_reward_model(rm_dir)
    rng = np.random.default_rng(2)
    prompt = Tok(rng.integers(0, 128, (4, 3)), np.ones((4, 3), bool))
    a = Tok(rng.integers(0, 128, (4, 5)), np.arange(5)[None] < np.array([[5], [2], [4], [1]]))
    b = Tok(rng.integers(0, 128, (4, 5)), np.arange(5)[None] < np.array([[3], [5], [1], [2]]))
    p = np.asarray(reward_prob_fn(head)(prompt, a, b), np.float64)
    r = lambda x: np.asarray(head(jnp.concatenate([prompt.tokens, x.tokens], 1),  # noqa: E731
                                  jnp.concatenate([prompt.mask, x.mask], 1)), np.float64)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-(r(a) - r(b)))), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(p + np.asarray(reward_prob_fn(head)(prompt, b, a)), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="batch sizes differ"):
        reward_prob_fn(head)(prompt, a, Tok(b.tokens[:2], b.mask[:2]))
    with pytest.raises(ValueError, match="RewardHead"):
        reward_prob_fn(Transformer(LlamaConfig.tiny(num_layers=1), rngs=nnx.Rngs(0)))


def test_usable_as_the_loops_head_oracle(rm_dir):
    from wind_jax.train.oracle import HeadOracle, Tokens

    _, head = import_reward_model(rm_dir)
    rng = np.random.default_rng(3)
    prompt = Tokens(jnp.asarray(rng.integers(0, 128, (3, 4)), jnp.int32), jnp.ones((3, 4), bool))
    a = Tokens(jnp.asarray(rng.integers(0, 128, (3, 5)), jnp.int32), jnp.arange(5)[None] < jnp.array([[5], [3], [1]]))
    b = Tokens(jnp.asarray(rng.integers(0, 128, (3, 5)), jnp.int32), jnp.arange(5)[None] < jnp.array([[2], [5], [4]]))
    oracle = HeadOracle(reward_prob_fn(head), symmetrize=False)
    pref = oracle(prompt, a, b, jax.random.key(0))
    np.testing.assert_allclose(pref.prob, reward_prob_fn(head)(prompt, a, b), rtol=0, atol=0)
    assert oracle.num_queries == 3 and set(np.asarray(pref.outcome).tolist()) <= {0.0, 1.0}


def test_reward_import_errors(tmp_path):
    out, _, _ = classifier_dir(tmp_path / "two", num_labels=2)
    with pytest.raises(ValueError, match="num_labels=2"):
        import_reward_model(out)
    out, _, _ = classifier_dir(tmp_path / "lm", arch="LlamaForCausalLM")
    with pytest.raises(ValueError, match="is not a reward model"):
        import_reward_model(out)
    out, _, tensors = classifier_dir(tmp_path / "noscore")
    save_file({k: v for k, v in tensors.items() if k != "score.weight"}, os.path.join(out, "model.safetensors"))
    with pytest.raises(ValueError, match="score.weight"):
        import_reward_model(out)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        import_reward_model(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------- interop
@pytest.mark.interop
def test_parity_with_transformers_sequence_classification(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                                      pad_token_id=0, rope_theta=5000.0, rms_norm_eps=1e-5)
    ref = transformers.LlamaForSequenceClassification(hf_cfg).eval()
    with torch.no_grad():  # random norms and a non-trivial score so every tensor matters
        for name, p in ref.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
        ref.score.weight.normal_(0, 1.0)
    ref.save_pretrained(tmp_path / "rm", safe_serialization=True)
    config, head = import_reward_model(tmp_path / "rm")
    rng = np.random.default_rng(0)
    lengths = np.array([12, 7, 3, 1])
    tokens = rng.integers(1, 96, size=(4, 12))
    mask = np.arange(12)[None] < lengths[:, None]
    tokens = np.where(mask, tokens, 0)  # right padding with pad_token_id, as transformers expects
    with torch.no_grad():
        expected = ref(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64))
                       ).logits[:, 0].double().numpy()
    got = np.asarray(head(jnp.asarray(tokens, jnp.int32), jnp.asarray(mask)), np.float64)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert np.std(expected) > 0.1  # the scores differ, so parity is not vacuous


@pytest.mark.interop
@pytest.mark.parametrize("family", ["qwen3", "gemma2"])
def test_family_reward_models_match_transformers(tmp_path, family):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    kw = dict(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, num_labels=1, pad_token_id=0)
    if family == "gemma2":
        kw.update(sliding_window=4, attn_logit_softcapping=5.0, query_pre_attn_scalar=16)
    cfg = transformers.AutoConfig.for_model(family, **kw)
    cfg._attn_implementation = "eager"
    ref = transformers.AutoModelForSequenceClassification.from_config(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.2 * torch.randn_like(p))
    ref.save_pretrained(tmp_path / "rm")
    config, head = import_reward_model(tmp_path / "rm")
    assert config.model_type == family
    tokens = np.random.default_rng(2).integers(1, 96, size=(3, 9))
    mask = np.arange(9)[None] < np.array([9, 6, 2])[:, None]
    tokens = np.where(mask, tokens, 0)
    with torch.no_grad():
        expected = ref(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64))
                       ).logits[:, 0].double().numpy()
    got = np.asarray(head(jnp.asarray(tokens, jnp.int32), jnp.asarray(mask)), np.float64)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert np.std(expected) > 0.1

"""benchmarks.judge_agreement: the duels are exactly the pairs of a prompt's replies with one correct reply,
the correct one always on the first side."""
import types

import numpy as np

from benchmarks.judge_agreement import duels


def test_duels_pair_each_correct_reply_with_each_wrong_one():
    correct = np.array([[1, 0, 0], [1, 1, 1], [0, 1, 1]], np.float32)
    tp, tn = 2, 3
    X, M = correct.shape
    # reply m of prompt x is the token 10 * x + m (+ 100 when correct) after a 2-token prompt
    tokens = np.zeros((X, M, tp + tn), np.int32)
    tokens[:, :, tp] = 10 * np.arange(X)[:, None] + np.arange(M)[None] + 100 * correct
    response_mask = np.zeros((X, M, tp + tn), bool)
    response_mask[:, :, tp] = True
    ro = types.SimpleNamespace(correct=correct, tokens=tokens, response_mask=response_mask)
    prompts = np.arange(X * tp, dtype=np.int32).reshape(X, tp)
    rows, prompt, good, bad = duels(ro, prompts, np.ones_like(prompts, bool))
    assert rows.tolist() == [0, 0, 2, 2]                      # prompt 1 has no wrong reply
    assert np.asarray(good.tokens)[:, 0].tolist() == [100, 100, 121, 122]
    assert np.asarray(bad.tokens)[:, 0].tolist() == [1, 2, 20, 20]
    assert (np.asarray(prompt.tokens) == prompts[rows]).all() and good.tokens.shape == (4, tn)

"""The verifiable task: problems and splits, the parser (hand-read SmolLM2 replies and saved fixtures), the
verifier oracle, and the correctness frontier (closed form vs the tabular solver and vs Monte Carlo)."""
import json
import os

import numpy as np
import pytest

from wind_jax import games
from wind_jax.train import verifiable as v
from wind_jax.train.oracle import Tokens, pairwise_probabilities

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "smollm2_verifiable_responses.jsonl")


class CharTokenizer:
    """One id per character (ord), ChatML-like template: enough for the oracle's decode and the prompts."""

    pad_id = 0
    stop_ids = (3,)

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=True):
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"
        return [ord(ch) for ch in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if i > 3)


def _right_padded(texts, width=24):
    tokens = np.zeros((len(texts), width), np.int32)
    mask = np.zeros((len(texts), width), bool)
    for i, t in enumerate(texts):
        tokens[i, :len(t)] = [ord(c) for c in t]
        mask[i, :len(t)] = True
    return Tokens(tokens, mask)


# ------------------------------------------------------------------------------------- problems, splits
def test_problems_answers_splits_and_determinism():
    train = v.problems("train", 200, seed=3)
    test = v.problems("test", 200, seed=3)
    assert train == v.problems("train", 200, seed=3) and train != v.problems("train", 200, seed=4)
    assert {p.split for p in train} == {"train"} and {p.split for p in test} == {"test"}
    assert not {(p.family, p.numbers) for p in train} & {(p.family, p.numbers) for p in test}
    assert [p.family for p in train[:8]] == list(v.FAMILIES) * 2
    for p in train + test:
        n = sorted(p.numbers)
        expected = {"larger": n[-1], "largest3": n[-1], "smaller": n[0]}.get(p.family)
        expected = str(expected) if expected is not None else ("odd" if n[0] % 2 else "even")
        assert p.answer == expected
        assert p.example != p.numbers and len(p.example) == len(p.numbers)
        assert p.question in v.chat_messages(p)[-1]["content"]
        assert v.find_problem("noise " + v.chat_messages(p)[0]["content"] + " " + p.question) == \
            v.Problem(p.family, p.numbers)
    with pytest.raises(ValueError, match="split"):
        v.problems("dev", 3)
    with pytest.raises(ValueError, match="families"):
        v.problems("train", 3, families=("addition",))


def test_encode_prompts_left_padded():
    probs = v.problems("validation", 6, seed=0)
    tokens, mask = v.encode_prompts(probs, CharTokenizer())
    assert tokens.shape == mask.shape and mask[:, -1].all()
    for p, row, m in zip(probs, tokens, mask):
        assert v.find_problem(CharTokenizer().decode(row[m].tolist())) == v.Problem(p.family, p.numbers)


# ------------------------------------------------------------------------------------- the parser
# replies of SmolLM2-135M-Instruct seen while choosing the task, with the answer a reader takes from them
HAND_READ = [
    ("larger", "82 is larger than 69.", "82"),
    ("larger", "The number 68 is the larger one.", "68"),
    ("larger", "11 is the larger number.", "11"),
    ("larger", "84.", "84"),
    ("larger", "To solve this puzzle, you need to think on your feet without relying on just", None),
    ("smaller", "4.4 is smaller than 5.", "4.4"),
    ("smaller", "Both 96 and 19 are the same.", "96"),
    ("smaller", "Canceled", None),
    ("largest3", "The largest integer is 78.", "78"),
    ("largest3", "Sure, here are the numbers:\n\n1. Double-add: 3 + 2 = 5", "1"),
    ("parity", "guern even", "even"),
    ("parity", "Odd", "odd"),
    ("parity", "84 is an odd number; not a good idea", "odd"),
    ("parity", "fivethirtytis", None),
    ("parity", "uneven", None),
    ("largest3", "S2 then 45", "45"),
    ("smaller", "Here's a possible answer: 4", "4"),
    ("larger", "6 numbers are larger than 23", "6"),
    ("largest3", "10 \n10 is the largest", "10"),
    ("parity", "an even, no, no", "even"),
    ("parity", "zeroodd", None),
]


@pytest.mark.parametrize("family,text,expected", HAND_READ)
def test_parse_answer_hand_read(family, text, expected):
    assert v.parse_answer(family, text) == expected


def test_fixtures_reparse_and_check():
    """Real SmolLM2 replies (benchmarks/verifiable_difficulty.py --save_responses): the parser still reads
    each as recorded, `correct` agrees with the answer recomputed from the problem, and the fixture holds
    correct, wrong and unanswered replies of every family."""
    with open(FIXTURES) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) >= 64
    seen = set()
    for i, r in enumerate(rows):
        d = r["problem"]
        p = v.Problem(d["family"], tuple(d["numbers"]), tuple(d["example"]))
        assert p.question == r["prompt"] and p.answer == r["answer"], f"row {i}"
        parsed = v.parse_answer(p.family, r["response"])
        assert parsed == r["parsed"], f"row {i}: {r['response']!r}"
        assert v.is_correct(p, r["response"]) == r["correct"] == (parsed == p.answer), f"row {i}"
        seen.add((p.family, "correct" if r["correct"] else ("none" if parsed is None else "wrong")))
    for family in v.FAMILIES:
        assert {(family, "correct"), (family, "wrong")} <= seen, family


# ------------------------------------------------------------------------------------- the oracle
def test_verifier_oracle_probabilities_and_query_count():
    tok = CharTokenizer()
    probs = v.problems("train", 4, seed=1)
    tokens, mask = v.encode_prompts(probs, tok)
    # per problem: a correct reply, a wrong reply, an unanswered one
    wrong = {"larger": lambda p: str(min(p.numbers)), "smaller": lambda p: str(max(p.numbers)),
             "largest3": lambda p: str(min(p.numbers)),
             "parity": lambda p: "even" if p.answer == "odd" else "odd"}
    replies = [[f"{p.answer} it is.", f"I think {wrong[p.family](p)}", "no idea"] for p in probs]
    oracle = v.VerifierOracle(tok)
    resp = [_right_padded([r[k] for r in replies]) for k in range(3)]
    prompt = Tokens(tokens, mask)
    np.testing.assert_array_equal(oracle.correct(prompt, resp[0]), 1.0)
    np.testing.assert_array_equal(oracle.correct(prompt, resp[1]), 0.0)
    assert oracle.num_queries == 0
    expected = {(0, 1): 1.0, (1, 0): 0.0, (0, 2): 1.0, (1, 2): 0.5, (2, 1): 0.5, (0, 0): 0.5}
    for (i, j), e in expected.items():
        np.testing.assert_array_equal(np.asarray(oracle.probability(prompt, resp[i], resp[j])), e)
    assert oracle.num_queries == len(expected) * len(probs)
    text = tok.decode(tokens[0][mask[0]].tolist())  # the text-level check (a TRL judge's view)
    assert v.correct_from_text(text, replies[0][0]) and not v.correct_from_text(text, replies[0][1])
    with pytest.raises(ValueError, match="no question"):
        v.correct_from_text("hello", "12")
    # the K x K matrix: one query per unordered pair, P + P^T = 1
    mat = np.asarray(pairwise_probabilities(oracle, prompt, resp))
    assert oracle.num_queries == (len(expected) + 3) * len(probs)
    np.testing.assert_allclose(mat + np.swapaxes(mat, 1, 2), 1.0)
    np.testing.assert_array_equal(mat[:, 0, 1], 1.0)
    # a prompt that is not a verifiable question is refused, naming the row
    bad = _right_padded(["hello there"] * 4)
    with pytest.raises(ValueError, match="row 0"):
        oracle.probability(Tokens(bad.tokens[:, ::-1].copy(), bad.mask[:, ::-1].copy()), resp[0], resp[1])


def test_win_rate_is_half_plus_half_accuracy_gap():
    """Duels of a policy's replies against pi_ref's: the mean gold probability equals 1/2 + (acc - acc_ref)/2
    (an identity of the correctness preference, checked on random replies)."""
    tok = CharTokenizer()
    rng = np.random.default_rng(0)
    probs = v.problems("train", 64, seed=2)
    tokens, mask = v.encode_prompts(probs, tok)
    pick = lambda p, ok: p.answer if ok else "none"  # noqa: E731
    ca, cb = rng.random(64) < 0.7, rng.random(64) < 0.3
    a = _right_padded([pick(p, c) for p, c in zip(probs, ca)])
    b = _right_padded([pick(p, c) for p, c in zip(probs, cb)])
    p = np.asarray(v.VerifierOracle(tok).probability(Tokens(tokens, mask), a, b))
    assert p.mean() == pytest.approx(0.5 + (ca.mean() - cb.mean()) / 2)


# ------------------------------------------------------------------------------------- the frontier
def test_closed_form_frontier_matches_tabular_solver():
    """The correctness tilt's closed form vs wind_jax.games.win_rate_frontier on an explicit game: X prompts,
    Y replies each with pi_ref and a correctness bit, P(y, y') = 1/2 + (c - c')/2."""
    rng = np.random.default_rng(0)
    X, Y = 5, 7
    pi = rng.dirichlet(np.ones(Y), size=X)
    c = (rng.random((X, Y)) < 0.4).astype(float)
    c[:, 0], c[:, 1] = 1.0, 0.0  # every prompt has both kinds
    P = 0.5 + 0.5 * (c[:, :, None] - c[:, None, :])
    lams = np.array([0.0, 0.3, 1.0, 3.0, 10.0])
    kl_ref, win_ref = games.win_rate_frontier(pi, P, lams)
    kl, win = v.frontier_closed_form((pi * c).sum(1), lams)
    np.testing.assert_allclose(kl, np.asarray(kl_ref), atol=2e-6)
    np.testing.assert_allclose(win, np.asarray(win_ref), atol=2e-6)
    kl0, win0 = v.frontier_closed_form([0.0, 1.0], np.linspace(0, 30, 3001))  # nothing to move
    assert np.all(kl0 == 0) and np.all(win0 == 0.5)


def test_best_of_n_by_verifier_is_on_the_frontier():
    """Best-of-n closed form vs the exact tabular best-of-n with ties (wind_jax.games.best_of_n_reward, reward
    = correctness): same KL, win rate and accuracy; on each prompt's frontier, below the prompt-averaged one."""
    rng = np.random.default_rng(3)
    X, Y = 4, 6
    pi = rng.dirichlet(np.ones(Y), size=X)
    c = (rng.random((X, Y)) < 0.5).astype(float)
    c[:, 0], c[:, 1] = 1.0, 0.0
    p = (pi * c).sum(1)
    kl, win, acc = v.best_of_n_closed_form(p, [1, 2, 4, 8])
    # n = 1 is pi_ref itself
    assert abs(kl[0]) < 1e-12 and win[0] == pytest.approx(0.5) and acc[0] == pytest.approx(p.mean())
    for k, n in enumerate([2, 4, 8], start=1):
        bon = np.asarray(games.best_of_n_reward(pi, c, n), np.float64)
        kl_ref = np.mean(np.sum(np.where(bon > 0, bon * np.log(bon / pi), 0.0), 1))
        w_ref = 0.5 + 0.5 * (c - p[:, None])  # P(y > pi_ref)
        assert kl[k] == pytest.approx(kl_ref, abs=1e-5)
        assert win[k] == pytest.approx(np.mean(np.sum(bon * w_ref, 1)), abs=1e-6)
        assert acc[k] == pytest.approx(np.mean(np.sum(bon * c, 1)), abs=1e-6)
    grid = np.linspace(0, 30, 30001)
    for x in range(X):  # on each prompt's own frontier ...
        kx, wx, _ = v.best_of_n_closed_form(p[x:x + 1], [2, 4, 8])
        fk, fw = v.frontier_closed_form(p[x:x + 1], grid)
        np.testing.assert_allclose(np.interp(kx, fk, fw), wx, atol=1e-6)
    fk, fw = v.frontier_closed_form(p, grid)  # ... and below the averaged one (one lambda for all prompts)
    assert np.all(np.interp(kl[1:], fk, fw) - win[1:] > 1e-4)


def _draws(p, m, rng):
    return (rng.random((len(p), m)) < p[:, None]).astype(float)


def test_frontier_estimate_within_monte_carlo_error():
    """frontier_estimate (wind_jax.monte_carlo_frontier on the verifier's duel win rates) against the closed
    form at matched KL: within 3 of its standard errors at each lambda, on each of 5 independent draws."""
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.6, 128)
    fk, fw = v.frontier_closed_form(p, np.linspace(0, 40, 8001))
    for _ in range(5):
        est = v.frontier_estimate(_draws(p, 64, rng), [0.5, 1.0, 2.0, 4.0])
        gap = np.interp(est.kl, fk, fw) - est.win_rate
        assert np.all(np.abs(gap) < 3 * est.win_rate_se), (gap, est.win_rate_se)
        assert np.all(np.diff(est.kl) > 0) and est.kl[-1] > 0.3  # the compared range reaches KL 0.3


def test_frontier_estimate_bias_shrinks_with_samples():
    """The O(1/M) bias (tilting and evaluating on the same samples puts the estimate ABOVE the frontier)
    shrinks with M: averaged over 40 draws, 8 samples per prompt are clearly above, 64 about 8x less; the
    plug-in closed form at the sample accuracies lies below (the two bracket the frontier here)."""
    rng = np.random.default_rng(2)
    p = rng.uniform(0.1, 0.9, 64)
    fk, fw = v.frontier_closed_form(p, np.linspace(0, 40, 8001))
    mean_gap, plug_in_gap = {}, []
    for m in (8, 64):
        gaps = []
        for _ in range(40):
            draws = _draws(p, m, rng)
            est = v.frontier_estimate(draws, [2.0, 4.0])
            gaps.append(np.interp(est.kl, fk, fw) - est.win_rate)
            if m == 8:  # the closed form at the sample accuracies errs the other way
                pk, pw = v.frontier_closed_form(draws.mean(1), [2.0, 4.0])
                plug_in_gap.append(np.interp(pk, fk, fw) - pw)
        mean_gap[m] = np.mean(gaps, 0)
    assert np.all(mean_gap[8] < -0.004) and np.all(np.mean(plug_in_gap, 0) > 0.004)
    assert np.all(np.abs(mean_gap[64]) < np.abs(mean_gap[8]) / 4)


def test_frontier_validation_errors():
    with pytest.raises(ValueError, match="accuracy"):
        v.frontier_closed_form([1.2], [1.0])
    with pytest.raises(ValueError, match="lambdas"):
        v.frontier_closed_form([0.2], [-1.0])
    with pytest.raises(ValueError, match="correct"):
        v.verifier_win_rates(np.ones((3, 1)))


def test_intervals():
    lo, hi = v.wilson_interval(20, 100)
    assert lo < 0.2 < hi and lo == pytest.approx(0.1334, abs=1e-3) and hi == pytest.approx(0.2888, abs=1e-3)
    lo, hi = v.bootstrap_interval(np.r_[np.zeros(50), np.ones(50)], num=4000)
    assert lo == pytest.approx(0.5 - 1.96 * 0.05, abs=0.02) and hi == pytest.approx(0.5 + 1.96 * 0.05, abs=0.02)

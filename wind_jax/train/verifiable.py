"""A verifiable prompt family for SmolLM2-class models, its programmatic judge and its optimal frontier.

Problems (generated offline from a seed, each with exactly one correct answer; numbers in [10, 99], parity
in [10, 999]):
    larger     "Which number is larger, 47 or 82? Reply with just the number."             -> "82"
    smaller    "Which number is smaller, 47 or 82? Reply with just the number."            -> "47"
    largest3   "Which number is the largest: 47, 82 or 15? Reply with just the number."    -> "82"
    parity     "Is 47 even or odd? Reply with one word."                                   -> "odd"
The chat prompt is one solved example of the same family (a user turn and the assistant's answer) followed
by the question: the example fixes the reply format, so replies are a few tokens (cheap on CPU) and
SmolLM2-135M-Instruct at temperature 1 solves 39% of them, best-of-8 84% (BENCHMARKS.md, "Verifiable task").

Splits: a question (family, numbers) belongs to exactly one split by a CRC32 hash of its text (train 70%,
validation 10%, test 20%), so the splits are disjoint whatever the sizes drawn; `problems(split, count,
seed)` draws within a split.

Parser (`parse_answer`): the FIRST answer-shaped token of the reply: for the number families the first
number (a decimal such as "4.4" is read as written and is wrong), for parity the first whole word "even"
or "odd" (any case). A reply with none is unanswered (incorrect). Known false positive: a reply listing
both numbers, the right one first ("Both 16 and 26" answers 16).

Gold preference from correctness c(y) in {0, 1} (MATH.md "The optimal win-rate / KL frontier"):
    P(y > y') = 1/2 + (c(y) - c(y'))/2     (1 if only y is correct, 1/2 if both or neither are),
so the win rate of pi against pi_ref on a prompt is 1/2 + (acc(pi) - acc(pi_ref))/2. `VerifierOracle` is
this preference as a wind_jax PreferenceOracle (one query per duel, like every oracle).

Frontier: the tilt pi_lambda ∝ pi_ref exp(lambda w_ref) with w_ref(y) = 1/2 + (c(y) - p)/2 only moves mass
between correct and incorrect replies: q = p e^(lambda/2) / (p e^(lambda/2) + 1 - p),
KL = q log(q/p) + (1-q) log((1-q)/(1-p)), win rate = 1/2 + (q - p)/2, per prompt, averaged over prompts at
a common lambda (`frontier_closed_form`). `frontier_estimate` is the Monte Carlo frontier of
wind_jax.monte_carlo_frontier from pi_ref samples judged by the verifier.
"""
from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Sequence

import numpy as np

from wind_jax import monte_carlo_frontier
from wind_jax.train.oracle import PreferenceOracle, Tokens

__all__ = ["FAMILIES", "SPLITS", "Problem", "problems", "parse_answer", "is_correct", "correct_from_text",
           "chat_messages", "encode_prompts", "find_problem", "VerifierOracle", "frontier_closed_form",
           "verifier_win_rates", "frontier_estimate", "best_of_n_closed_form", "bernoulli_kl", "Rollout",
           "rollout", "wilson_interval", "bootstrap_interval"]

# family -> (question template with {} for each number, how many numbers, inclusive number range)
_TEMPLATES = {
    "larger": ("Which number is larger, {} or {}? Reply with just the number.", 2, (10, 99)),
    "smaller": ("Which number is smaller, {} or {}? Reply with just the number.", 2, (10, 99)),
    "largest3": ("Which number is the largest: {}, {} or {}? Reply with just the number.", 3, (10, 99)),
    "parity": ("Is {} even or odd? Reply with one word.", 1, (10, 999)),
}
FAMILIES = tuple(_TEMPLATES)
# split -> hash buckets (of 10) holding its questions
SPLITS = {"train": range(0, 7), "validation": range(7, 8), "test": range(8, 10)}
_QUESTION_RE = {f: re.compile(re.escape(t).replace(r"\{\}", r"(\d+)")) for f, (t, _, _) in _TEMPLATES.items()}
_NUMBER_RE = re.compile(r"(?<![A-Za-z\d.])\d+(?:\.\d+)?(?![A-Za-z\d])")
_PARITY_RE = re.compile(r"\b(even|odd)\b", re.IGNORECASE)


def _answer(family: str, numbers: Sequence[int]) -> str:
    if family in ("larger", "largest3"):
        return str(max(numbers))
    if family == "smaller":
        return str(min(numbers))
    return "even" if numbers[0] % 2 == 0 else "odd"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One question (family, numbers) and the solved example shown before it (same family)."""

    family: str
    numbers: tuple[int, ...]
    example: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.family not in _TEMPLATES:
            raise ValueError(f"Problem.family must be one of {FAMILIES}, got {self.family!r}")
        k = _TEMPLATES[self.family][1]
        for name, nums in (("numbers", self.numbers), ("example", self.example)):
            if nums is not None and (len(nums) != k or len(set(nums)) != k):
                raise ValueError(f"Problem.{name} for {self.family!r} must be {k} distinct ints, got {nums}")

    @property
    def question(self) -> str:
        return _TEMPLATES[self.family][0].format(*self.numbers)

    @property
    def answer(self) -> str:
        return _answer(self.family, self.numbers)

    @property
    def split(self) -> str:
        bucket = zlib.crc32(self.question.encode()) % 10
        return next(s for s, buckets in SPLITS.items() if bucket in buckets)

    def to_dict(self) -> dict:
        return {"family": self.family, "numbers": list(self.numbers),
                "example": None if self.example is None else list(self.example)}


def _draw_numbers(rng: np.random.Generator, family: str) -> tuple[int, ...]:
    _, k, (lo, hi) = _TEMPLATES[family]
    return tuple(int(x) for x in rng.choice(np.arange(lo, hi + 1), size=k, replace=False))


def problems(split: str, count: int, *, seed: int = 0, families: Sequence[str] = FAMILIES) -> list[Problem]:
    """`count` problems of `split` ("train" / "validation" / "test"), families in turn (round robin), drawn
    from numpy's default_rng([seed, split index]); each example is a different question of the same family."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
    if not families or any(f not in _TEMPLATES for f in families):
        raise ValueError(f"families must be a non-empty subset of {FAMILIES}, got {tuple(families)}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = np.random.default_rng([int(seed), list(SPLITS).index(split)])
    out = []
    for i in range(count):
        family = families[i % len(families)]
        for _ in range(10_000):
            p = Problem(family, _draw_numbers(rng, family))
            if p.split == split:
                break
        else:  # pragma: no cover - every family has questions in every split
            raise RuntimeError(f"no {family!r} question found in split {split!r}")
        example = _draw_numbers(rng, family)
        while example == p.numbers:
            example = _draw_numbers(rng, family)
        out.append(dataclasses.replace(p, example=example))
    return out


def chat_messages(problem: Problem) -> list[dict]:
    """The conversation: [user: example question, assistant: its answer, user: the question]."""
    msgs = []
    if problem.example is not None:
        ex = Problem(problem.family, problem.example)
        msgs += [{"role": "user", "content": ex.question}, {"role": "assistant", "content": ex.answer}]
    return msgs + [{"role": "user", "content": problem.question}]


def encode_prompts(problem_list: Sequence[Problem], tokenizer, *, pad_id: int | None = None):
    """Left-padded chat-template prompts: (tokens [N, T] int32, mask [N, T] bool) for the sampler / loop."""
    if not problem_list:
        raise ValueError("encode_prompts: no problems")
    ids = [tokenizer.apply_chat_template(chat_messages(p), tokenize=True, add_generation_prompt=True)
           for p in problem_list]
    width = max(len(x) for x in ids)
    pad = pad_id if pad_id is not None else (tokenizer.pad_id or 0)
    tokens = np.full((len(ids), width), pad, np.int32)
    mask = np.zeros((len(ids), width), bool)
    for i, x in enumerate(ids):
        tokens[i, width - len(x):] = x
        mask[i, width - len(x):] = True
    return tokens, mask


def find_problem(text: str) -> Problem | None:
    """The LAST question of any family in `text` (a decoded prompt: the example comes first), or None."""
    best = None
    for family, pattern in _QUESTION_RE.items():
        for m in pattern.finditer(text):
            if best is None or m.start() > best[0]:
                best = (m.start(), family, tuple(int(g) for g in m.groups()))
    if best is None:
        return None
    try:
        return Problem(best[1], best[2])
    except ValueError:  # repeated numbers: not a question of this family
        return None


def parse_answer(family: str, text: str) -> str | None:
    """The first answer-shaped token of a reply (see the module docstring), normalized; None if absent."""
    if family not in _TEMPLATES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if family == "parity":
        m = _PARITY_RE.search(text)
        return None if m is None else m.group(1).lower()
    m = _NUMBER_RE.search(text)
    if m is None:
        return None
    s = m.group()
    return str(int(s)) if "." not in s else s


def is_correct(problem: Problem, text: str) -> bool:
    return parse_answer(problem.family, text) == problem.answer


def correct_from_text(prompt_text: str, reply: str) -> bool:
    """c(reply) for a prompt given as text (e.g. a chat-templated string, as a TRL judge receives it): the
    prompt's last question (`find_problem`) checked against the reply. A prompt with no question raises."""
    problem = find_problem(prompt_text)
    if problem is None:
        raise ValueError(f"correct_from_text: no question of the verifiable task in {prompt_text[-120:]!r}")
    return is_correct(problem, reply)


# ------------------------------------------------------------------------------------------ the oracle
def _rows(t: Tokens) -> list[np.ndarray]:
    tokens, mask = np.asarray(t.tokens), np.asarray(t.mask, bool)
    return [tokens[i][mask[i]] for i in range(tokens.shape[0])]


class VerifierOracle(PreferenceOracle):
    """Gold preference from correctness: P(a beats b) = 1/2 + (c(a) - c(b))/2 (one query per pair).

    The problem of a pair is read from its prompt: the prompt's real tokens are decoded and the last
    question of the family is parsed (`find_problem`), so any prompt built by `encode_prompts` (any padding,
    any split, any order) is judged without a table; results are cached by the prompt's token ids. A prompt
    holding no question is an error naming the row. Replies are decoded without special tokens (EOS)."""

    name = "verifier"

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self._problems: dict[bytes, Problem] = {}

    def problems_of(self, prompt: Tokens) -> list[Problem]:
        out = []
        for i, row in enumerate(_rows(prompt)):
            key = row.astype(np.int32).tobytes()
            if key not in self._problems:
                text = self.tokenizer.decode(row.tolist())
                problem = find_problem(text)
                if problem is None:
                    raise ValueError(f"VerifierOracle: prompt row {i} holds no question of the verifiable "
                                     f"task ({FAMILIES}); decoded text ends {text[-120:]!r}")
                self._problems[key] = problem
            out.append(self._problems[key])
        return out

    def correct(self, prompt: Tokens, responses: Tokens) -> np.ndarray:
        """c(y) in {0, 1} per row, float32 [B] (a check of each reply, not a duel: counts no query)."""
        probs = self.problems_of(prompt)
        resp = _rows(responses)
        if len(resp) != len(probs):
            raise ValueError(f"VerifierOracle.correct: {len(probs)} prompts but {len(resp)} responses")
        decoded: dict[bytes, str] = {}
        out = np.zeros(len(probs), np.float32)
        for i, (problem, r) in enumerate(zip(probs, resp)):
            key = r.astype(np.int32).tobytes()
            if key not in decoded:
                decoded[key] = self.tokenizer.decode(r.tolist())
            out[i] = float(is_correct(problem, decoded[key]))
        return out

    def _prob(self, prompt, a, b):
        both = self.correct(Tokens(np.concatenate([np.asarray(prompt.tokens)] * 2),
                                   np.concatenate([np.asarray(prompt.mask)] * 2)),
                            Tokens(_cat(a.tokens, b.tokens), _cat(a.mask, b.mask)))
        n = both.shape[0] // 2
        return (0.5 + 0.5 * (both[:n] - both[n:])).astype(np.float32)


def _cat(x, y):
    """Row-concatenate two right-padded arrays of possibly different widths (padding on the right)."""
    x, y = np.asarray(x), np.asarray(y)
    w = max(x.shape[1], y.shape[1])
    pad = lambda z: np.pad(z, ((0, 0), (0, w - z.shape[1])))  # noqa: E731
    return np.concatenate([pad(x), pad(y)])


# ------------------------------------------------------------------------------------------ the frontier
def bernoulli_kl(q, p) -> np.ndarray:
    """KL(Bernoulli(q) || Bernoulli(p)) = q log(q/p) + (1-q) log((1-q)/(1-p)), with 0 log 0 = 0."""
    q, p = np.asarray(q, np.float64), np.asarray(p, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(q > 0, q * np.log(q / p), 0.0)
        b = np.where(q < 1, (1 - q) * np.log((1 - q) / (1 - p)), 0.0)
    return a + b


def frontier_closed_form(accuracy, lambdas) -> tuple[np.ndarray, np.ndarray]:
    """Exact frontier (kl [L], win_rate [L]) for prompts with pi_ref accuracies `accuracy` [X] (module
    docstring): per prompt q = p e^(lambda/2) / (p e^(lambda/2) + 1 - p), averaged over prompts at each
    lambda. Prompts with p in {0, 1} cannot move (KL 0, win rate 1/2)."""
    p = np.asarray(accuracy, np.float64).reshape(-1)
    lam = np.asarray(lambdas, np.float64).reshape(-1)
    if p.size < 1 or np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("accuracy must be a non-empty array of values in [0, 1]")
    if lam.size < 1 or np.any(~np.isfinite(lam)) or np.any(lam < 0):
        raise ValueError("lambdas must be a non-empty array of finite values >= 0")
    # q = sigmoid(logit(p) + lambda / 2); p in {0, 1} stays exactly where it is
    inner = (p > 0) & (p < 1)
    logit = np.log(np.where(inner, p, 0.5)) - np.log1p(-np.where(inner, p, 0.5))
    q = np.where(inner[None], 1.0 / (1.0 + np.exp(-(logit[None] + lam[:, None] / 2))), p[None])
    return bernoulli_kl(q, p[None]).mean(-1), (0.5 + 0.5 * (q - p[None])).mean(-1)


def best_of_n_closed_form(accuracy, ns) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best-of-n of pi_ref selected by the verifier (ties broken at random), each [len(ns)]: (kl, win_rate,
    accuracy) averaged over prompts. It picks a correct reply with probability q_n = 1 - (1 - p)^n, and given
    correctness it is pi_ref restricted to that class: on each prompt the tilt with q = q_n, a point ON that
    prompt's frontier, with KL = bernoulli_kl(q_n, p) (not log n - (n-1)/n, which holds for distinct rewards
    only). Averaged over prompts of different p it lies (slightly) below the frontier, whose common lambda
    spends the KL budget where it buys the most win rate."""
    p = np.asarray(accuracy, np.float64).reshape(-1)
    n = np.asarray(ns, np.float64).reshape(-1)
    if p.size < 1 or np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("accuracy must be a non-empty array of values in [0, 1]")
    if n.size < 1 or np.any(n < 1) or np.any(n != np.round(n)):
        raise ValueError(f"ns must be integers >= 1, got {ns!r}")
    q = 1 - (1 - p[None]) ** n[:, None]
    return bernoulli_kl(q, p[None]).mean(-1), (0.5 + 0.5 * (q - p[None])).mean(-1), q.mean(-1)


def verifier_win_rates(correct) -> np.ndarray:
    """Each pi_ref sample's gold win rate against the OTHER M - 1 samples of its prompt, [X, M]:
    w_i = 1/2 + (c_i - mean_{j != i} c_j)/2 (the exact duel probabilities; M >= 2)."""
    c = np.asarray(correct, np.float64)
    if c.ndim != 2 or c.shape[1] < 2 or np.any((c != 0) & (c != 1)):
        raise ValueError(f"correct must be [X, M >= 2] with entries in {{0, 1}}, got shape {c.shape}")
    m = c.shape[1]
    others = (c.sum(1, keepdims=True) - c) / (m - 1)
    return 0.5 + 0.5 * (c - others)


def frontier_estimate(correct, lambdas) -> monte_carlo_frontier.Frontier:
    """Monte Carlo frontier (wind_jax.monte_carlo_frontier.mc_frontier, with its standard errors) from pi_ref
    samples judged by the verifier: correct [X, M] in {0, 1}, M samples per prompt.

    Its O(1/M) bias (not in the standard errors) puts it ABOVE the true frontier; the plug-in
    `frontier_closed_form(correct.mean(1), lambdas)` errs BELOW (tests/train/test_verifiable.py measures
    both); with M = 8 they differ by up to 0.03 in win rate, with M = 64 by a few thousandths. Compare
    methods at matched KL (monte_carlo_frontier.gap_below_frontier), not at matched lambda."""
    return monte_carlo_frontier.mc_frontier(verifier_win_rates(correct), lambdas)


# ------------------------------------------------------------------------------------------ sampling
@dataclasses.dataclass
class Rollout:
    """Replies to X problems, M per problem: texts [X][M], correct / lengths / logprobs [X, M] (log pi of the
    sampled reply under the UNMODIFIED policy), and the token arrays (prompt | reply) [X, M, Tp + Tn]."""

    problems: list
    texts: list
    correct: np.ndarray
    lengths: np.ndarray
    logprobs: np.ndarray
    tokens: np.ndarray
    response_mask: np.ndarray
    attention_mask: np.ndarray


def rollout(model, tokenizer, problem_list: Sequence[Problem], key, *, num_samples: int, max_new_tokens: int,
            temperature: float = 1.0, chunk: int = 16, eos_token_id=None) -> Rollout:
    """Sample `num_samples` replies per problem with wind_jax.sampling.sample (chat template; a reply ends at
    `eos_token_id`, default the tokenizer's stop ids), `chunk` problems per call (the last chunk padded, so
    one compiled program), and check them (`is_correct`). Chunk c uses jax.random.fold_in(key, c)."""
    import jax

    from wind_jax.sampling import sample
    tokens, mask = encode_prompts(problem_list, tokenizer)
    x = len(problem_list)
    chunk = max(1, min(int(chunk), x))
    outs = []
    for c, s in enumerate(range(0, x, chunk)):
        idx = np.arange(s, s + chunk) % x  # pad the last chunk with repeats, dropped below
        o = sample(model, tokens[idx], mask[idx], jax.random.fold_in(key, c), num_samples=num_samples,
                   max_new_tokens=max_new_tokens, temperature=temperature,
                   eos_token_id=tokenizer.stop_ids if eos_token_id is None else eos_token_id,
                   pad_token_id=tokenizer.pad_id or 0)
        keep = min(chunk, x - s)
        outs.append([np.asarray(a)[:keep] for a in (o.tokens, o.response_mask, o.attention_mask, o.logprobs,
                                                    o.lengths)])
    toks, rmask, amask, lp, lengths = (np.concatenate([o[i] for o in outs]) for i in range(5))
    tp = tokens.shape[1]
    texts = [[tokenizer.decode(toks[i, j, tp:][rmask[i, j, tp:]].tolist()) for j in range(num_samples)]
             for i in range(x)]
    correct = np.array([[is_correct(p, t) for t in row] for p, row in zip(problem_list, texts)], np.float32)
    return Rollout(list(problem_list), texts, correct, lengths.astype(np.int32), lp.astype(np.float32), toks,
                   rmask, amask)


# ------------------------------------------------------------------------------------------ statistics
def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (n > 0)."""
    if n <= 0:
        raise ValueError(f"wilson_interval: n must be > 0, got {n}")
    p = successes / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return float(mid - half), float(mid + half)


def bootstrap_interval(per_prompt, *, num: int = 2000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap interval of the mean of per-prompt values [X] (prompts resampled)."""
    v = np.asarray(per_prompt, np.float64).reshape(-1)
    if v.size < 2:
        raise ValueError("bootstrap_interval: need at least 2 prompts")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(num, v.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)

"""The ONE method table: every alignment method as a record of what it samples, which pairs it duels and
how it turns the outcomes into the rows of its loss batch (MATH.md "Algorithm 3" and "Baselines"). The LLM
loop (wind_jax.train) and the contextual bandit (wind_jax.bandit) both run these records.

One outer iteration of any method, per prompt:
  1. draw `draws` samples: (source, count) with source "policy" (pi_t), "reference" (pi_ref) or "anchor"
     (J-BOND's EMA policy); count 0 means the method's n. The samples of all draws are concatenated along
     one sample axis of size `total_samples(n)`.
  2. duel them by the record's `schedule`: a fixed set of pairs asked at once (one duel, a round robin, or
     J-BOND's three pairs) or a tournament whose next pairs depend on the outcomes (knockout, best-vs-worst);
     `queries(n)` = the duels per prompt, derived from the schedule, never typed.
  3. `assemble(Tournament, n, hparams)` -> `Rows`: for each response name of the loss an index [B, r] into
     the sample axis, and the float targets the loss reads ([B, r]).
  4. the runner gathers the rows and adds the frozen log-probs the loss needs (prev_* = log pi_t, ref_*,
     anchor_*) and, when the record has one, the per-row `weight` (reading `weight_keys`).

Adding a method = one `Method` record in METHODS (+ its loss in wind_jax.losses when it is new).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import types
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from wind_jax import losses

Array = jax.Array
Duel = Callable[[Array, Array, Array], Array]   # (key, i [B, q], j [B, q]) -> outcome 1{i beats j} [B, q]


@dataclasses.dataclass(frozen=True)
class Tournament:
    """What the duels gave, per prompt: outcome[b, q] of sample i[b, q] against j[b, q] (a probability or a
    0/1 draw); `best` / `worst` [B] are a tournament schedule's results (None for fixed pairs)."""

    outcome: Array
    i: Array | None = None
    j: Array | None = None
    best: Array | None = None
    worst: Array | None = None


jax.tree_util.register_dataclass(Tournament, data_fields=["outcome", "i", "j", "best", "worst"], meta_fields=[])


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Which duels a method asks among its n samples. Fixed schedules have `pairs(n)` (asked at once, in
    that order); adaptive ones `play(duel, key, n, batch)` and `count(n)` duels per prompt."""

    name: str
    pairs: Callable[[int], tuple[tuple[int, int], ...]] | None = None
    play: Callable[[Duel, Array, int, int], Tournament] | None = None
    count: Callable[[int], int] | None = None

    @property
    def adaptive(self) -> bool:
        return self.pairs is None

    def queries(self, n: int) -> int:
        return self.count(n) if self.adaptive else len(self.pairs(n))

    def run(self, duel: Duel, key: Array, n: int, batch: int) -> Tournament:
        """Every duel of the schedule through `duel` (fixed pairs: one call with the pairs in order)."""
        if self.adaptive:
            return self.play(duel, key, n, batch)
        pairs = self.pairs(n)
        i, j = (jnp.broadcast_to(jnp.asarray([p[k] for p in pairs], jnp.int32), (batch, len(pairs)))
                for k in (0, 1))
        return Tournament(duel(key, i, j), i, j)


def round_robin(n: int) -> tuple[tuple[int, int], ...]:
    """All n (n - 1) / 2 pairs i < j."""
    return tuple(itertools.combinations(range(n), 2))


def _knockout(duel: Duel, key: Array, idx: Array) -> tuple[Array, Array]:
    """Single elimination over sample indices idx [B, m] (m a power of 2): m - 1 duels -> (key, winner [B])."""
    while idx.shape[1] > 1:  # static depth log2(m)
        key, sub = jax.random.split(key)
        a, b = idx[:, 0::2], idx[:, 1::2]
        idx = jnp.where(duel(sub, a, b) > 0, a, b)
    return key, idx[:, 0]


def _play_knockout(duel, key, n, batch):
    """BoN_n by a knockout: for n = 2 the winner is an exact sample of BoN_2(pi) = 2 pi w_pi (MATH.md); for a
    deterministic reward preference it is the best of n (ties broken by the P = 1/2 coin)."""
    if n & (n - 1):
        raise ValueError(f"a knockout needs a power-of-2 number of samples, got n={n}")
    _, best = _knockout(duel, key, jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (batch, n)))
    return Tournament(jnp.zeros((batch, 0)), best=best)


def _play_best_worst(duel, key, n, batch):
    """Best and worst of n (n/2 a power of 2) with 3n/2 - 2 duels: a first round splits winners from losers,
    a knockout of the winners gives the best, a knockout of the losers under the reversed preference (each
    duel asked as (b, a)) the worst. Exact for a deterministic transitive preference, noisy otherwise."""
    if n < 2 or n % 2 or (n // 2) & (n // 2 - 1):
        raise ValueError(f"best-vs-worst needs n even with n/2 a power of 2, got n={n}")
    k1, k2, k3 = jax.random.split(key, 3)
    idx = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (batch, n))
    a, b = idx[:, 0::2], idx[:, 1::2]
    won = duel(k1, a, b) > 0
    _, best = _knockout(duel, k2, jnp.where(won, a, b))
    _, worst = _knockout(lambda k, x, y: duel(k, y, x), k3, jnp.where(won, b, a))
    return Tournament(jnp.zeros((batch, 0)), best=best, worst=worst)


ONE_DUEL = Schedule("one duel", pairs=lambda n: ((0, 1),))
ROUND_ROBIN = Schedule("round robin", pairs=round_robin)
KNOCKOUT = Schedule("knockout", play=_play_knockout, count=lambda n: n - 1)
BEST_VS_WORST = Schedule("best vs worst", play=_play_best_worst, count=lambda n: 3 * n // 2 - 2)
JBOND_PAIRS = Schedule("policy vs each anchor, anchor vs anchor", pairs=lambda n: ((0, 1), (0, 2), (1, 2)))


@dataclasses.dataclass(frozen=True)
class Rows:
    """Per prompt: `index[name]` [B, r] sample indices of each response name; `values[key]` [B, r] floats
    (targets and other per-row batch keys); all names share r rows per prompt."""

    index: Mapping[str, Array]
    values: Mapping[str, Array]


@dataclasses.dataclass(frozen=True)
class Method:
    """One alignment method (see the module docstring for the data flow).

    name: the method's name in configs and tables. loss: its wind_jax.losses name.
    draws: ((source, count), ...); count 0 = n. default_n: n when a config leaves num_samples at 0;
    fixed_n: n may not be changed. sources: the draw source of each response name. schedule: the duels.
    assemble: (Tournament, n, hparams) -> Rows. fixed_hparams: loss hparams the method pins (SPPO as
    published: beta = 0). ranges: ((hparam, low, high, brackets), ...) the interval the method is defined on,
brackets "()", "[)", "(]" or "[]".
    weight: optional (frozen batch, hparams) -> [R] per-row weights, reading the batch keys `weight_keys`
    (Alg. 1's mixing for bon_distill), used when `weighted(hparams)`. extra_hparams: method hparams that are
    not loss hparams (bon_distill's alpha).
    """

    name: str
    loss: str
    draws: tuple[tuple[str, int], ...]
    sources: Mapping[str, str]
    schedule: Schedule
    assemble: Callable[[Tournament, int, Mapping[str, float]], Rows]
    default_n: int = 2
    fixed_n: bool = False
    fixed_hparams: tuple[tuple[str, float], ...] = ()
    ranges: tuple[tuple[str, float, float, str], ...] = ()
    weight: Callable[[Mapping[str, Array], Mapping[str, float]], Array] | None = None
    weight_keys: tuple[str, ...] = ()
    weighted: Callable[[Mapping[str, float]], bool] = lambda hp: False
    extra_hparams: tuple[tuple[str, float], ...] = ()
    doc: str = ""

    @property
    def spec(self) -> losses.LossSpec:
        return losses.get_loss(self.loss)

    @property
    def needs_offset(self) -> bool:
        return "offset" in self.spec.policy_keys

    def n(self, num_samples: int = 0) -> int:
        if self.fixed_n and num_samples not in (0, self.default_n):
            raise ValueError(f"method {self.name!r} draws exactly {self.default_n} samples per prompt; "
                             f"num_samples={num_samples} is not allowed (leave it 0)")
        return num_samples or self.default_n

    def counts(self, n: int) -> tuple[tuple[str, int], ...]:
        return tuple((src, c or n) for src, c in self.draws)

    def total_samples(self, n: int) -> int:
        return sum(c for _, c in self.counts(n))

    def queries(self, n: int) -> int:
        """Preference queries (duels) per prompt."""
        return self.schedule.queries(n)

    def uses(self, source: str) -> bool:
        return any(src == source for src, _ in self.draws)

    def check_hparams(self, hparams: Mapping[str, float]) -> None:
        """ValueError naming the hparam when a value lies outside the range the method is defined on."""
        for name, lo, hi, brackets in self.ranges:
            if name not in hparams:
                continue
            v = float(hparams[name])
            above = v > lo if brackets[0] == "(" else v >= lo
            below = v < hi if brackets[1] == ")" else v <= hi
            if not (math.isfinite(v) and above and below):
                raise ValueError(f"method {self.name!r}: {name}={v:g} lies outside {brackets[0]}{lo:g}, {hi:g}"
                                 f"{brackets[1]}, where the method is defined")


# ------------------------------------------------------------------------------------------ assembling
def win_matrix(pref: Array, n: int) -> Array:
    """[B, n, n] with M[i, j] = pref of pair (i, j), 1 - pref for (j, i), 1/2 on the diagonal."""
    pairs = round_robin(n)
    b = pref.shape[0]
    i, j = (jnp.asarray([p[k] for p in pairs], jnp.int32) for k in (0, 1))
    m = jnp.full((b, n, n), 0.5, jnp.float32)
    m = m.at[:, i, j].set(pref)
    return m.at[:, j, i].set(1.0 - pref)


def win_rates(pref: Array, n: int) -> Array:
    """Round-robin win rates w_i = mean_j M_ij (diagonal 1/2 included, as SPPO's estimator), pref [B, Q]
    over the pairs of `round_robin(n)`: the one estimate of w_pi(y_i) from duels."""
    return win_matrix(pref, n).mean(axis=2)


def _column(x: Array) -> Array:
    return x[:, None].astype(jnp.int32)


def _wind_rows(t, n, hp):
    """Both duellists become rows: (y, ell) and (y', 1 - ell) (MATH.md Alg. 3, one query per sample)."""
    del n, hp
    pref = t.outcome
    index = jnp.broadcast_to(jnp.arange(2, dtype=jnp.int32), (pref.shape[0], 2))
    return Rows({"y": index}, {"target": jnp.stack([pref[:, 0], 1.0 - pref[:, 0]], 1)})


def _wind_kl_rows(t, n, hp):
    """One row per duel: (y, y', ell)."""
    del n, hp
    zeros = jnp.zeros((t.outcome.shape[0], 1), jnp.int32)
    return Rows({"y": zeros, "y_prime": zeros + 1}, {"target": t.outcome[:, :1]})


def _best_worst(t, n):
    w = win_rates(t.outcome, n)
    return w, _column(jnp.argmax(w, axis=1)), _column(jnp.argmin(w, axis=1))


def _pair_rows(t, n, hp):
    """Round-robin winner as chosen, loser as rejected (DPO, BoNBoN)."""
    del hp
    _, hi, lo = _best_worst(t, n)
    return Rows({"chosen": hi, "rejected": lo}, {})


def _sppo_rows(t, n, hp):
    """Best and worst of K with their round-robin win rates as targets (SPPO's estimator)."""
    del hp
    w, hi, lo = _best_worst(t, n)
    return Rows({"chosen": hi, "rejected": lo},
                {"target_chosen": jnp.take_along_axis(w, hi, 1), "target_rejected": jnp.take_along_axis(w, lo, 1)})


def _bon_rows(t, n, hp):
    """The round-robin winner (a BoN_n sample of pi_t under a transitive judge) and its win rate."""
    del hp
    w, hi, _ = _best_worst(t, n)
    return Rows({"y": hi}, {"target": jnp.take_along_axis(w, hi, 1)})


def _tournament_best(t, n, hp):
    """The tournament's winner (knockout: BoN_n of pi_t)."""
    del n, hp
    return Rows({"y": _column(t.best)}, {})


def _tournament_pair(t, n, hp):
    """The tournament's best as chosen, its worst as rejected."""
    del n, hp
    return Rows({"chosen": _column(t.best), "rejected": _column(t.worst)}, {})


def _bon_mixing_weight(batch, hp):
    """Alg. 1's geometric mixing pi_{t+1} ∝ BoN_n(pi_t)^(1-alpha) pi_ref^alpha as importance weights on the
    BoN samples: q / BoN_n(pi_t) ∝ (pi_ref / BoN_n(pi_t))^alpha with BoN_n(pi_t)(y) ∝ pi_t(y) w(y)^(n-1)
    (MATH.md working form, w the round-robin estimate). policy_step normalizes the weights over the batch.
    Log-weights are centred (the normalization removes the constant) and clipped at +-20 for stability."""
    alpha, n = hp["alpha"], hp["n"]
    log_w = alpha * (batch["ref_y"] - batch["prev_y"]
                     - (n - 1.0) * jnp.log(jnp.clip(batch["target"], 1e-6, 1.0)))
    log_w = log_w - jax.lax.stop_gradient(jnp.mean(log_w))
    return jnp.exp(jnp.clip(log_w, -20.0, 20.0))


def _jbond_rows(t, n, hp):
    """y = the policy sample; best = the better anchor sample; lost_to_both = (1 - o1)(1 - o2)."""
    del n, hp
    pref = t.outcome
    best = jnp.where(pref[:, 2:3] >= 0.5, 1, 2).astype(jnp.int32)
    return Rows({"y": jnp.zeros((pref.shape[0], 1), jnp.int32), "best": best},
                {"lost_to_both": ((1.0 - pref[:, 0]) * (1.0 - pref[:, 1]))[:, None]})


_BETA_POSITIVE = (("beta", 0.0, math.inf, "()"),)
_PAIRS = types.MappingProxyType({"chosen": "policy", "rejected": "policy"})
_REF_PAIRS = types.MappingProxyType({"chosen": "reference", "rejected": "reference"})


def _wind(name: str, assemble=_wind_rows, doc="") -> Method:
    return Method(name, name, (("policy", 2),), {"y": "policy", "y_prime": "policy"}, ONE_DUEL, assemble,
                  fixed_n=True, ranges=_BETA_POSITIVE, doc=doc)


METHODS: dict[str, Method] = {m.name: m for m in [
    _wind("wind_sq", doc="WIND, squared loss with SPPO's eta/2 baseline for logZ"),
    _wind("wind_sq_offset", doc="WIND, squared loss with a learned per-prompt offset b(x)"),
    _wind("wind_kl", _wind_kl_rows, doc="WIND, on-policy reverse-KL surrogate, one row per duel"),
    _wind("wind_nce", doc="WIND, NCE discrimination of duel winners (reconstruction)"),
    Method("sppo", "sppo", (("policy", 0),), _PAIRS, ROUND_ROBIN, _sppo_rows, default_n=5,
           fixed_hparams=(("beta", 0.0),),
           doc="SPPO as published: K samples, K x K win rates, best/worst, beta = 0"),
    Method("sppo_beta", "sppo", (("policy", 0),), _PAIRS, ROUND_ROBIN, _sppo_rows, default_n=5,
           ranges=_BETA_POSITIVE, doc="SPPO's estimator with WIND's KL term toward pi_ref (beta > 0)"),
    Method("sppo_hard", "sppo_hard", (("policy", 0),), _PAIRS, ROUND_ROBIN, _pair_rows, default_n=5,
           fixed_hparams=(("beta", 0.0),),
           doc="SPPO with hard targets: the round-robin best and worst of K with win rates 1 and 0"),
    Method("jbond", "jbond", (("policy", 1), ("anchor", 2)), {"y": "policy", "best": "anchor"},
           JBOND_PAIRS, _jbond_rows, default_n=3, fixed_n=True,
           doc="J-BOND (reconstruction): 1 policy + 2 EMA-anchor samples, 3 duels"),
    Method("bonbon", "bonbon", (("reference", 0),), _REF_PAIRS, ROUND_ROBIN, _pair_rows, default_n=8,
           doc="BoNBoN: round-robin best/worst of n samples of pi_ref"),
    Method("bonbon_sigmoid", "bonbon_sigmoid", (("reference", 0),), _REF_PAIRS, ROUND_ROBIN, _pair_rows,
           default_n=8, doc="BoNBoN's released-code variant: DPO's sigmoid loss at the BoN_n temperature"),
    Method("bonbon_best_worst", "bonbon", (("reference", 0),), _REF_PAIRS, BEST_VS_WORST, _tournament_pair,
           default_n=8, doc="BoNBoN: best/worst of n samples of pi_ref with 3n/2 - 2 duels"),
    Method("dpo", "dpo", (("policy", 0),), _PAIRS, ROUND_ROBIN, _pair_rows, default_n=2,
           ranges=_BETA_POSITIVE, doc="online DPO: round-robin winner/loser of n samples of pi_t"),
    Method("dpo_best_worst", "dpo", (("policy", 0),), _PAIRS, BEST_VS_WORST, _tournament_pair, default_n=4,
           ranges=_BETA_POSITIVE, doc="online DPO: best/worst of n samples of pi_t with 3n/2 - 2 duels"),
    Method("ipo", "ipo", (("policy", 0),), _PAIRS, ROUND_ROBIN, _pair_rows, default_n=2,
           ranges=(("tau", 0.0, math.inf, "()"),), doc="online IPO: round-robin winner/loser of n samples of pi_t"),
    Method("bon_distill", "bon_distill", (("policy", 0),), {"y": "policy"}, ROUND_ROBIN, _bon_rows,
           default_n=4, ranges=(("alpha", 0.0, 1.0, "[)"),), weight=_bon_mixing_weight,
           weight_keys=("prev_y", "ref_y", "target"), weighted=lambda hp: hp.get("alpha", 0.0) > 0,
           extra_hparams=(("alpha", 0.0),),
           doc="iterative BoN distillation (Alg. 1), round-robin winner, geometric mixing toward pi_ref with alpha"),
    Method("bon_knockout", "bon_distill", (("policy", 0),), {"y": "policy"}, KNOCKOUT, _tournament_best,
           default_n=4, doc="iterative BoN distillation (Alg. 1), the winner of a knockout (n - 1 duels)"),
]}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]

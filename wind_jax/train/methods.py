"""Every alignment method as one record: what it samples, which pairs it asks the oracle about, and how it
turns the answers into the rows of its loss batch (MATH.md "Algorithm 3" and "Baselines").

One outer iteration of any method, per prompt (wind_jax.train.loop):
  1. draw `draws` samples: (source, count) with source "policy" (pi_t), "reference" (pi_ref) or "anchor"
     (J-BOND's EMA policy); count 0 means the method's n (`num_samples`). The samples of all draws are
     concatenated along one axis of size `total_samples(n)`.
  2. ask the oracle once about each pair in `pairs(n)` (indices into that axis): `queries(n)` = len(pairs).
  3. `assemble(pref [B, Q], n, hparams)` -> `Rows`: for each response name of the loss an index [B, r] into
     the sample axis, and the float targets the loss reads ([B, r]). pref[b, q] is the Bernoulli outcome
     (oracle_mode "sample") or the probability ("prob") that pairs[q][0] beats pairs[q][1].
  4. the loop gathers the rows, adds the frozen log-probs the loss needs (prev_* = log pi_t, ref_*, anchor_*;
     a sample's own sampler log-prob is used when it was drawn from that model) and, when the record has
     one, the per-row `weight`.

Adding a method = one `Method` record in METHODS (+ its loss in wind_jax.losses when it is new); whether it
needs the learned offset head b(x) follows from its loss (`"offset" in LossSpec.policy_keys`).
"""
from __future__ import annotations

import dataclasses
import itertools
import types
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from wind_jax import losses

Array = jax.Array


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
    draws: ((source, count), ...); count 0 = n. default_n: n when the config leaves num_samples at 0;
    fixed_n: n may not be changed (WIND's single duel). sources: the draw source of each response name.
    pairs: n -> ((i, j), ...) pairs asked. assemble: (pref, n, hparams) -> Rows.
    fixed_hparams: ((name, value), ...) loss hparams the method pins (SPPO as published: beta = 0).
    weight: optional (frozen batch, hparams) -> [R] per-row weights (e.g. Alg. 1's mixing for bon_distill).
    extra_hparams: ((name, default), ...) method hparams that are not loss hparams, e.g. bon_distill's alpha.
    """

    name: str
    loss: str
    draws: tuple[tuple[str, int], ...]
    sources: Mapping[str, str]
    pairs: Callable[[int], tuple[tuple[int, int], ...]]
    assemble: Callable[[Array, int, Mapping[str, float]], Rows]
    default_n: int = 2
    fixed_n: bool = False
    fixed_hparams: tuple[tuple[str, float], ...] = ()
    weight: Callable[[Mapping[str, Array], Mapping[str, float]], Array] | None = None
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
        """Preference queries per prompt."""
        return len(self.pairs(n))

    def uses(self, source: str) -> bool:
        return any(src == source for src, _ in self.draws)


# ------------------------------------------------------------------------------------------ assembling
def one_duel(n: int) -> tuple[tuple[int, int], ...]:
    del n
    return ((0, 1),)


def round_robin(n: int) -> tuple[tuple[int, int], ...]:
    """All n (n - 1) / 2 pairs i < j."""
    return tuple(itertools.combinations(range(n), 2))


def win_matrix(pref: Array, n: int) -> Array:
    """[B, n, n] with M[i, j] = pref of pair (i, j), 1 - pref for (j, i), 1/2 on the diagonal."""
    pairs = round_robin(n)
    b = pref.shape[0]
    i, j = (jnp.asarray([p[k] for p in pairs], jnp.int32) for k in (0, 1))
    m = jnp.full((b, n, n), 0.5, jnp.float32)
    m = m.at[:, i, j].set(pref)
    return m.at[:, j, i].set(1.0 - pref)


def win_rates(pref: Array, n: int) -> Array:
    """Row-wise round-robin win rates w_i = mean_j M_ij (diagonal 1/2 included, as SPPO's estimator)."""
    return win_matrix(pref, n).mean(axis=2)


def _wind_rows(pref, n, hp):
    """Both duellists become rows: (y, ell) and (y', 1 - ell) (MATH.md Alg. 3, one query per sample)."""
    del n, hp
    b = pref.shape[0]
    index = jnp.broadcast_to(jnp.arange(2, dtype=jnp.int32), (b, 2))
    return Rows({"y": index}, {"target": jnp.stack([pref[:, 0], 1.0 - pref[:, 0]], 1)})


def _wind_kl_rows(pref, n, hp):
    """One row per duel: (y, y', ell)."""
    del n, hp
    b = pref.shape[0]
    zeros = jnp.zeros((b, 1), jnp.int32)
    return Rows({"y": zeros, "y_prime": zeros + 1}, {"target": pref[:, :1]})


def _best_worst(pref, n):
    w = win_rates(pref, n)
    hi, lo = jnp.argmax(w, axis=1), jnp.argmin(w, axis=1)
    return w, hi[:, None].astype(jnp.int32), lo[:, None].astype(jnp.int32)


def _pair_rows(pref, n, hp):
    """Round-robin winner as chosen, loser as rejected (DPO, BoNBoN)."""
    del hp
    _, hi, lo = _best_worst(pref, n)
    return Rows({"chosen": hi, "rejected": lo}, {})


def _sppo_rows(pref, n, hp):
    """Best and worst of K with their round-robin win rates as targets (SPPO's estimator)."""
    del hp
    w, hi, lo = _best_worst(pref, n)
    return Rows({"chosen": hi, "rejected": lo},
                {"target_chosen": jnp.take_along_axis(w, hi, 1), "target_rejected": jnp.take_along_axis(w, lo, 1)})


def _bon_rows(pref, n, hp):
    """The round-robin winner (a BoN_n sample of pi_t under a transitive judge) and its win rate."""
    del hp
    w, hi, _ = _best_worst(pref, n)
    return Rows({"y": hi}, {"target": jnp.take_along_axis(w, hi, 1)})


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


def _jbond_pairs(n):
    del n
    return ((0, 1), (0, 2), (1, 2))   # y vs anchor a1, y vs a2, a1 vs a2


def _jbond_rows(pref, n, hp):
    """y = the policy sample; best = the better anchor sample; lost_to_both = (1 - o1)(1 - o2)."""
    del n, hp
    best = jnp.where(pref[:, 2:3] >= 0.5, 1, 2).astype(jnp.int32)
    b = pref.shape[0]
    return Rows({"y": jnp.zeros((b, 1), jnp.int32), "best": best},
                {"lost_to_both": ((1.0 - pref[:, 0]) * (1.0 - pref[:, 1]))[:, None]})


def _wind(name: str, assemble=_wind_rows, doc="") -> Method:
    return Method(name, name, (("policy", 2),), {"y": "policy", "y_prime": "policy"}, one_duel, assemble,
                  fixed_n=True, doc=doc)


_PAIR_SOURCES = types.MappingProxyType({"chosen": "policy", "rejected": "policy"})

METHODS: dict[str, Method] = {m.name: m for m in [
    _wind("wind_sq", doc="WIND, squared loss with SPPO's eta/2 baseline for logZ"),
    _wind("wind_sq_offset", doc="WIND, squared loss with a learned per-prompt offset b(x)"),
    _wind("wind_kl", _wind_kl_rows, doc="WIND, on-policy reverse-KL surrogate, one row per duel"),
    _wind("wind_nce", doc="WIND, NCE discrimination of duel winners (reconstruction)"),
    Method("sppo", "sppo", (("policy", 0),), _PAIR_SOURCES, round_robin, _sppo_rows, default_n=5,
           fixed_hparams=(("beta", 0.0),),
           doc="SPPO as published: K samples, K x K win rates, best/worst, beta = 0"),
    Method("sppo_beta", "sppo", (("policy", 0),), _PAIR_SOURCES, round_robin, _sppo_rows, default_n=5,
           doc="SPPO's estimator with WIND's KL term toward pi_ref (beta > 0)"),
    Method("jbond", "jbond", (("policy", 1), ("anchor", 2)), {"y": "policy", "best": "anchor"},
           _jbond_pairs, _jbond_rows, default_n=3, fixed_n=True,
           doc="J-BOND (reconstruction): 1 policy + 2 EMA-anchor samples, 3 duels"),
    Method("bonbon", "bonbon", (("reference", 0),), {"chosen": "reference", "rejected": "reference"},
           round_robin, _pair_rows, default_n=8, doc="BoNBoN: best/worst of n samples of pi_ref"),
    Method("dpo", "dpo", (("policy", 0),), _PAIR_SOURCES, round_robin, _pair_rows, default_n=2,
           doc="online DPO: round-robin winner/loser of n samples of pi_t"),
    Method("bon_distill", "bon_distill", (("policy", 0),), {"y": "policy"}, round_robin, _bon_rows,
           default_n=4, weight=_bon_mixing_weight, extra_hparams=(("alpha", 0.0),),
           doc="iterative BoN distillation (Alg. 1), geometric mixing toward pi_ref with alpha"),
]}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]

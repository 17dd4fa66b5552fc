"""Alignment losses as pure functions of summed sequence log-probs, with a registry by name.

Every loss has the signature ``fn(logps, batch, hparams) -> (per_example_loss [B], metrics)``:

* ``logps``: the TRAINABLE policy's summed response log-probs, one [B] array per response name
  (``"y"``, ``"y_prime"``, ``"chosen"``, ``"rejected"``, ``"best"``), plus ``"offset"`` (a learned per-prompt
  offset b(x), one scalar per example) where the loss uses one.
* ``batch``: frozen inputs, each [B]: log-probs named ``"<role>_<response>"`` with role in {prev, ref,
  anchor} (log pi_t, log pi_ref, log pi_anchor), and preference targets in [0, 1].
* ``hparams``: floats (beta, eta, ...); :class:`LossSpec` ``defaults`` fill what is not given.

Use :func:`compute_loss` (validates names, shapes, NaN and ranges) rather than calling ``fn`` directly.
The formulas are ``shared/MATH.md`` "Algorithm 3" and "Baselines"; reconstruction choices are stated in
each loss's docstring. Numerics: only differences of log-probs, squares, ``log_sigmoid`` and ``softplus``
appear (no exp of a log-prob), so float32 log-probs in the thousands give finite losses and gradients.
Inputs are computed in float32, or float64 when they are float64 (x64 mode).

Shared notation (MATH.md, Alg. 3): for a response y,
    h(y) = log pi_theta(y) - (1 - eta*beta) sg(log pi_t(y)) - eta*beta sg(log pi_ref(y)),
and the exact WIND (MD form) step pi_{t+1} is the policy with  h(y) = eta * w_{pi_t}(y) - logZ_t(x).
"""
from __future__ import annotations

import dataclasses
import math
import types
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "LossSpec",
    "LOSSES",
    "get_loss",
    "compute_loss",
    "check_hparams",
    "bonbon_margin",
    "bonbon_temperature",
    "wind_residual",
]

Array = jax.Array
Metrics = dict[str, Array]
LossFn = Callable[[Mapping[str, Array], Mapping[str, Array], Mapping[str, float]], tuple[Array, Metrics]]


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A registered loss: its function, the keys it reads and its hyperparameter defaults.

    ``target_keys`` are the batch keys holding preference targets (checked to lie in [0, 1]).
    """

    name: str
    fn: LossFn
    policy_keys: tuple[str, ...]
    batch_keys: tuple[str, ...]
    defaults: Mapping[str, float]
    target_keys: tuple[str, ...] = ()


# ----------------------------------------------------------------------------------------------- helpers


def _f(x: Any) -> Array:
    """As a float array of at least float32 precision (float64 stays float64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _sg(x: Any) -> Array:
    return jax.lax.stop_gradient(_f(x))


def wind_residual(logp: Array, prev: Array, ref: Array, eta: float, beta: float) -> Array:
    """h = log pi_theta - (1 - eta beta) sg(log pi_t) - eta beta sg(log pi_ref)   (MATH.md, Alg. 3)."""
    eb = eta * beta
    return _f(logp) - (1.0 - eb) * _sg(prev) - eb * _sg(ref)


def bonbon_margin(n: int) -> float:
    """(n - 1) * H_{n-1}: the expected best-minus-worst log-ratio of BoN_n (MATH.md, BoNBoN facts).

    bonbon_margin(8) = 7 * H_7 = 18.15.
    """
    if isinstance(n, bool) or int(n) != n or n < 2:
        raise ValueError(f"bonbon_margin: n must be an integer >= 2, got {n!r}")
    n = int(n)
    return (n - 1) * math.fsum(1.0 / k for k in range(1, n))


def bonbon_temperature(n: int) -> float:
    """1 / (2 (n-1) H_{n-1}): the DPO-sigmoid temperature of BoNBoN's released code (0.0275 for n = 8)."""
    return 1.0 / (2.0 * bonbon_margin(n))


def _pair_metrics(chosen_logp, rejected_logp, chosen_reward, rejected_reward) -> Metrics:
    margin = chosen_reward - rejected_reward
    return {
        "rewards/chosen": jnp.mean(chosen_reward),
        "rewards/rejected": jnp.mean(rejected_reward),
        "rewards/margins": jnp.mean(margin),
        "rewards/accuracies": jnp.mean((margin > 0).astype(margin.dtype)),
        "logps/chosen": jnp.mean(_f(chosen_logp)),
        "logps/rejected": jnp.mean(_f(rejected_logp)),
    }


# ------------------------------------------------------------------------------------ WIND (Algorithm 3)


def _wind_sq(logps, batch, hp):
    """wind_sq: (h - eta (ell - 1/2))^2, SPPO's logZ ~ eta/2 baseline (MATH.md Alg. 3).

    Population minimizer (tabular): h = eta (w - 1/2) projected on normalized policies, which is the exact
    WIND step only up to logZ_t - eta/2 = O(eta^2); kept as the simple, slightly biased baseline.
    """
    eta, beta = hp["eta"], hp["beta"]
    h = wind_residual(logps["y"], batch["prev_y"], batch["ref_y"], eta, beta)
    r = h - eta * (_f(batch["target"]) - 0.5)
    return jnp.square(r), _per_sample_metrics(logps, batch, h, r)


def _wind_sq_offset(logps, batch, hp):
    """wind_sq_offset: (h + b(x) - eta ell)^2 with a learned per-prompt offset b = logps["offset"].

    Exact (MATH.md Alg. 3): h + b is free per (x, y) in the tabular model, the conditional mean of ell is
    w_{pi_t}(y), so the pi_t-weighted minimizer is log pi = (1-eta beta) log pi_t + eta beta log pi_ref
    + eta w - b with b(x) = logZ_t(x): the exact MD-form WIND step.
    """
    eta, beta = hp["eta"], hp["beta"]
    h = wind_residual(logps["y"], batch["prev_y"], batch["ref_y"], eta, beta)
    r = h + _f(logps["offset"]) - eta * _f(batch["target"])
    metrics = _per_sample_metrics(logps, batch, h, r)
    metrics["wind/offset"] = jnp.mean(_f(logps["offset"]))
    return jnp.square(r), metrics


def _wind_kl(logps, batch, hp):
    """wind_kl: on-policy reverse KL to the WIND target with a leave-one-out duel-partner baseline.

    One example is one duel: y and y' sampled from pi_theta = pi_t (the current iterate at sampling time),
    target ell = 1{y beats y'} (or P(y beats y')). The reverse-KL gradient (MATH.md Alg. 3) is
        E_{y~pi_theta}[grad log pi_theta(y) * (h(y) - eta w_{pi_t}(y) - c(x))].
    Design of the baseline: c for y is  sg(h(y')) - eta/2,  and for y' it is  sg(h(y)) - eta/2. It uses the
    partner's log-probs (y' is independent of y given x) but NOT the partner's duel outcome 1 - ell, which is
    correlated with y's own outcome (E[1 - ell | y] = 1 - w(y)) and would bias the gradient. The two
    advantages are then a and -a with
        a = (h(y) - h(y')) - eta (ell - 1/2),
    and the surrogate sg(a) log pi(y) + sg(-a) log pi(y') has the same gradient as the per-example loss
    returned here, a^2 / 2 (only log pi_theta depends on the parameters). Hence:
    * at pi_theta = pi_t its expected gradient equals grad KL(pi_theta || pi_target) (unbiased with single
      duels; Monte Carlo test in tests/test_losses.py);
    * used off-policy (later inner steps on the same samples) it is a pairwise regression whose tabular
      population minimizer is still the exact WIND step (h = eta w + const; the offset cancels in h(y) - h(y')).
    """
    eta, beta = hp["eta"], hp["beta"]
    h = wind_residual(logps["y"], batch["prev_y"], batch["ref_y"], eta, beta)
    hp_ = wind_residual(logps["y_prime"], batch["prev_y_prime"], batch["ref_y_prime"], eta, beta)
    a = (h - hp_) - eta * (_f(batch["target"]) - 0.5)
    metrics = _per_sample_metrics(logps, batch, h, a)
    return 0.5 * jnp.square(a), metrics


def _wind_nce(logps, batch, hp):
    """wind_nce: logistic discrimination of duel winners (samples of BoN_2(pi_t) = 2 pi_t w) from pi_t samples.

    Per pi_t sample y with duel outcome ell, with logit u = 2 (h + b(x)) / eta (b = logps["offset"]):
        loss = 2 ell softplus(-u) + softplus(u)
    (the balanced NCE loss: each duel gives one winner and two pi_t samples; E over ell of the winner term
    is 2 w softplus(-u)). Pointwise optimum u = log(2 w), i.e. h + b = (eta/2) log(2 w).
    Reconstruction choice (documented, MATH.md says the paper's form is unknown): the resulting policy is
        pi ∝ pi_t^(1-eta beta) pi_ref^(eta beta) w^(eta/2),
    the log-win-rate step (Alg. 1 with n = 2, step eta/2), which agrees with the WIND step eta w to first
    order in w - 1/2 (log 2w = 2 (w - 1/2) + O((w - 1/2)^2)); it is not the exact WIND step.

    Bounded target (option): log(2 w) is unbounded below, so with few duels a response that lost all of its
    duels in the batch is pushed toward log 0. ``pseudo_count`` = a >= 0 replaces ell by the Beta(a, a)
    posterior mean (ell + a) / (1 + 2a), whose mean lies in [a/(1+2a), (1+a)/(1+2a)]: the optimum becomes
    u = log(2 w_a), w_a = (w + a) / (1 + 2a), bounded below by log(2a/(1+2a)), at the price of shrinking the
    win rates toward 1/2 (the fixed point moves toward pi_ref by that factor). a = 0 (default) is the
    unmodified loss.
    """
    eta, beta = hp["eta"], hp["beta"]
    h = wind_residual(logps["y"], batch["prev_y"], batch["ref_y"], eta, beta)
    u = 2.0 * (h + _f(logps["offset"])) / eta
    a = hp["pseudo_count"]
    ell = (_f(batch["target"]) + a) / (1.0 + 2.0 * a)
    loss = 2.0 * ell * jax.nn.softplus(-u) + jax.nn.softplus(u)
    metrics = _per_sample_metrics(logps, batch, h, loss)
    del metrics["wind/residual_rms"]
    metrics["wind/nce_logit"] = jnp.mean(u)
    metrics["wind/offset"] = jnp.mean(_f(logps["offset"]))
    return loss, metrics


def _per_sample_metrics(logps, batch, h, residual) -> Metrics:
    return {
        "logps/y": jnp.mean(_f(logps["y"])),
        "objective/kl": jnp.mean(_f(logps["y"]) - _f(batch["ref_y"])),
        "objective/kl_prev": jnp.mean(_f(logps["y"]) - _f(batch["prev_y"])),
        "wind/h": jnp.mean(h),
        "wind/residual_rms": jnp.sqrt(jnp.mean(jnp.square(residual))),
        "wind/target": jnp.mean(_f(batch["target"])),
    }


# ------------------------------------------------------------------------------------------- baselines


def _sppo_core(logps, batch, hp, w_chosen, w_rejected):
    eta, beta = hp["eta"], hp["beta"]
    a = wind_residual(logps["chosen"], batch["prev_chosen"], batch["ref_chosen"], eta, beta)
    b = wind_residual(logps["rejected"], batch["prev_rejected"], batch["ref_rejected"], eta, beta)
    loss = 0.5 * (jnp.square(a - eta * (w_chosen - 0.5)) + jnp.square(b - eta * (w_rejected - 0.5)))
    metrics = _pair_metrics(logps["chosen"], logps["rejected"], a, b)
    metrics["objective/kl"] = jnp.mean(
        0.5 * (_f(logps["chosen"]) - _f(batch["ref_chosen"]) + _f(logps["rejected"]) - _f(batch["ref_rejected"]))
    )
    return loss, metrics


def _sppo(logps, batch, hp):
    """sppo: 1/2 [(a - eta (w_w - 1/2))^2 + (b - eta (w_l - 1/2))^2]   (MATH.md Baselines: SPPO).

    a, b = h(chosen), h(rejected) (the best and worst of K samples); w the round-robin win rates (wind_jax.methods.win_rates).
    Official SPPO is beta = 0 (log-ratio vs the previous iterate only) and eta = 1/beta_SPPO = 1e3;
    beta > 0 adds the WIND-style pull toward pi_ref (same h as wind_sq).
    """
    return _sppo_core(logps, batch, hp, _f(batch["target_chosen"]), _f(batch["target_rejected"]))


def _sppo_hard(logps, batch, hp):
    """sppo_hard: SPPO with hard targets w_w = 1, w_l = 0: 1/2 [(a - eta/2)^2 + (b + eta/2)^2].

    The name is TRL's (its DPO trainer's ``loss_type="sppo_hard"``). Official SPPO has no separate name for it:
    it is ``sppo`` with hard (0/1) preference probabilities. TRL's ``sppo_hard`` is (a - eta/2)^2 + (b + eta/2)^2,
    i.e. 2x this loss; the factor 1/2 here is the official SPPO form (MATH.md Baselines), so at equal eta and
    learning rate this loss's gradients are half of TRL's.
    """
    one = jnp.ones_like(_f(logps["chosen"]))
    return _sppo_core(logps, batch, hp, one, 0.0 * one)


def _jbond(logps, batch, hp):
    """jbond: J-BOND reconstruction (no official code; MATH.md Baselines), Jeffreys mix of two terms.

    Per prompt: one policy sample y ~ pi_theta, two anchor samples; ``best`` is the better anchor sample.
    * forward: -log pi_theta(best)  (NLL of BoN_2(anchor) samples).
    * backward: REINFORCE surrogate sg(penalty * lost_to_both + gamma (log pi_theta(y) - log pi_anchor(y)))
      * log pi_theta(y), i.e. reward -penalty (default log 16) when y loses to both anchor samples, else 0,
      plus an optional KL(pi_theta || pi_anchor) of weight gamma. No baseline (reconstruction choice).
    loss = (1 - mix) forward + mix backward. The EMA anchor update theta_a <- (1-lam) theta_a + lam theta is
    the training loop's job. The backward term's value is a surrogate (only its gradient is meaningful).
    """
    lp_y, lp_best = _f(logps["y"]), _f(logps["best"])
    anchor = _sg(batch["anchor_y"])
    lost = _f(batch["lost_to_both"])
    kl_y = jax.lax.stop_gradient(lp_y) - anchor
    fwd = -lp_best
    bwd = jax.lax.stop_gradient(hp["penalty"] * lost + hp["gamma"] * kl_y) * lp_y
    loss = (1.0 - hp["mix"]) * fwd + hp["mix"] * bwd
    metrics = {
        "logps/y": jnp.mean(lp_y),
        "logps/chosen": jnp.mean(lp_best),
        "objective/kl": jnp.mean(kl_y),
        "jbond/forward": jnp.mean(fwd),
        "jbond/lost_to_both": jnp.mean(lost),
    }
    return loss, metrics


def _bonbon(logps, batch, hp):
    """bonbon: alpha (-log pi(y_w)) + (1 - alpha) (rho_w - rho_l - (n-1) H_{n-1})^2  (MATH.md Baselines).

    rho = log pi_theta - log pi_0 on the best (chosen) and worst (rejected) of n samples of pi_0 = ref.
    sigmoid = 1 selects the released-code variant: DPO's -log sigmoid(beta_sigmoid (rho_w - rho_l)) replaces
    the squared term. beta_sigmoid = 0 (the default) means BoNBoN's released-code temperature, tied to n:
    :func:`bonbon_temperature` = 1 / (2 (n-1) H_{n-1}) (0.0275 for n = 8), the IPO temperature whose target
    margin 1/(2 tau) is BoN_n's (n-1) H_{n-1}; a positive value overrides it.
    """
    rho_w = _f(logps["chosen"]) - _sg(batch["ref_chosen"])
    rho_l = _f(logps["rejected"]) - _sg(batch["ref_rejected"])
    m = rho_w - rho_l
    n = int(hp["n"])
    sq = jnp.square(m - bonbon_margin(n))
    temperature = jnp.where(jnp.asarray(hp["beta_sigmoid"]) > 0, hp["beta_sigmoid"], bonbon_temperature(n))
    sig = -jax.nn.log_sigmoid(temperature.astype(m.dtype) * m)
    pair = sig if hp["sigmoid"] else sq
    loss = hp["alpha"] * (-_f(logps["chosen"])) + (1.0 - hp["alpha"]) * pair
    metrics = _pair_metrics(logps["chosen"], logps["rejected"], rho_w, rho_l)
    metrics["bonbon/margin_target"] = jnp.asarray(bonbon_margin(int(hp["n"])), m.dtype)
    return loss, metrics


def _dpo(logps, batch, hp):
    """dpo: -log sigmoid(beta (rho_w - rho_l)), rho = log pi_theta - log pi_ref; rewards = beta * rho."""
    rho_w = _f(logps["chosen"]) - _sg(batch["ref_chosen"])
    rho_l = _f(logps["rejected"]) - _sg(batch["ref_rejected"])
    loss = -jax.nn.log_sigmoid(hp["beta"] * (rho_w - rho_l))
    return loss, _pair_metrics(logps["chosen"], logps["rejected"], hp["beta"] * rho_w, hp["beta"] * rho_l)


def _ipo(logps, batch, hp):
    """ipo: (rho_w - rho_l - 1/(2 tau))^2, rho = log pi_theta - log pi_ref; rewards = tau * rho."""
    rho_w = _f(logps["chosen"]) - _sg(batch["ref_chosen"])
    rho_l = _f(logps["rejected"]) - _sg(batch["ref_rejected"])
    loss = jnp.square(rho_w - rho_l - 1.0 / (2.0 * hp["tau"]))
    return loss, _pair_metrics(logps["chosen"], logps["rejected"], hp["tau"] * rho_w, hp["tau"] * rho_l)


def _nll(logps, batch, hp):
    """nll: -log pi_theta(y), the negative log-likelihood of the batch's responses (maximum likelihood).

    As "bon_distill", y is a BoN_n sample of pi_t: the forward KL to BoN_n(pi_t) (MATH.md Alg. 1), whose
    minimizer is BoN_n(pi_t) itself; Alg. 1's geometric mixing toward pi_ref (alpha > 0) is left to the
    method (importance weights, or mixing parameters); the loss is the alpha = 0 distillation step.
    """
    del batch, hp
    lp = _f(logps["y"])
    return -lp, {"logps/y": jnp.mean(lp)}


# -------------------------------------------------------------------------------------------- registry

_WIND_DEFAULTS = {"beta": 0.1, "eta": 1.0}
_PAIR_REF = ("ref_chosen", "ref_rejected")
_SPPO_BATCH = ("prev_chosen", "prev_rejected", "ref_chosen", "ref_rejected")


def _spec(name, fn, policy_keys, batch_keys, defaults, target_keys=()):
    return LossSpec(name, fn, tuple(policy_keys), tuple(batch_keys), types.MappingProxyType(dict(defaults)),
                    tuple(target_keys))


LOSSES: dict[str, LossSpec] = {
    s.name: s
    for s in [
        _spec("wind_sq", _wind_sq, ("y",), ("prev_y", "ref_y", "target"), _WIND_DEFAULTS, ("target",)),
        _spec("wind_sq_offset", _wind_sq_offset, ("y", "offset"), ("prev_y", "ref_y", "target"),
              _WIND_DEFAULTS, ("target",)),
        _spec("wind_kl", _wind_kl, ("y", "y_prime"),
              ("prev_y", "ref_y", "prev_y_prime", "ref_y_prime", "target"), _WIND_DEFAULTS, ("target",)),
        _spec("wind_nce", _wind_nce, ("y", "offset"), ("prev_y", "ref_y", "target"),
              {**_WIND_DEFAULTS, "pseudo_count": 0.0}, ("target",)),
        _spec("sppo", _sppo, ("chosen", "rejected"), _SPPO_BATCH + ("target_chosen", "target_rejected"),
              {"beta": 0.0, "eta": 1000.0}, ("target_chosen", "target_rejected")),
        _spec("sppo_hard", _sppo_hard, ("chosen", "rejected"), _SPPO_BATCH, {"beta": 0.0, "eta": 1000.0}),
        _spec("jbond", _jbond, ("y", "best"), ("anchor_y", "lost_to_both"),
              {"mix": 0.5, "gamma": 0.0, "penalty": math.log(16.0)}, ("lost_to_both",)),
        _spec("bonbon", _bonbon, ("chosen", "rejected"), _PAIR_REF,
              {"alpha": 0.005, "n": 8.0, "sigmoid": 0.0, "beta_sigmoid": 0.0}),
        _spec("bonbon_sigmoid", _bonbon, ("chosen", "rejected"), _PAIR_REF,
              {"alpha": 0.005, "n": 8.0, "sigmoid": 1.0, "beta_sigmoid": 0.0}),
        _spec("dpo", _dpo, ("chosen", "rejected"), _PAIR_REF, {"beta": 0.1}),
        _spec("ipo", _ipo, ("chosen", "rejected"), _PAIR_REF, {"tau": 0.1}),
        _spec("bon_distill", _nll, ("y",), (), {}),
        _spec("nll", _nll, ("y",), (), {}),
    ]
}


def get_loss(name: str) -> LossSpec:
    """The registered :class:`LossSpec` called ``name`` (ValueError listing the known names)."""
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"unknown loss name {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


# ------------------------------------------------------------------------------------------ validation


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_hparams(spec: LossSpec, hparams: Mapping[str, float] | None) -> dict[str, float]:
    hparams = dict(hparams or {})
    unknown = sorted(set(hparams) - set(spec.defaults))
    if unknown:
        raise ValueError(f"loss {spec.name!r}: unknown hparams {unknown}; it takes {sorted(spec.defaults)}")
    hp = {**spec.defaults, **hparams}
    concrete = {k: float(v) for k, v in hp.items() if _is_concrete(v)}
    c = concrete.get

    def need(ok: bool, msg: str):
        if not ok:
            raise ValueError(f"loss {spec.name!r}: hparam {msg}")

    for k, v in concrete.items():
        need(math.isfinite(v), f"{k}={v} must be finite")
    if "eta" in concrete:
        need(c("eta") > 0, f"eta={c('eta')} must be > 0")
    for k in ("beta", "gamma", "penalty", "beta_sigmoid", "pseudo_count"):
        if k in concrete:
            need(c(k) >= 0, f"{k}={c(k)} must be >= 0")
    if "eta" in concrete and "beta" in concrete and spec.name.startswith(("wind", "sppo")):
        need(c("eta") * c("beta") <= 1.0, f"eta*beta={c('eta') * c('beta')} must be <= 1 (MD form, MATH.md)")
    for k in ("mix", "alpha"):
        if k in concrete:
            need(0.0 <= c(k) <= 1.0, f"{k}={c(k)} must lie in [0, 1]")
    if "n" in spec.defaults:
        need("n" in concrete and c("n") == int(c("n")) and c("n") >= 2, f"n={hp['n']} must be an integer >= 2")
    if "sigmoid" in spec.defaults:
        need("sigmoid" in concrete and c("sigmoid") in (0.0, 1.0), f"sigmoid={hp['sigmoid']} must be 0 or 1")
    if "tau" in concrete:
        need(c("tau") > 0, f"tau={c('tau')} must be > 0")
    return hp


def _check_arrays(spec: LossSpec, logps, batch) -> None:
    for what, given, keys in (("logps", logps, spec.policy_keys), ("batch", batch, spec.batch_keys)):
        if not isinstance(given, Mapping):
            raise ValueError(f"loss {spec.name!r}: {what} must be a mapping of name -> [B] array, got {type(given)}")
        missing = [k for k in keys if k not in given]
        if missing:
            raise ValueError(f"loss {spec.name!r}: {what} is missing key(s) {missing}; it needs {list(keys)}")
    sizes = {}
    for what, given, keys in (("logps", logps, spec.policy_keys), ("batch", batch, spec.batch_keys)):
        for k in keys:
            shape = jnp.shape(given[k])
            if len(shape) != 1 or shape[0] < 1:
                raise ValueError(f"loss {spec.name!r}: {what}[{k!r}] must have shape [B] with B >= 1, got {shape}")
            sizes[f"{what}[{k!r}]"] = shape[0]
            x = given[k]
            if _is_concrete(x):
                x = np.asarray(x)
                if not np.issubdtype(x.dtype, np.number) and x.dtype != bool:
                    raise ValueError(f"loss {spec.name!r}: {what}[{k!r}] must be numeric, got dtype {x.dtype}")
                if not np.all(np.isfinite(x)):
                    raise ValueError(f"loss {spec.name!r}: {what}[{k!r}] contains NaN or inf")
                if what == "batch" and k in spec.target_keys and not np.all((x >= 0) & (x <= 1)):
                    raise ValueError(f"loss {spec.name!r}: batch[{k!r}] (a preference target) must lie in [0, 1]")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"loss {spec.name!r}: inputs disagree on the batch size B: {sizes}")


def compute_loss(
    name: str | LossSpec,
    logps: Mapping[str, Array],
    batch: Mapping[str, Array],
    hparams: Mapping[str, float] | None = None,
) -> tuple[Array, Metrics]:
    """Validate the inputs of loss ``name`` and evaluate it: (per-example loss [B], metrics of scalars).

    Checks (ValueError naming the field): unknown loss or hparam names, missing keys, arrays not of shape
    [B] or disagreeing on B, and -- for concrete (non-traced) values -- NaN/inf inputs, targets outside
    [0, 1], out-of-range hparams. Extra keys are ignored. Jittable with ``name`` static.
    """
    spec = name if isinstance(name, LossSpec) else get_loss(name)
    hp = check_hparams(spec, hparams)
    _check_arrays(spec, logps, batch)
    loss, metrics = spec.fn(logps, batch, hp)
    metrics = dict(metrics)
    metrics["loss"] = jnp.mean(loss)
    return loss, metrics

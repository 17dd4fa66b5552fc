"""Practical WIND (MATH.md, Algorithm 3) and its baselines on a contextual bandit, one jitted outer step.

Each outer iteration t of every method:
  1. draw prompts x ~ Uniform[X] and responses from pi_t (or pi_ref / the J-BOND anchor, per method);
  2. query the preference oracle (Bernoulli duels, `env.duel`), counting samples and queries exactly;
  3. build a loss batch: for every response name r the frozen log-probs "prev_r" (log pi_t), "ref_r"
     (log pi_ref), "anchor_r" (J-BOND anchor) and the method's targets, keeping exactly the keys that
     `wind_jax.losses.get_loss(loss).batch_keys` asks for;
  4. fit pi_{t+1} by `num_inner` optax steps on the mean loss, starting from theta_t (`fit`, a lax.scan).
The trainable side supplies every key of `policy_keys`: log pi_theta(y_r | x) per response name, and
"offset" = a per-prompt scalar b(x), by `Method.offset_mode`:
  learned         a table [X], part of the trainable parameters, kept across outer iterations (default);
  reset           the same table, reset to 0 at the start of every outer iteration (shows the failure below);
  log_normalizer  no free parameter: b(x) = A_theta(x) - (1 - eta beta) A_t(x) - eta beta A_ref(x), with
                  A = logsumexp_y f(x, y) the model's log-normalizer, so h + b regresses the UNNORMALIZED logits
                  f_theta(y) - (1-eta beta) f_t(y) - eta beta f_ref(y) on eta ell. A response that is never
                  sampled gets no gradient through a normalizer, so its logit is not drained.
Why it matters (MATH.md, "What a learned per-prompt offset does not pin down"): with a free b the loss fixes
only the RELATIVE log-probs of sampled responses. If b starts below logZ_t (e.g. reset to 0), the optimizer
lowers the normalizer instead -- raising every sampled log-prob by pushing the logits of unsampled responses
down (Adam moves them at the full step size however small their gradient) -- and pi*_beta's mass on those
responses is starved. `exact_metrics` reports it as "starved_mass" (pi*_beta's mass where pi < 1e-3).

Every method is a record of the one method table (wind_jax.methods) run with its n: the record says what it
samples, which duels it asks (one query = one Bernoulli duel outcome ell ~ Bernoulli(P[x, y, y'])) and which
rows it fits, so samples and queries per prompt are derived from it, never typed:
  wind_*                  2 samples from pi_t, 1 duel; gives (y, ell) and (y', 1 - ell).
  sppo (K = 5)            5 samples, all K(K-1)/2 = 10 pairwise duels (round robin; diagonal counted as 1/2).
  jbond                   1 policy sample + 2 anchor samples, 3 duels (policy vs each anchor, anchor vs anchor).
  bon_knockout_n{2,4}     n samples from pi_t, knockout tournament with n - 1 duels; the winner is distilled.
  bonbon_best_worst_n8    8 samples from pi_ref, best and worst with 3n/2 - 2 = 10 duels.
  dpo_best_worst_n4       4 samples from pi_t, best and worst with 3n/2 - 2 = 4 duels; reference pi_ref.
"""
from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from wind_jax import methods as methods_lib
from wind_jax.bandit import env as env_lib

Array = jax.Array


# ----------------------------------------------------------------------------------------------------
# Methods: a record of wind_jax.methods with its n, plus what is bandit-specific
# ----------------------------------------------------------------------------------------------------
OFFSET_MODES = ("learned", "reset", "log_normalizer")


@dataclasses.dataclass(frozen=True)
class Method:
    """One algorithm of the comparison: a record of the method table (what it samples, duels and fits) run
    with n samples, plus the bandit's own choices: loss hparams, the fixed point it aims at (reported next to
    KL(pi*_beta || pi)), J-BOND's EMA rate per outer iteration, Alg. 1's mixing applied to the parameters,
    and how the "offset" policy key is supplied (module docstring)."""

    name: str
    record: methods_lib.Method
    n: int
    fixed_point: str
    hparams: Mapping[str, float] = dataclasses.field(default_factory=dict)
    anchor_ema: float = 0.0  # J-BOND: anchor <- (1 - ema) anchor + ema theta after every outer iteration
    # Alg. 1's geometric mixing pi_{t+1} ∝ pi_fit^(1-alpha) pi_ref^alpha, applied after the fit as
    # theta <- (1-alpha) theta + alpha theta_ref: exact for log-linear policies (logits linear in theta),
    # an approximation for the MLP.
    ref_mixing: float = 0.0
    offset_mode: str = "learned"

    def __post_init__(self):
        if self.offset_mode not in OFFSET_MODES:
            raise ValueError(f"method {self.name!r}: offset_mode must be one of {OFFSET_MODES}, got {self.offset_mode!r}")

    loss = property(lambda self: self.record.loss)
    samples_per_prompt = property(lambda self: self.record.total_samples(self.n), doc="derived from the record")
    queries_per_prompt = property(lambda self: self.record.queries(self.n), doc="derived from the record")


class Draw(NamedTuple):
    """What one outer iteration drew: per-example prompts [N], response indices by name (each [N]),
    targets by batch-key name (each [N] float32), and the exact counts."""

    prompts: Array
    responses: dict[str, Array]
    targets: dict[str, Array]
    counts: env_lib.Counts


def draw(method: Method, key: Array, P: Array, prompts: Array, log_tables: Mapping[str, Array]) -> Draw:
    """Sample every draw of the record (log_tables[source] [X, Y]), duel on its schedule (Bernoulli outcomes
    of P), assemble its rows. Examples are laid out row-major over the record's rows: all first rows of the
    prompts, then all second rows."""
    record, n, b = method.record, method.n, prompts.shape[0]
    draws = record.counts(n)
    keys = jax.random.split(key, len(draws) + 1)
    parts, counts = [], env_lib.Counts.zero()
    for (source, count), k in zip(draws, keys[:-1]):
        ys, c = env_lib.sample_responses(k, log_tables[source], prompts, count)
        parts.append(ys)
        counts = counts + c
    ys = jnp.concatenate(parts, axis=1)
    pick = lambda idx: jnp.take_along_axis(ys, idx, axis=1)  # noqa: E731
    tournament = record.schedule.run(lambda k, i, j: env_lib.duel(k, P, prompts[:, None], pick(i), pick(j))[0],
                                     keys[-1], n, b)
    counts = counts + env_lib.Counts(jnp.zeros((), jnp.int32), jnp.asarray(b * record.queries(n), jnp.int32))
    rows = record.assemble(tournament, n, {})
    r = next(iter(rows.index.values())).shape[1]
    flat = lambda x: x.T.reshape(-1)  # noqa: E731
    return Draw(prompts=jnp.concatenate([prompts] * r), responses={k: flat(pick(i)) for k, i in rows.index.items()},
                targets={k: flat(v).astype(jnp.float32) for k, v in rows.values.items()}, counts=counts)


def with_offset(method: Method, offset_mode: str, **hparams) -> Method:
    """A copy of `method` named "<name>:<offset_mode>" (plus "+k=v" per extra loss hparam) with that offset
    mode and those hparams (e.g. wind_nce's pseudo_count)."""
    suffix = "".join(f"+{k}={v:g}" for k, v in sorted(hparams.items()))
    return dataclasses.replace(method, name=f"{method.name}:{offset_mode}{suffix}", offset_mode=offset_mode,
                               hparams={**dict(method.hparams), **hparams})


def bon_mixing_for(beta: float, n: int) -> float:
    """alpha with alpha / ((1 - alpha)(n - 1)) = 2 beta: Alg. 1's log-win-rate fixed point pibar*_{2 beta}
    is the one closest to pi*_beta (MATH.md: pibar*_b ~ pi*_{b/2})."""
    c = 2.0 * beta * (n - 1)
    return c / (1.0 + c)


def make_methods(beta: float, eta: float) -> dict[str, Method]:
    """The methods of the sample-efficiency comparison, with the hyperparameters used for all games."""
    if beta <= 0 or eta <= 0:
        raise ValueError(f"beta and eta must be > 0, got beta={beta}, eta={eta}")
    wind_fp = "pi*_beta = pi_ref exp(w_pi*/beta)/Z (the WIND game's equilibrium)"
    wind = dict(beta=beta, eta=eta)
    rec = methods_lib.get_method
    methods = [
        Method("wind_sq", rec("wind_sq"), 2, wind_fp + "; biased by the fixed logZ guess for beta > 0", wind),
        Method("wind_sq_offset", rec("wind_sq_offset"), 2, wind_fp, wind),
        Method("wind_kl", rec("wind_kl"), 2, wind_fp, wind),
        Method("wind_nce", rec("wind_nce"), 2, wind_fp, wind),
        Method("sppo", rec("sppo"), 5,
               "the preference game's von Neumann winner (official beta = 0: Hedge, no last-iterate "
               "guarantee; not pi*_beta)", dict(beta=0.0, eta=eta)),
        Method("sppo_beta", rec("sppo_beta"), 5,
               wind_fp + " (SPPO's K=5 estimator with WIND's pull toward pi_ref; isolates the sampling scheme)",
               dict(beta=beta, eta=eta)),
        Method("jbond", rec("jbond"), 3,
               "iterated BoN_2 of a moving EMA anchor: the Condorcet winner / a collapse, not pi*_beta",
               {}, anchor_ema=0.1),
    ]
    for n in (2, 4):
        alpha = bon_mixing_for(beta, n)
        methods.append(Method(
            f"bon_knockout_n{n}", rec("bon_knockout"), n,
            f"Alg. 1 (iterative BoN_{n}, geometric mixing alpha={alpha:.3f}): the log-win-rate equilibrium "
            f"pibar*_(2 beta) ~ pi*_beta", ref_mixing=alpha))
    methods.append(Method(
        "bonbon_best_worst_n8", rec("bonbon_best_worst"), 8,
        "BoN_8(pi_ref) (one-shot best-of-8 of the reference, not iterated)", dict(n=8.0)))
    methods.append(Method(
        "dpo_best_worst_n4", rec("dpo_best_worst"), 4,
        "a reward-regularized optimum pi_ref exp(r/beta)/Z; with deterministic best/worst labels the "
        "logistic loss has no finite tabular minimizer, so iterates drift toward the best response",
        dict(beta=beta)))
    return {m.name: m for m in methods}


# ----------------------------------------------------------------------------------------------------
# Fitting and the outer step
# ----------------------------------------------------------------------------------------------------
def assemble_batch(draw: Draw, log_tables: Mapping[str, Array], batch_keys) -> dict[str, Array]:
    """Frozen batch for the loss: "<role>_<response>" log-probs looked up in log_tables[role] [X, Y],
    plus the draw's targets; exactly `batch_keys` (ValueError naming a key this method cannot supply)."""
    full = dict(draw.targets)
    for role, table in log_tables.items():
        for r, ys in draw.responses.items():
            full[f"{role}_{r}"] = table[draw.prompts, ys]
    missing = [k for k in batch_keys if k not in full]
    if missing:
        raise ValueError(f"batch_keys {missing} cannot be supplied; available: {sorted(full)}")
    return {k: jax.lax.stop_gradient(full[k]) for k in batch_keys}


def policy_logps(log_pi: Array, offset: Array, draw: Draw, policy_keys) -> dict[str, Array]:
    """Trainable inputs: log pi_theta(y_r|x) for each response name r, and "offset" = b(x) (offset [X])."""
    out = {}
    for k in policy_keys:
        if k == "offset":
            out[k] = offset[draw.prompts]
        elif k in draw.responses:
            out[k] = log_pi[draw.prompts, draw.responses[k]]
        else:
            raise ValueError(f"policy key {k!r} cannot be supplied; responses: {sorted(draw.responses)}")
    return out


def fit(policy, params, draw: Draw, batch: Mapping[str, Array], loss_fn, hparams, optimizer, num_steps: int,
        offset_base: Array | None = None, num_active=None):
    """`num_steps` optimizer steps (lax.scan) on the mean loss, from params = {"policy", "offset"}.

    loss_fn(logps, batch, hparams) -> (per-example loss [N], metrics). offset_base [X] (frozen) selects the
    log-normalizer offset b(x) = logsumexp_y f_theta(x, y) - offset_base(x) in place of params["offset"].
    num_active (int array, optional): only the first num_active of the num_steps steps run (lax.cond; the
    rest leave params unchanged and record the last loss), so the step count is an argument, not a shape.
    Returns (params, mean-loss trace)."""
    spec_keys = loss_fn.policy_keys

    def objective(p):
        if offset_base is None:
            offset = p["offset"]
        else:
            offset = jax.nn.logsumexp(policy.logits(p["policy"]), axis=-1) - offset_base
        logps = policy_logps(policy.log_probs(p["policy"]), offset, draw, spec_keys)
        per_example, _ = loss_fn.fn(logps, batch, hparams)
        return jnp.mean(per_example)

    opt = optax.with_extra_args_support(optimizer)
    opt_state = opt.init(params)
    value_and_grad = jax.value_and_grad(objective)

    def step(carry, _):
        p, s = carry
        value, grads = value_and_grad(p)
        updates, s = opt.update(grads, s, p, value=value, grad=grads, value_fn=objective)
        return (optax.apply_updates(p, updates), s), value

    if num_active is None:
        (params, _), trace = jax.lax.scan(step, (params, opt_state), None, length=num_steps)
        return params, trace

    def maybe_step(carry, i):
        (p, s), last = carry
        (p, s), value = jax.lax.cond(i < num_active, lambda: step((p, s), None), lambda: ((p, s), last))
        return ((p, s), value), value

    init = ((params, opt_state), jnp.zeros((), jnp.float32))
    ((params, _), _), trace = jax.lax.scan(maybe_step, init, jnp.arange(num_steps))
    return params, trace


class LoopState(NamedTuple):
    params: Any  # {"policy": policy params, "offset": [X]}
    anchor: Any  # J-BOND anchor policy params (unused by other methods)
    counts: env_lib.Counts
    key: Array


def init_state(theta_ref, num_contexts: int, key: Array) -> LoopState:
    """Start of every method: pi_0 = pi_ref = pi_{theta_ref}, offsets b(x) = 0, J-BOND anchor = theta_ref."""
    params = {"policy": theta_ref, "offset": jnp.zeros((num_contexts,), jnp.float32)}
    return LoopState(params, theta_ref, env_lib.Counts.zero(), key)


STATIC_HPARAMS = ("n", "sigmoid")  # read as Python numbers by the losses (BoNBoN's margin, its variant)


class MethodParams(NamedTuple):
    """The numbers of a method that enter its compiled program as ARGUMENTS (scalars), so methods that differ
    only in them (e.g. sppo and sppo_beta, or two learning rates) share one compiled program."""

    hparams: dict[str, Array]  # loss hparams except STATIC_HPARAMS
    anchor_ema: Array
    ref_mixing: Array
    learning_rate: Array  # used when make_run's optimizer is a factory lr -> optax transform (e.g. optax.adam)
    num_inner: Array  # int32 inner steps per outer iteration; -1 = make_run's num_inner


def _loss_setup(method: Method, batch_size: int, num_inner: int, loss_spec):
    if loss_spec is None:
        from wind_jax import losses

        loss_spec = losses.get_loss(method.loss)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_inner < 1:
        raise ValueError(f"num_inner must be >= 1, got {num_inner}")
    unknown = sorted(set(method.hparams) - set(loss_spec.defaults))
    if unknown:
        raise ValueError(f"method {method.name!r}: hparams {unknown} are not hparams of loss {loss_spec.name!r}")
    return loss_spec, {**dict(loss_spec.defaults), **dict(method.hparams)}


def method_params(method: Method, loss_spec=None, *, learning_rate: float = float("nan"),
                  num_inner: int = -1) -> MethodParams:
    """`method`'s dynamic numbers as arrays (the `params` argument of `make_run`'s run). learning_rate is
    read only when make_run got an optimizer FACTORY; num_inner (1 <= num_inner <= make_run's num_inner, or
    -1 for all) sets the inner steps per outer iteration without a new program."""
    loss_spec, hp = _loss_setup(method, 1, 1, loss_spec)
    if num_inner != -1 and (isinstance(num_inner, bool) or not isinstance(num_inner, int) or num_inner < 1):
        raise ValueError(f"num_inner must be a positive int or -1, got {num_inner!r}")
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return MethodParams({k: f32(v) for k, v in hp.items() if k not in STATIC_HPARAMS},
                        f32(method.anchor_ema), f32(method.ref_mixing), f32(learning_rate),
                        jnp.asarray(num_inner, jnp.int32))


def compile_key(method: Method) -> tuple:
    """Methods with equal keys (and equal batch sizes) run the same program with different `method_params`."""
    rec = method.record
    static = tuple(sorted((k, float(v)) for k, v in method.hparams.items() if k in STATIC_HPARAMS))
    return rec.draws, rec.schedule, rec.assemble, method.n, method.loss, method.offset_mode, static


def _outer_step(policy, method: Method, mp, batch_size: int, optimizer, num_inner: int, loss_spec, hparams):
    """One outer iteration (see the module docstring); `mp` holds the dynamic numbers (MethodParams or floats)."""
    hparams = {**hparams, **dict(mp.hparams)}
    X = policy.shape[0]

    def step(state: LoopState, P: Array, theta_ref):
        key, k_prompt, k_draw = jax.random.split(state.key, 3)
        log_ref = policy.log_probs(theta_ref)
        log_pi = policy.log_probs(state.params["policy"])
        log_anchor = policy.log_probs(state.anchor)
        prompts, c0 = env_lib.sample_prompts(k_prompt, X, batch_size)
        drawn = draw(method, k_draw, P, prompts, {"policy": log_pi, "reference": log_ref, "anchor": log_anchor})
        tables = {"prev": log_pi, "ref": log_ref, "anchor": log_anchor}
        batch = assemble_batch(drawn, tables, loss_spec.batch_keys)
        params, offset_base = state.params, None
        if method.offset_mode == "reset":
            params = {**params, "offset": jnp.zeros_like(params["offset"])}
        elif method.offset_mode == "log_normalizer":
            eb = hparams["eta"] * hparams["beta"]
            lse = lambda th: jax.nn.logsumexp(policy.logits(th), axis=-1)  # noqa: E731
            offset_base = jax.lax.stop_gradient((1 - eb) * lse(state.params["policy"]) + eb * lse(theta_ref))
        opt, active = optimizer, None
        if not isinstance(optimizer, optax.GradientTransformation):  # a factory: lr is an argument
            opt = optimizer(mp.learning_rate)
        if isinstance(mp, MethodParams):
            active = jnp.where(mp.num_inner < 0, num_inner, mp.num_inner)
        params, trace = fit(policy, params, drawn, batch, loss_spec, hparams, opt, num_inner, offset_base, active)
        # J-BOND's EMA anchor (lam = 0: unchanged) and Alg. 1's geometric mixing (alpha = 0: unchanged).
        lam, a = mp.anchor_ema, mp.ref_mixing
        anchor = jax.tree.map(lambda u, t: (1 - lam) * u + lam * t, state.anchor, params["policy"])
        mixed = jax.tree.map(lambda p, r: (1 - a) * p + a * r, params["policy"], theta_ref)
        params = {**params, "policy": mixed}
        counts = state.counts + c0 + drawn.counts
        return LoopState(params, anchor, counts, key), {"loss_trace": trace}

    return step


def make_outer_step(policy, method: Method, batch_size: int, optimizer, num_inner: int, loss_spec=None):
    """Pure outer iteration of `method`: step(state, P, theta_ref) -> (state, info); jit it, vmap it over
    LoopState for seeds. The game (P [X, Y, Y], pi_ref = pi_{theta_ref} = pi_0) is an argument, so one
    compiled step serves every game of the same shape. info: {"loss_trace": [num_inner]}.
    `loss_spec` defaults to wind_jax.losses.get_loss(method.loss). For whole runs use `make_run`.
    """
    loss_spec, hparams = _loss_setup(method, batch_size, num_inner, loss_spec)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError("make_outer_step needs an optax GradientTransformation (a factory needs make_run)")
    mp = types.SimpleNamespace(hparams={}, anchor_ema=method.anchor_ema, ref_mixing=method.ref_mixing)
    return _outer_step(policy, method, mp, batch_size, optimizer, num_inner, loss_spec, hparams)


METRICS = ("kl_to_equilibrium", "exploitability", "win_rate_vs_ref", "kl_to_ref", "starved_mass")


class RunOutput(NamedTuple):
    """A whole run, per seed: metrics[name] [S, T+1] (index 0 = pi_0; zeros when record=False), exact
    cumulative counts samples / queries [S, T+1], the last inner-fit loss of each outer iteration [S, T]."""

    state: LoopState
    metrics: dict[str, Array]
    samples: Array
    queries: Array
    fit_loss: Array


def make_run(method: Method, batch_size: int, optimizer, num_inner: int, num_outer: int, loss_spec=None):
    """A whole run of `method` as ONE pure function (jit it once; lax.scan over the outer iterations, vmap
    over seeds):

        run(policy, params, states, P, theta_ref, pi_star, record, num_iterations) -> RunOutput

    policy: a LogLinearPolicy / MLPPolicy (a pytree: its features are an argument, so every feature table,
    game and pi_ref of the same shapes reuses the compiled program); params = method_params(method);
    states: LoopState batched over seeds (leading axis S); record: bool array, False skips the exact
    metrics (lax.cond; zeros are recorded); num_iterations: int array <= num_outer, iterations past it are
    skipped (lax.cond) and leave the state unchanged. record=False with a small num_iterations times the
    algorithm alone without another compiled program. With num_iterations = num_outer it equals
    `num_outer` calls of make_outer_step's step, recording exact_metrics after each.
    optimizer: an optax transform (fixed), or a factory lr -> transform (e.g. optax.adam) that reads
    params.learning_rate, so a learning-rate grid reuses the program; num_inner is the MAXIMUM inner steps,
    params.num_inner the active ones (a grid over it reuses the program too).
    """
    loss_spec, hparams = _loss_setup(method, batch_size, num_inner, loss_spec)
    if num_outer < 1:
        raise ValueError(f"num_outer must be >= 1, got {num_outer}")
    static_hparams = {k: v for k, v in hparams.items() if k in STATIC_HPARAMS}

    def one_seed(policy, mp, state, P, theta_ref, pi_star, record, num_iterations):
        step = _outer_step(policy, method, mp, batch_size, optimizer, num_inner, loss_spec, static_hparams)
        log_ref = policy.log_probs(theta_ref)

        def metrics(st):
            return jax.lax.cond(
                record,
                lambda: exact_metrics(policy.log_probs(st.params["policy"]), log_ref, P, pi_star),
                lambda: {k: jnp.zeros((), jnp.float32) for k in METRICS})

        def body(st, t):
            st, loss = jax.lax.cond(t < num_iterations,
                                    lambda: (lambda s, i: (s, i["loss_trace"][-1]))(*step(st, P, theta_ref)),
                                    lambda: (st, jnp.zeros((), jnp.float32)))
            return st, (metrics(st), st.counts, loss)

        final, (ms, counts, fit_loss) = jax.lax.scan(body, state, jnp.arange(num_outer))
        m0 = metrics(state)
        cat = lambda first, rest: jnp.concatenate([first[None], rest])  # noqa: E731
        return RunOutput(final, {k: cat(m0[k], ms[k]) for k in METRICS},
                         cat(state.counts.samples, counts.samples), cat(state.counts.queries, counts.queries),
                         fit_loss)

    return jax.vmap(one_seed, in_axes=(None, None, 0, None, None, None, None, None))


def best_in_class_kl(policy, theta0, pi_star: Array, num_steps: int = 3000, learning_rate: float = 0.05):
    """min over theta of mean_x KL(pi*_beta || pi_theta), by `num_steps` Adam steps (cosine-decayed learning
    rate, lax.scan) from theta0: the floor a policy class puts under KL(pi*_beta || pi) for every method.
    Convex in theta for log-linear policies (a maximum-likelihood fit to pi*_beta); for the MLP it is the best
    value found. Jittable (policy is a pytree). Returns (theta, min KL over the trajectory) -- the KL is of
    the returned theta."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    star = jnp.asarray(pi_star, jnp.float32)
    neg_entropy = jnp.mean(jnp.sum(jnp.where(star > 0, star * jnp.log(jnp.where(star > 0, star, 1.0)), 0.0), -1))

    def kl(theta):  # mean_x sum_y pi* (log pi* - log pi_theta)
        return neg_entropy - jnp.mean(jnp.sum(star * policy.log_probs(theta), -1))

    opt = optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps))
    value_and_grad = jax.value_and_grad(kl)

    def step(carry, _):
        theta, s, best, best_kl = carry
        value, g = value_and_grad(theta)
        better = value < best_kl
        best = jax.tree.map(lambda b, t: jnp.where(better, t, b), best, theta)
        updates, s = opt.update(g, s, theta)
        return (optax.apply_updates(theta, updates), s, best, jnp.minimum(value, best_kl)), None

    init = (theta0, opt.init(theta0), theta0, jnp.asarray(jnp.inf, jnp.float32))
    (theta, _, best, best_kl), _ = jax.lax.scan(step, init, None, length=num_steps)
    last = kl(theta)
    better = last < best_kl
    return jax.tree.map(lambda b, t: jnp.where(better, t, b), best, theta), jnp.minimum(last, best_kl)


def exact_metrics(log_pi: Array, log_ref: Array, P: Array, pi_star: Array) -> dict[str, Array]:
    """Exact metrics against the tabular truth (wind_jax.games): KL(pi*_beta || pi), exploitability,
    win rate vs pi_ref, KL(pi || pi_ref), starved mass (pi*_beta's mass where pi < 1e-3), each averaged
    over prompts."""
    from wind_jax import games

    pi, ref = jnp.exp(log_pi), jnp.exp(log_ref)
    # KLs from log-probs directly (no log of an underflowed probability); same formula as games.kl.
    log_star = jnp.log(jnp.maximum(pi_star, 1e-30))
    kl_star = jnp.sum(jnp.where(pi_star > 0, pi_star * (log_star - log_pi), 0.0), axis=-1)
    return {
        "kl_to_equilibrium": jnp.mean(kl_star),
        "exploitability": jnp.mean(games.exploitability(pi, P)),
        "win_rate_vs_ref": games.policy_win_rate(pi, ref, P),
        "kl_to_ref": jnp.mean(jnp.sum(pi * (log_pi - log_ref), axis=-1)),
        "starved_mass": jnp.mean(games.starved_mass(pi, pi_star)),
    }

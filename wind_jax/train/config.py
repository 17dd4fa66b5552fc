"""LoopConfig: every setting of the outer loop, defined and validated once.

The experiment's ml_collections config is generated from this dataclass (`config_dict`) and turned back
into it (`from_config_dict`), so a field is written in one place; `--config.loop.<field>=...` overrides
any of them and every error names the field. Two fields take the command line's string form as well as
the tuple form: `loss_hparams` ("alpha=0.5, mix=0.25") and `lora_targets` ("q_proj,v_proj").
"""
from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any

from wind_jax import losses, methods as methods_lib

SCHEDULED = ("beta", "eta")


class ConfigError(ValueError):
    """A setting the run cannot use; the message names the field (experiments print it as one line)."""  # traced loss hparams (a schedule does not recompile the step)


def _parse_pairs(value, field: str) -> tuple[tuple[str, float], ...]:
    """"a=1, b=2" or ((a, 1), ...) or {a: 1} -> ((a, 1.0), ...) in the given order."""
    if isinstance(value, str):
        items = []
        for item in filter(None, (s.strip() for s in value.split(","))):
            if "=" not in item:
                raise ValueError(f"LoopConfig.{field}: expected name=value items, got {item!r}")
            k, v = item.split("=", 1)
            items.append((k.strip(), v))
        value = items
    elif isinstance(value, Mapping):
        value = list(value.items())
    try:
        return tuple((str(k), float(v)) for k, v in value)
    except (TypeError, ValueError):
        raise ValueError(f"LoopConfig.{field}: expected name=value pairs, got {value!r}") from None


def _parse_names(value, field: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(t.strip() for t in value.split(",") if t.strip())
    if not all(isinstance(t, str) for t in value):
        raise ValueError(f"LoopConfig.{field}: expected module names, got {value!r}")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Outer-loop settings. Schedules: value_t = start + (final - start) * f(t / (T - 1)), f from
    `schedule` ("constant", "linear", "cosine"); `*_final=None` keeps the value constant. `loss_hparams`
    holds static hparams of the loss or the method (e.g. (("mix", 0.5),) for jbond, (("alpha", 0.1),) for
    bon_distill's mixing)."""

    method: str = "wind_sq"
    num_iterations: int = 4
    prompts_per_iteration: int = 64
    steps_per_iteration: int = 8
    batch_size: int = 64               # rows per policy step (a deterministic permutation of the iteration)
    num_samples: int = 0               # K (sppo) / n (bonbon, dpo, bon_distill); 0 = method default
    beta: float = 0.1
    beta_final: float | None = None
    eta: float = 1.0
    eta_final: float | None = None
    learning_rate: float = 1e-3
    learning_rate_final: float | None = None
    schedule: str = "constant"
    loss_hparams: tuple[tuple[str, float], ...] = ()
    optimizer: str = "adamw"
    max_grad_norm: float = 1.0
    reset_optimizer: bool = True       # fresh optimizer state each iteration (theta_{t+1} fit from theta_t)
    anchor_ema: float = 0.1            # J-BOND: theta_a <- (1 - lam) theta_a + lam theta after every step
    oracle_mode: str = "sample"        # "sample": Bernoulli duel outcomes; "prob": P(a beats b)
    max_new_tokens: int = 8
    temperature: float = 1.0
    eos_token_id: int = 2
    pad_token_id: int = 0
    eval_prompts: int = 128
    eval_samples_per_prompt: int = 2
    eval_fixed_reference: bool = False  # draw pi_ref's evaluation replies once, reuse them every iteration
    eval_every_steps: int = 0          # also evaluate after every k-th optimizer step inside an iteration
    checkpoint_every_steps: int = 0    # 0 = only at iteration ends
    max_to_keep: int = 2
    async_checkpoint: bool = True
    lora_rank: int = 0                 # > 0: train LoRA adapters (wind_jax.models.lora) instead of every weight
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    frozen_dtype: str = "compute"      # pi_ref / anchor storage: "compute" (the model's dtype) or "param"
    seed: int = 0

    def __post_init__(self):
        try:
            self._validate()
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def _validate(self):
        object.__setattr__(self, "loss_hparams", _parse_pairs(self.loss_hparams, "loss_hparams"))
        object.__setattr__(self, "lora_targets", _parse_names(self.lora_targets, "lora_targets"))
        method = methods_lib.get_method(self.method)
        for name in ("num_iterations", "prompts_per_iteration", "steps_per_iteration", "batch_size",
                     "max_new_tokens", "eval_prompts", "eval_samples_per_prompt", "max_to_keep"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"LoopConfig.{name} must be an int >= 1, got {getattr(self, name)!r}")
        for name, allowed in (("schedule", ("constant", "linear", "cosine")), ("oracle_mode", ("sample", "prob")),
                              ("optimizer", ("adamw", "rmsprop")), ("frozen_dtype", ("compute", "param"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"LoopConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.num_samples == 1 or self.num_samples < 0:
            raise ValueError(f"LoopConfig.num_samples must be 0 (method default) or >= 2, got {self.num_samples}")
        method.n(self.num_samples)
        if method.schedule.adaptive and self.oracle_mode == "prob":
            raise ValueError(f"LoopConfig.oracle_mode='prob' does not apply to method {self.method!r}: its "
                             f"{method.schedule.name} schedule needs drawn duel outcomes (use 'sample')")
        for name in ("learning_rate", "learning_rate_final", "temperature", "max_grad_norm"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"LoopConfig.{name} must be finite and > 0, got {v}")
        for name in ("beta", "beta_final", "eta", "eta_final"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"LoopConfig.{name} must be finite, got {v}")
        if not 0.0 < self.anchor_ema <= 1.0:
            raise ValueError(f"LoopConfig.anchor_ema must be in (0, 1], got {self.anchor_ema}")
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ValueError(f"LoopConfig.lora_rank must be an int >= 0 (0 = full fine-tuning), got {self.lora_rank!r}")
        if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise ValueError(f"LoopConfig.lora_alpha must be finite and > 0, got {self.lora_alpha}")
        if not isinstance(self.eval_every_steps, int) or self.eval_every_steps < 0:
            raise ValueError(f"LoopConfig.eval_every_steps must be an int >= 0 (0 = at iteration ends only), "
                             f"got {self.eval_every_steps!r}")
        if self.checkpoint_every_steps < 0:
            raise ValueError(f"LoopConfig.checkpoint_every_steps must be >= 0, got {self.checkpoint_every_steps}")
        # The method's and the loss's own ranges at the first and last iteration's values (names the field).
        for t in sorted({0, self.num_iterations - 1}):
            static, dynamic = self.hparams(t)
            values = {**static, **dynamic}
            try:
                method.check_hparams(values)
                losses.check_hparams(method.spec, {k: v for k, v in values.items() if k in method.spec.defaults})
            except ValueError as e:
                raise ConfigError(f"LoopConfig (iteration {t}): {e}") from None

    @property
    def method_record(self) -> methods_lib.Method:
        return methods_lib.get_method(self.method)

    @property
    def n(self) -> int:
        """n / K of the method (samples of its main draw)."""
        return self.method_record.n(self.num_samples)

    @property
    def samples_per_prompt(self) -> int:
        return self.method_record.total_samples(self.n)

    @property
    def queries_per_prompt(self) -> int:
        return self.method_record.queries(self.n)

    def value(self, name: str, t: int) -> float:
        """Scheduled value of beta / eta / learning_rate at outer iteration t."""
        start, final = getattr(self, name), getattr(self, f"{name}_final")
        if final is None or self.schedule == "constant" or self.num_iterations == 1:
            return float(start)
        u = t / (self.num_iterations - 1)
        f = u if self.schedule == "linear" else 0.5 * (1 - math.cos(math.pi * u))
        return float(start + (final - start) * f)

    def hparams(self, t: int) -> tuple[dict, dict]:
        """(static hparams, scheduled hparams) of the method's loss (and method) at iteration t."""
        method = self.method_record
        spec = method.spec
        static = {k: float(v) for k, v in self.loss_hparams}
        fixed, extra = dict(method.fixed_hparams), dict(method.extra_hparams)
        known = set(spec.defaults) | set(extra)
        unknown = sorted(set(static) - known)
        if unknown:
            raise ValueError(f"LoopConfig.loss_hparams {unknown} are not hparams of method {method.name!r} "
                             f"(it takes {sorted(known)})")
        for k, v in extra.items():
            static.setdefault(k, float(v))
        if "n" in spec.defaults or method.weight is not None:
            static.setdefault("n", float(self.n))
        static.update(fixed)
        dynamic = {k: self.value(k, t) for k in SCHEDULED if k in spec.defaults and k not in fixed}
        return static, dynamic


# ------------------------------------------------------------------ the experiment's config dict
def _field_type(f: dataclasses.Field) -> type:
    hint = typing.get_type_hints(LoopConfig)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def config_dict(**defaults) -> Any:
    """An ml_collections.ConfigDict of every LoopConfig field (the defaults, updated by `defaults`): None
    fields become typed placeholders and tuples their command-line strings, so each stays overridable."""
    import ml_collections
    from ml_collections import config_dict as cd
    out = {}
    for f in dataclasses.fields(LoopConfig):
        if f.name in ("method", "seed"):   # top-level fields of the experiment config
            continue
        v = defaults.pop(f.name, f.default)
        if f.name == "loss_hparams":
            v = ", ".join(f"{k}={x:g}" for k, x in _parse_pairs(v, f.name))
        elif f.name == "lora_targets":
            v = ",".join(_parse_names(v, f.name))
        elif v is None:
            v = cd.placeholder(_field_type(f))
        out[f.name] = v
    if defaults:
        raise ValueError(f"config_dict: {sorted(defaults)} are not LoopConfig fields")
    return ml_collections.ConfigDict(out)


def from_config_dict(loop, *, method: str, seed: int, **overrides) -> LoopConfig:
    """LoopConfig from the experiment's `config.loop` (+ its method and seed); errors name the field."""
    d = {**loop.to_dict(), **overrides}
    names = {f.name for f in dataclasses.fields(LoopConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"config.loop: unknown fields {unknown}")
    return LoopConfig(method=method, seed=seed, **d)

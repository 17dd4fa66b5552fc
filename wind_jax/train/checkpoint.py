"""Orbax checkpoints for the outer alignment loop (wind_jax.train.loop).

One checkpoint = three Orbax items written together by a CheckpointManager:
  "state": a pytree of arrays (policy params, optimizer state, anchor/EMA params, RNG key data, ...),
  "meta":  JSON (iteration, step, data position, metric history, the run config),
  "extra": an optional pytree of arrays (e.g. the frozen batch of an unfinished iteration).
Saves are asynchronous by default and keep the last `max_to_keep`. Orbax writes each checkpoint under a
temporary directory and renames it only when every item is finalized, so a checkpoint cut off by a crash is
never listed (and is removed when the directory is next opened). `restore(target=...)` accepts
jax.ShapeDtypeStruct leaves carrying shardings, so a run can resume on a different mesh.

A checkpoint written with a different config is refused with a CheckpointConfigError (a ValueError) naming
the field that differs; fields that may change across a resume (e.g. the number of iterations, logging
options) are listed in `ignore_fields`.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

# Config fields that may legitimately differ between a run and its resumption.
DEFAULT_IGNORE_FIELDS = (
    "num_iterations", "out_dir", "workdir", "checkpoint.max_to_keep", "checkpoint.async_save",
    "checkpoint.every_steps", "log.", "tensorboard", "progress", "export_dir", "plot",
)


class CheckpointConfigError(ValueError):
    """The checkpoint on disk was written by an incompatible config."""


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings (dicts, ml_collections.ConfigDict, dataclasses) -> {"a.b.c": json value}."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    elif hasattr(config, "__dataclass_fields__"):
        config = {f: getattr(config, f) for f in config.__dataclass_fields__}
    out: dict[str, Any] = {}
    if isinstance(config, Mapping):
        for k, v in config.items():
            out.update(flatten_config(v, f"{prefix}{k}."))
        return out
    key = prefix[:-1]
    if isinstance(config, (tuple, list)):
        config = [_jsonable(v) for v in config]
    else:
        config = _jsonable(config)
    out[key] = config
    return out


def _jsonable(v):
    if isinstance(v, (np.generic,)):
        return v.item()
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return repr(v)


def _ignored(field: str, ignore: Iterable[str]) -> bool:
    for pat in ignore:
        if pat.endswith(".") and field.startswith(pat):
            return True
        if field == pat or field.endswith("." + pat):
            return True
    return False


def check_compatible(saved: Mapping[str, Any], current: Mapping[str, Any],
                     ignore_fields: Iterable[str] = DEFAULT_IGNORE_FIELDS, *, where: str = "") -> None:
    """Raise CheckpointConfigError naming the first field whose value differs (flattened configs)."""
    saved, current = flatten_config(saved), flatten_config(current)
    ignore = tuple(ignore_fields)
    for field in sorted(set(saved) | set(current)):
        if _ignored(field, ignore):
            continue
        a, b = saved.get(field, "<absent>"), current.get(field, "<absent>")
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            raise CheckpointConfigError(
                f"checkpoint {where} is incompatible with the current config: field {field!r} was "
                f"{a!r} when saved, now {b!r}. Use another out_dir, or restore the old value.")


def abstract_like(tree, shardings=None):
    """Leaves -> jax.ShapeDtypeStruct (with `shardings`, a matching pytree, when given) for restore()."""
    def one(x, s=None):
        x = np.asarray(x) if not hasattr(x, "dtype") else x
        sharding = s if s is not None else getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    if shardings is None:
        return jax.tree.map(one, tree)
    return jax.tree.map(one, tree, shardings)


class Checkpointer:
    """CheckpointManager wrapper: save(step, state, meta, extra) / restore(step, target) / latest_step()."""

    def __init__(self, directory, *, config: Any = None, max_to_keep: int = 3, async_save: bool = True,
                 ignore_fields: Iterable[str] = DEFAULT_IGNORE_FIELDS):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = epath.Path(directory).absolute()
        self.config = flatten_config(config) if config is not None else None
        self.ignore_fields = tuple(ignore_fields)
        self._check_writable()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True,
            cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta", "extra"))

    def _check_writable(self) -> None:
        """Fail at once, naming the path, when the directory cannot be created or written (Orbax would
        otherwise fail later inside its save threads)."""
        probe = self.directory / f".write_probe_{jax.process_index()}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise OSError(f"checkpoint directory {self.directory} is not writable: {e}") from e

    # ---- queries ------------------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    # ---- save / restore -----------------------------------------------------------------------------
    def save(self, step: int, state, meta: Mapping[str, Any], extra=None) -> None:
        """Save (asynchronously when enabled); the checkpoint becomes visible only once complete."""
        meta = dict(meta)
        if self.config is not None:
            meta["config"] = self.config
        meta["has_extra"] = extra is not None
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if extra is not None:
            items["extra"] = ocp.args.StandardSave(extra)
        self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)

    def read_meta(self, step: int | None = None) -> dict:
        step = self._resolve(step)
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int | None = None, *, target=None, restore_extra: bool = True, extra_target=None):
        """-> (state, meta, extra or None). `target` / `extra_target`: pytrees of arrays or ShapeDtypeStructs
        (shardings included) giving structure, dtypes and placement; None restores as saved (host arrays)."""
        step = self._resolve(step)
        meta = self.read_meta(step)
        if self.config is not None and "config" in meta:
            check_compatible(meta["config"], self.config, self.ignore_fields,
                             where=f"{self.directory}/{step}")
        state_args = (ocp.args.StandardRestore(abstract_like(target)) if target is not None
                      else ocp.args.StandardRestore())
        items = {"state": state_args}
        if restore_extra and meta.get("has_extra"):
            items["extra"] = (ocp.args.StandardRestore(abstract_like(extra_target)) if extra_target is not None
                              else ocp.args.StandardRestore())
        out = self._manager.restore(step, args=ocp.args.Composite(**items))
        return out["state"], meta, (out["extra"] if "extra" in items else None)

    def _resolve(self, step):
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        elif step not in self._manager.all_steps():
            raise FileNotFoundError(f"no complete checkpoint {step} in {self.directory} "
                                    f"(have {self.all_steps()})")
        return int(step)

    def wait(self) -> None:
        """Block until pending asynchronous saves are finalized."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------------ named pytrees
def _path_name(path) -> str:
    parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    if parts and parts[-1] == "value":
        parts = parts[:-1]
    return ".".join(parts)


def named(tree) -> dict[str, Any]:
    """{"layers.attn.q_proj.kernel": array, ...}: a pytree as a flat dict keyed by its paths (a checkpoint
    readable without the module tree)."""
    return {_path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def from_named(template, flat: Mapping[str, Any], what: str):
    """Inverse of `named` onto `template`'s structure; a ValueError names missing / unexpected entries."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    names = [_path_name(p) for p, _ in paths]
    missing, extra = sorted(set(names) - set(flat)), sorted(set(flat) - set(names))
    if missing or extra:
        raise ValueError(f"checkpoint {what!r} does not match the current model: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    return jax.tree.unflatten(treedef, [flat[n] for n in names])


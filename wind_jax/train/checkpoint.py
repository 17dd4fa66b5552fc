"""Orbax checkpoints for the outer alignment loop (wind_jax.train.loop).

One checkpoint = three Orbax items written together by a CheckpointManager:
  "state": a pytree of arrays (policy params, optimizer state, anchor/EMA params, RNG key data, ...),
  "meta":  JSON (iteration, step, data position, metric history, the run config),
  "extra": an optional pytree of arrays (e.g. the frozen batch of an unfinished iteration).
Saves are asynchronous by default and keep the last `max_to_keep`. Orbax writes each checkpoint under a
temporary directory and renames it only when every item is finalized, so a checkpoint cut off by a crash is
never listed (and is removed when the directory is next opened). `restore(target=...)` accepts
jax.ShapeDtypeStruct leaves carrying shardings, so a run can resume on a different mesh.

Trust (wind_jax.train.manifest): every checkpoint carries a manifest of its files (sizes, CRC-32s) written
just before its commit. `latest_step()` and `restore()` check it; a checkpoint with a file missing,
truncated or altered -- or one without a manifest that fails to read -- is named (step, file), moved aside
to <step>.corrupt-<time> and the newest intact one is used, with a warning; none intact is a
CheckpointCorruptError. A failed write (disk full, permission) is one CheckpointWriteError naming the step,
the directory and the OS error; the failed step's partial files are removed, earlier checkpoints are left
as they were and the manager is closed, so the interpreter exits quietly.

A checkpoint written with a different config is refused with a CheckpointConfigError (a ValueError) naming
the field that differs; fields that do not change the numbers (RESUME_NEUTRAL_FIELDS) may differ.
"""
from __future__ import annotations

import collections
import gc
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from wind_jax.train import manifest as manifest_lib
from wind_jax.train import storage_errors as errs

log = logging.getLogger(__name__)

# Config fields that do not change a run's numbers, so a resume may change them. A name matches the last
# part of a flattened key: "max_to_keep" matches "loop.max_to_keep" and "experiment.loop.max_to_keep" of the
# stored run config {"loop": LoopConfig, "experiment": llm_alignment.get_config()}. tests/train/test_checkpoint.py
# checks that each name exists in that config and is accepted when changed.
RESUME_NEUTRAL_FIELDS = frozenset({
    "checkpoint_every_steps", "max_to_keep", "async_checkpoint",  # checkpoint cadence and storage
    "plot", "tensorboard", "eval_every_steps",                    # reporting (evaluations inside iterations)
    "out_dir", "export_dir",                                      # where outputs go
    "num_iterations",                                             # extending a run (schedules over T excepted)
})
DEFAULT_IGNORE_FIELDS = tuple(sorted(RESUME_NEUTRAL_FIELDS))


class CheckpointConfigError(ValueError):
    """The checkpoint on disk was written by an incompatible config."""


class CheckpointCorruptError(RuntimeError):
    """No intact checkpoint is left (each corrupt one was named and moved aside)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permission, ...); `original` holds the raw error."""

    def __init__(self, message: str, original: BaseException | None = None):
        super().__init__(message)
        self.original = original


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


_TMP_MARK = ".orbax-checkpoint-tmp"
def _broadcast_int(value: int) -> int:
    """Process 0's value on every process (identity on one process)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils
    return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def _any_process(flag: bool) -> bool:
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


class _Manager(ocp.CheckpointManager):
    """A CheckpointManager that leaves JAX's preemption sync point to wind_jax.train.preemption: Orbax would
    call it from save() with checkpoint ids, moving the per-call counter the sync protocol relies on."""

    def reached_preemption(self, step: int) -> bool:
        return False


class Checkpointer:
    """CheckpointManager wrapper: save(step, state, meta, extra) / restore(step, target) / latest_step().

    Multi-host: every process calls every method; process 0 writes manifests, decides which checkpoint is
    intact and moves corrupt ones aside, and the others follow its decision."""

    def __init__(self, directory, *, config: Any = None, max_to_keep: int = 3, async_save: bool = True,
                 ignore_fields: Iterable[str] = DEFAULT_IGNORE_FIELDS,
                 checksum_limit: int = manifest_lib.CHECKSUM_LIMIT):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = epath.Path(directory).absolute()
        self.config = flatten_config(config) if config is not None else None
        self.ignore_fields = tuple(ignore_fields)
        self.async_save = async_save
        self.checksum_limit = checksum_limit
        self.moved_aside: list[str] = []     # one line per corrupt checkpoint moved aside by this object
        self._committing: collections.deque[int] = collections.deque()  # steps awaiting their manifest
        self._intact_steps: set[int] = set()
        self._last_saved: int | None = None
        self._closed = False
        self._check_writable()
        if errs.QUIET_WRITE_FAILURES not in logging.getLogger("absl").filters:
            logging.getLogger("absl").addFilter(errs.QUIET_WRITE_FAILURES)
        errs.quiet_late_callbacks()
        # Saves always go through Orbax's async path (sync = save + wait) so that the manifest is written by the
        # post-finalization callback, inside the temporary directory, before the commit. Directories are created
        # in save() itself: a failure there then raises at once instead of leaving Orbax's writer threads waiting.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=True, create=True,
            cleanup_tmp_directories=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._write_manifest,
                                           create_directories_asynchronously=False))
        self._manager = _Manager(self.directory, options=options, item_names=("state", "meta", "extra"))
        # Orbax removes a crashed save's temporary directories in the background; wait, so that nothing lists the
        # folder half-cleaned (the manifest callback looks for the temporary directory of the step it commits).
        wait_for_cleanup = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
        if wait_for_cleanup is not None:
            wait_for_cleanup()

    def _check_writable(self) -> None:
        """Fail at once, naming the path, when the directory cannot be created or written (Orbax would
        otherwise fail later inside its save threads)."""
        probe = self.directory / f".write_probe_{jax.process_index()}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise CheckpointWriteError(f"checkpoint directory {self.directory} is not writable: "
                                       f"{errs.os_error_text(e)}", e) from None

    # ---- queries ------------------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """Every committed step, intact or not (latest_step() checks them)."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest intact checkpoint; newer corrupt ones are moved aside with a warning. None when the
        directory holds no checkpoint at all; CheckpointCorruptError when it holds only corrupt ones."""
        moved_before = len(self.moved_aside)
        for step in reversed(self.all_steps()):
            if self._check_intact(step):
                if len(self.moved_aside) > moved_before:
                    log.warning(f"using checkpoint {step} of {self.directory}, the newest intact one")
                return step
        corrupt = sorted(p.name for p in self.directory.glob("*.corrupt-*")) if self.directory.exists() else []
        if corrupt:
            raise CheckpointCorruptError(
                f"no intact checkpoint in {self.directory}: " + " | ".join(self.moved_aside or corrupt)
                + ". Delete or move the *.corrupt-* directories to start this run afresh.")
        return None

    def _step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def _check_intact(self, step: int) -> bool:
        """Check `step` against its manifest (process 0 decides); a corrupt one is moved aside."""
        if step in self._intact_steps:
            return True
        problems = manifest_lib.check_manifest(self._step_dir(step)) if jax.process_index() == 0 else None
        if _broadcast_int(bool(problems)):
            self._move_aside(step, problems or ["files differ from its manifest (checked by process 0)"])
            return False
        self._intact_steps.add(step)  # (without a manifest: not known to be bad; a failed read decides)
        return True

    def _move_aside(self, step: int, problems: list[str]) -> None:
        new = "<step>.corrupt-<time>"
        if jax.process_index() == 0:
            new = manifest_lib.move_aside(self._step_dir(step)).name
        _sync(f"wind_jax_checkpoint_move_aside_{step}")
        self._manager.reload()
        self._intact_steps.discard(step)
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        line = f"checkpoint {step} in {self.directory} is corrupt ({shown}); moved aside to {new}"
        self.moved_aside.append(line)
        log.warning(line)

    # ---- save ---------------------------------------------------------------------------------------
    def save(self, step: int, state, meta: Mapping[str, Any], extra=None) -> None:
        """Save (asynchronously when enabled); the checkpoint becomes visible only once complete. A failed write
        (this one's or the previous asynchronous one's) raises CheckpointWriteError and closes this object."""
        self._check_open()
        step = int(step)
        meta = dict(meta)
        if self.config is not None:
            meta["config"] = self.config
        meta["has_extra"] = extra is not None
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if extra is not None:
            items["extra"] = ocp.args.StandardSave(extra)
        self.wait()  # a failure of the previous asynchronous save is reported under its own step
        if jax.process_index() == 0:
            self._committing.append(step)
        try:
            self._manager.save(step, args=ocp.args.Composite(**items), force=True)
            self._last_saved = step
            if not self.async_save:
                self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 -- every failure here is reported as a write failure
            self._write_failed(step, e)
        self._intact_steps.add(step)

    def _write_manifest(self) -> None:
        """Orbax's post-finalization callback (process 0, background thread, before the commit rename)."""
        step = self._committing.popleft()
        tmp = sorted(self.directory.glob(f"{step}{_TMP_MARK}*"))
        manifest_lib.write_manifest(tmp[-1] if tmp else self._step_dir(step), step, self.checksum_limit)

    def _write_failed(self, step: int | None, error: BaseException):
        """Remove the failed step's partial files, close the manager (so no thread is left to fail at exit)
        and raise one CheckpointWriteError naming the step, the directory and the OS error."""
        self._closed = True
        try:
            self._manager.close()
        except Exception:  # noqa: BLE001 -- the same failure, reported below
            pass
        gc.collect()  # finalize Orbax's abandoned write coroutines now, not noisily at interpreter shutdown
        self._committing.clear()
        if jax.process_index() == 0 and step is not None:
            for tmp in self.directory.glob(f"{step}{_TMP_MARK}*"):
                try:
                    tmp.rmtree()
                except OSError:
                    pass
        raise CheckpointWriteError(f"cannot write checkpoint {step} to {self.directory}: "
                                   f"{errs.os_error_text(error)}", error) from None

    # ---- restore ------------------------------------------------------------------------------------
    def read_meta(self, step: int | None = None) -> dict:
        """The JSON item of `step` (default: the newest intact checkpoint, falling back past corrupt ones)."""
        return self._read(step, lambda s: self._manager.restore(
            s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def restore(self, step: int | None = None, *, target=None, restore_extra: bool = True, extra_target=None):
        """-> (state, meta, extra or None). `target` / `extra_target`: pytrees of arrays or ShapeDtypeStructs
        (shardings included) giving structure, dtypes and placement; None restores as saved (host arrays).
        With step=None the newest intact checkpoint is restored: one that fails its manifest or fails to read
        is named, moved aside, and the next older one is tried (a warning says which one was restored)."""
        return self._read(step, lambda s: self._restore_step(s, target, restore_extra, extra_target))

    def _restore_step(self, step, target, restore_extra, extra_target):
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
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

    def _read(self, step: int | None, read):
        """Run read(step) on `step` or, for None, on the newest intact checkpoint, moving aside (and, for None,
        falling back past) checkpoints whose files cannot be read."""
        explicit, fell_back = step is not None, False
        while True:
            step = self._resolve(step if explicit else None)
            error = None
            try:
                out = read(step)
            except CheckpointConfigError:
                raise
            except Exception as e:  # noqa: BLE001 -- classified below; anything else is re-raised
                error = e
            unreadable = _any_process(error is not None and errs.is_read_error(error))
            if not unreadable:
                if error is not None:
                    raise error
                if fell_back:
                    log.warning(f"using checkpoint {step} of {self.directory}, the newest readable one")
                return out
            fell_back = True
            self._move_aside(step, [f"reading it failed: {errs.first_line(error) if error else 'on another process'}"])
            if explicit:
                raise CheckpointCorruptError(self.moved_aside[-1] + "; restore(None) uses the newest intact one")

    def _resolve(self, step):
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        elif step not in self._manager.all_steps():
            raise FileNotFoundError(f"no complete checkpoint {step} in {self.directory} "
                                    f"(have {self.all_steps()})")
        elif not self._check_intact(step):
            raise CheckpointCorruptError(self.moved_aside[-1] + "; restore(None) uses the newest intact one")
        return int(step)

    # ---- lifetime -----------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the Checkpointer of {self.directory} is closed (after a failed write, or close())")

    def wait(self) -> None:
        """Block until pending asynchronous saves are committed (CheckpointWriteError if one failed)."""
        if self._closed:
            return
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            self._write_failed(self._last_saved, e)

    def close(self) -> None:
        if self._closed:
            return
        self.wait()
        self._closed = True
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


"""Metrics for the outer loop: JSONL always, TensorBoard when a writer is installed, a tqdm progress bar
that stays quiet when stderr is not a TTY, and a summary PNG (win rate vs pi_ref, KL to pi_ref and
preference queries per method).

Records are flat dicts of JSON scalars with a "kind" ("step", "iteration", or "eval": an evaluation inside
an iteration, LoopConfig.eval_every_steps) plus "iteration" and "global_step". Timing fields start with "time/" (they differ between runs; everything else is
deterministic given the seed).
"""
from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np


def to_scalar(v):
    """JSON scalar from a Python / NumPy / JAX scalar (arrays of size 1 included)."""
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    a = np.asarray(v)
    if a.size != 1:
        raise ValueError(f"metric values must be scalars, got shape {a.shape}")
    a = a.reshape(()).item()
    return a


def scalarize(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: to_scalar(v) for k, v in record.items()}


def _tensorboard_writer(logdir):
    """A SummaryWriter-like object, or None when no TensorBoard writer is installed."""
    for mod in ("tensorboardX", "torch.utils.tensorboard"):
        try:
            module = __import__(mod, fromlist=["SummaryWriter"])
            return module.SummaryWriter(logdir)
        except Exception:  # noqa: BLE001 - optional dependency, any import failure means "absent"
            continue
    return None


class MetricsLogger:
    """Appends records to `<out_dir>/metrics.jsonl`; mirrors numeric fields to TensorBoard if available."""

    def __init__(self, out_dir, *, tensorboard: bool = True, filename: str = "metrics.jsonl"):
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, filename)
        self.history: list[dict] = []
        self._tb = _tensorboard_writer(os.path.join(out_dir, "tb")) if tensorboard else None

    def reset(self, history: Iterable[Mapping[str, Any]]) -> None:
        """Rewrite the JSONL from `history` (used on resume: drops lines written after the checkpoint)."""
        self.history = [dict(r) for r in history]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            for r in self.history:
                f.write(json.dumps(r, sort_keys=True) + "\n")
        os.replace(tmp, self.path)

    def log(self, record: Mapping[str, Any], *, kind: str) -> dict:
        if kind not in ("step", "iteration", "eval"):
            raise ValueError(f"kind must be 'step', 'iteration' or 'eval', got {kind!r}")
        rec = {"kind": kind, **scalarize(record)}
        self.history.append(rec)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
        if self._tb is not None:
            x = rec.get("global_step", rec.get("iteration", len(self.history)))
            for k, v in rec.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}", v, x)
        return rec

    def close(self):
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


def read_jsonl(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def progress_bar(total: int, desc: str = "", *, disable: bool | None = None):
    """tqdm bar on stderr; disabled when stderr is not a TTY (logs stay clean)."""
    from tqdm.auto import tqdm
    if disable is None:
        disable = not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=disable, leave=False)


def plot_summary(histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str, *, title: str = "") -> str:
    """PNG with one line per method: gold win rate vs pi_ref (with its standard error), KL(pi_t || pi_ref)
    (with its standard error) and cumulative preference queries, each against the outer iteration.
    `histories`: method -> metric records (the "iteration" records are used); `title` e.g. the oracle."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = (("eval/win_rate_vs_ref", "gold win rate vs $\\pi_{ref}$"),
              ("eval/kl_to_ref", "KL($\\pi_t$ || $\\pi_{ref}$)"),
              ("counts/queries", "preference queries (cumulative)"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for method, hist in histories.items():
        its = [r for r in hist if r.get("kind") == "iteration"]
        if not its:
            continue
        x = [r["iteration"] for r in its]
        for ax, (key, _) in zip(axes, panels):
            y = [r.get(key, float("nan")) for r in its]
            err = [r.get(key + "_stderr", 0.0) for r in its]
            ax.errorbar(x, y, yerr=err if any(err) else None, marker="o", capsize=3, label=method)
    for ax, (key, label) in zip(axes, panels):
        ax.set_title(label)
        ax.set_xlabel("outer iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[2].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].axhline(0.5, color="gray", lw=0.8, ls="--")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""Chips, compile-only TPU devices, and the compiler's memory / cost figures of one compiled program.

XLA's cost analysis counts a while-loop body once, so a scanned model's costs come from its unrolled 1- and
2-layer programs (same batch, mesh and shardings) extrapolated to every layer, each cost key on its own
(`extrapolate`): a key the cost model returns as non-positive, or that does not grow from 1 to 2 layers,
is left out and named, never reported as a figure.
"""
from __future__ import annotations

import dataclasses
import math

GIB = 2.0 ** 30
COST_KEYS = ("flops", "bytes accessed", "optimal_seconds")


@dataclasses.dataclass(frozen=True)
class Chip:
    hbm_gib: float
    peak_bf16_flops: float  # FLOP/s per chip
    hbm_bytes_per_s: float


# Public per-chip figures (Cloud TPU system architecture pages).
CHIPS = {
    "v4": Chip(32.0, 275e12, 1228e9),
    "v5e": Chip(16.0, 197e12, 819e9),
    "v5p": Chip(95.0, 459e12, 2765e9),
    "v6e": Chip(32.0, 918e12, 1640e9),
}
# A topology of the same chip count whose HBM holds any unrolled 1- / 2-layer program (per-chip FLOPs of a
# partitioned program do not depend on the chip).
LARGE_TOPOLOGY = {4: "v5p:2x2x1", 8: "v5p:2x2x2", 16: "v5p:2x2x4", 32: "v5p:2x4x4"}


def chip_of(topology: str) -> Chip:
    kind = topology.split(":")[0]
    if kind not in CHIPS:
        raise SystemExit(f"--topology {topology!r}: unknown chip {kind!r} (known: {sorted(CHIPS)})")
    return CHIPS[kind]


def devices_for(platform: str, topology: str):
    """Compile-only TPU devices of `topology` (libtpu), or the first int(topology) local CPU devices."""
    import jax

    if platform == "cpu":
        n = int(topology)
        if len(jax.devices("cpu")) < n:
            raise SystemExit(f"--platform cpu --topology {n}: only {len(jax.devices('cpu'))} CPU devices "
                             f"(set XLA_FLAGS=--xla_force_host_platform_device_count={n})")
        return jax.devices("cpu")[:n]
    from jax.experimental import topologies

    kw = {"chip_config_name": "megacore"} if topology.startswith("v4") else {}
    try:
        return list(topologies.get_topology_desc(topology_name=topology, platform="tpu", **kw).devices)
    except Exception as e:  # noqa: BLE001 - libtpu absent or bad name: say which
        raise SystemExit(f"--topology {topology!r}: no TPU topology ({type(e).__name__}: {e}); "
                         "install the tpu-aot extra (jax[tpu]) and use a name like v4:2x2x4") from None


def cost_of(compiled) -> dict:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {k: float(v) for k, v in (cost or {}).items() if k in COST_KEYS}


def memory_of(compiled) -> dict:
    """Per-chip GiB of the compiler's buffer assignment."""
    m = compiled.memory_analysis()
    return {"argument_gib": m.argument_size_in_bytes / GIB, "temp_gib": m.temp_size_in_bytes / GIB,
            "output_gib": (m.output_size_in_bytes - m.alias_size_in_bytes) / GIB,
            "code_gib": m.generated_code_size_in_bytes / GIB}


def extrapolate(c1: dict, c2: dict, layers: int) -> tuple[dict, dict]:
    """Each key linearly from its 1- and 2-layer values to `layers`: -> (costs, {ignored key: why})."""
    out, ignored = {}, {}
    for k in sorted(set(c1) | set(c2)):
        a, b = c1.get(k), c2.get(k)
        if a is None or b is None:
            ignored[k] = "missing from one of the 1- / 2-layer programs"
        elif not (math.isfinite(a) and math.isfinite(b)) or a <= 0 or b <= 0:
            ignored[k] = f"non-positive or non-finite ({a:.4g} at 1 layer, {b:.4g} at 2)"
        elif b <= a:
            ignored[k] = f"not increasing ({a:.4g} at 1 layer, {b:.4g} at 2)"
        else:
            out[k] = a + (layers - 1) * (b - a)
    return out, ignored


def layer_costs(lower_layers, layers: int, platform: str, topology: str, mesh_shape) -> dict:
    """Costs of the whole program from `lower_layers(k, mesh or None) -> lowered` at k = 1, 2 (unrolled).
    Returns {"cost": {...}, "ignored": {...}, "source": str} or {"cost": {}, "reason": str}."""
    import numpy as np

    from wind_jax import sharding

    def both(mesh):
        return [cost_of(lower_layers(k, mesh).compile()) for k in (1, 2)]

    source = "compiler, unrolled 1- and 2-layer programs extrapolated to every layer"
    try:
        c1, c2 = both(None)
    except Exception as e:  # noqa: BLE001 - RESOURCE_EXHAUSTED from the TPU compiler
        if "RESOURCE_EXHAUSTED" not in str(e) or platform != "tpu":
            return {"cost": {}, "reason": f"1- / 2-layer compiles failed: {type(e).__name__}: {str(e)[:300]}"}
        chips = int(np.prod(mesh_shape))
        alt = LARGE_TOPOLOGY.get(chips)
        if alt is None:
            return {"cost": {}, "reason": f"1- / 2-layer compiles do not fit {topology} and no v5p topology of "
                                          f"{chips} chips is known"}
        c1, c2 = both(sharding.make_mesh(mesh_shape, devices=devices_for("tpu", alt)))
        source += f" (compiled on {alt}: same chip count and mesh; they ran out of HBM on {topology})"
        c1.pop("optimal_seconds", None), c2.pop("optimal_seconds", None)  # chip-dependent: not {alt}'s time
    cost, ignored = extrapolate(c1, c2, layers)
    return {"cost": cost, "ignored": ignored, "source": source, "one_layer": c1, "two_layers": c2}


def estimate_seconds(cost: dict, chip: Chip | None) -> tuple[float | None, str]:
    """The cost model's optimal_seconds, else the roofline max(FLOPs / peak, bytes / HBM bandwidth)."""
    if cost.get("optimal_seconds", 0) > 0:
        return cost["optimal_seconds"], "cost model (optimal_seconds)"
    if chip is not None and cost.get("flops", 0) > 0:
        t = cost["flops"] / chip.peak_bf16_flops
        if cost.get("bytes accessed", 0) > 0:
            t = max(t, cost["bytes accessed"] / chip.hbm_bytes_per_s)
        return t, "roofline of the compiler's flops / bytes"
    return None, "no positive optimal_seconds or flops"


def shard_bytes(tree) -> int:
    """Bytes one device holds of a pytree of ShapeDtypeStructs (or arrays) with NamedShardings (the
    largest shard set over devices; no TPU tile padding)."""
    import jax
    import numpy as np

    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += int(np.prod(shape)) * np.dtype(x.dtype).itemsize
    return total

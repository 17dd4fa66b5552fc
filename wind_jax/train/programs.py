"""One compiled program per specification: loops of equal shapes in one process (seeds, a resumed run, a
benchmark sweep) share their jitted steps, rollouts and batch programs.

A key is any hashable specification of the program: its static arguments (graph definitions, meshes,
frozen dataclasses of settings) and the `signature` of its array arguments.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable

import jax


def signature(tree) -> tuple:
    """A hashable description of a pytree's structure, shapes and dtypes."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((tuple(x.shape), str(x.dtype)) for x in leaves)


class ProgramCache:
    """{specification: jitted function}, each built once by `get(spec, build)`."""

    def __init__(self):
        self._programs: dict[Hashable, Callable] = {}

    def get(self, spec: Hashable, build: Callable[[], Callable]) -> Callable:
        if spec not in self._programs:
            self._programs[spec] = build()
        return self._programs[spec]

    def __len__(self) -> int:
        return len(self._programs)


PROGRAMS = ProgramCache()   # the process's programs (steps, loops and benchmarks share compiles)

"""Experiment families, found by convention.

A family is a module `sam_lab.trials.<name>` with
  - `Config`: a dataclass of its pinned, flat config keys (see `sam_lab.config`), with a `seed`;
  - `run(config: dict)`: a generator that validates the config, then yields one metrics dict per
    evaluation point (a curve row, always with `step`). Its `return` value, if any, is a dict of
    per-trial scalars (e.g. `phase`, `barrier_loss_curve`) merged over the last row's metrics.
It raises on failure; a non-finite loss raises FloatingPointError.

A family may also train several trials in one process (`pack` in a spec), with
  - `PACKABLE_KEYS`: the config keys packed trials may differ in (e.g. seed, rho);
  - `check_packable(configs: list[dict])`: raises ConfigError if they cannot share a pack;
  - `run_packed(configs: list[dict])`: yields (k, row) for config k, and returns one summary per
    config, or the FloatingPointError that ended that config's model alone (a failed trial).
And `gpu_memory(configs: list[dict]) -> bytes`, an estimate for a process training them, lets a
spec ask for `resources: {gpu: auto}` (a GPU share sized from the model).

Adding a family needs this module, a spec in sweeps/ and a plot in analysis/<name>.py, nothing else.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from types import ModuleType


@functools.cache  # asked once per trial id; the package's modules do not change meanwhile
def names() -> tuple[str, ...]:
    modules = pkgutil.iter_modules(__path__)
    return tuple(sorted(m.name for m in modules if not m.name.startswith("_")))


def get(name: str) -> ModuleType:
    if name not in names():
        raise KeyError(f"unknown experiment {name!r}; allowed: {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}")

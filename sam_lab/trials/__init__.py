"""Experiment families, found by convention.

A family is a module `sam_lab.trials.<name>` with
  - `Config`: a dataclass of its pinned, flat config keys (see `sam_lab.config`), with a `seed`;
  - `run(config: dict)`: a generator that validates the config, then yields one metrics dict per
    evaluation point (a curve row, always with `step`). Its `return` value, if any, is a dict of
    per-trial scalars (e.g. `phase`, `barrier_loss_curve`) merged over the last row's metrics.
It raises on failure; a non-finite loss raises FloatingPointError.

Adding a family needs this module, a spec in sweeps/ and a plot in analysis/<name>.py, nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get(name: str) -> ModuleType:
    if name not in names():
        raise KeyError(f"unknown experiment {name!r}; allowed: {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}")

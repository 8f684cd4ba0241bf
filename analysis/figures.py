"""`make(sweep_dir, out_dir)`: the figures of a sweep, by its experiment.

The figure module is `analysis/<experiment>.py` with
`make_figures(trials, curves, spec, out_dir) -> list[Path]`. `trials` holds every trial of the
latest launch's spec, failed ones included (status, error), so a module can map failures too.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from analysis import load


def make(sweep_dir, out_dir) -> list[Path]:
    spec = load.spec(sweep_dir)
    try:
        module = importlib.import_module(f"analysis.{spec['experiment']}")
    except ModuleNotFoundError as e:
        if e.name != f"analysis.{spec['experiment']}":
            raise
        raise LookupError(f"no figures for experiment {spec['experiment']!r} "
                          f"(analysis/{spec['experiment']}.py does not exist)") from None
    trials = load.trials(sweep_dir)
    curves = load.curves(sweep_dir, trials.trial_id)
    return module.make_figures(trials, curves, spec, Path(out_dir))

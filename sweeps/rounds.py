"""The rounds of a refined spec, decided by what is recorded (see sweeps/refine.py).

    todo, round_ = plan(spec, recorded(sweep_dir, spec.refine.metric), skip={"ok", "failed"})

`plan` rebuilds `spec.trials` as the grid (round 0) plus every later round that the recorded
results already decide, and returns the first round's trials that still need to run. It is a
pure function of trials.parquet, so a resumed, killed or deepened (`--set rounds=N`) sweep
recomputes the same rounds and runs only what is missing.
"""

from __future__ import annotations

import pandas as pd

from analysis.boundary import labels, point_label
from analysis.load import read_trials
from sweeps import refine as refiner


def recorded(sweep_dir, metric: str) -> dict[str, tuple]:
    """{trial_id: (status, metric value)} of the recorded trials."""
    table = read_trials(sweep_dir, ["trial_id", "status", metric])
    if table is None:
        return {}
    values = table[metric].to_pylist() if metric in table.column_names else [None] * len(table)
    return dict(zip(table["trial_id"].to_pylist(), zip(table["status"].to_pylist(), values)))


def next_round(spec, recorded: dict, round_: int) -> list:
    """The trials of round `round_`: midpoints where the points of `spec.trials` disagree."""
    r, keys = spec.refine, list(spec.grid)
    rows = [{**t.point, "status": recorded[t.trial_id][0], "value": recorded[t.trial_id][1]}
            for t in spec.trials]
    frame = pd.DataFrame(rows, columns=[*keys, "status", "value"])
    if r.metric == "status":  # the status is the phase: a failed point is a label here
        table = {tuple(p if isinstance(p, tuple) else (p,)): point_label(g.status.tolist(), None)
                 for p, g in frame.groupby(keys, sort=False)}
    else:
        table = labels(frame, keys, "value", r.threshold)
    integer = {k for k in r.axes if all(isinstance(v, int) for v in spec.grid[k])}
    points = refiner.next_points(r, keys, table, integer)
    return spec.expand([dict(zip(keys, p)) for p in points], round_)


def plan(spec, recorded: dict, skip: set) -> tuple[list, int]:
    """(todo, round) of a refined spec: the trials of the first round with trials not yet
    recorded as one of `skip`, and that round's number. todo is [] once the last round is
    recorded or nothing disagrees. A lost trial is never in `skip`, so every trial of a round
    is recorded before the round decides the next."""
    spec.trials = list(spec.grid_trials)
    current, round_ = spec.trials, 0
    while True:
        todo = [t for t in current if recorded.get(t.trial_id, (None,))[0] not in skip]
        if todo or round_ == spec.refine.rounds:
            return todo, round_
        current = next_round(spec, recorded, round_ + 1)
        if not current:
            return [], round_
        spec.trials = spec.trials + current
        round_ += 1

"""Bring a sweep's MLflow runs in line with its Parquet tables (Parquet is the source of truth).

    catch_up(tracker, sweep_dir, experiment)   # at each launch, and `sam-lab sync RESULTS/NAME`

First the runs a dead driver left RUNNING are closed (`Tracker.close_stale`), then every trial
in trials.parquet without an ended run of its status gets one, rebuilt from its Parquet row and
curve file: trials MLflow missed while it was down, or results copied off a cluster.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from sam_lab import trials as families
from sweeps import tracking
from sweeps.results import read_trials


def _say_stale(say, killed: int, closed: int):
    if killed:
        say(f"marked {killed} MLflow runs left RUNNING by an earlier driver as KILLED")
    if closed:
        say(f"closed {closed} MLflow runs of trials recorded just before an earlier driver died")


def catch_up(tracker: tracking.Tracker, sweep_dir: Path, experiment: str, say=print) -> int:
    """Close stale runs, then log the trials MLflow lacks; returns how many were logged."""
    table = read_trials(sweep_dir)
    rows = table.to_pylist() if table is not None else []
    _say_stale(say, *tracker.close_stale({r["trial_id"]: r["status"] for r in rows}))
    if not rows:
        return 0
    config_keys = [k for k in families.get(experiment).Config.__dataclass_fields__]
    curves = Path(sweep_dir) / "curves"

    def curve_of(trial_id: str) -> list[dict]:
        path = curves / f"{trial_id}.parquet"
        return pq.read_table(path).drop(["trial_id"]).to_pylist() if path.exists() else []

    return tracking.sync(tracker, rows, config_keys, curve_of, say=say)

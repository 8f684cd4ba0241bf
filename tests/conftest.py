"""Shared fixtures: spec files, the CLI as a subprocess, and one real tiny sweep per session.

The sweep (digits MLP, 2 widths x 2 learning rates, 1 seed; lr 1e6 diverges to NaN at epoch 1
for both widths) is run once and then re-run twice (plain, and --rerun-failed); each test reads
the snapshot it needs, so the session pays for two Ray start-ups, not one per test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

TINY = {
    "name": "tiny",
    "experiment": "classify",
    "description": "4 digits MLPs, 2 of which diverge",
    "base": {"dataset": "digits", "model": "mlp", "n_train": 300, "epochs": 2},
    "grid": {"width": [8, 16], "lr": [0.1, 1.0e6]},
    "seeds": 1,
}


def write_spec(directory: Path, spec: dict | str, name: str = "spec.yaml") -> Path:
    path = Path(directory) / name
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
    return path


def sam_lab(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """The installed `sam-lab` console script, as a user runs it."""
    script = Path(sys.executable).with_name("sam-lab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([str(script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _snapshot(results: Path) -> SimpleNamespace:
    import pandas as pd
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return SimpleNamespace(trials=pd.read_parquet(results / "tiny" / "trials.parquet"),
                           runs=runs, client=client)


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory):
    work = tmp_path_factory.mktemp("tiny")
    spec = write_spec(work, TINY, "tiny.yaml")
    results = work / "results"
    first = sam_lab("sweep", "tiny.yaml", "--results", "results", cwd=work)
    assert first.returncode == 0, first.stdout + first.stderr
    after_first = _snapshot(results)
    rerun = sam_lab("sweep", "tiny.yaml", "--results", "results", cwd=work)
    after_rerun = _snapshot(results)
    rerun_failed = sam_lab("sweep", "tiny.yaml", "--results", "results", "--rerun-failed",
                           cwd=work)
    after_rerun_failed = _snapshot(results)
    return SimpleNamespace(work=work, spec=spec, results=results, sweep_dir=results / "tiny",
                           first=first, after_first=after_first, rerun=rerun,
                           after_rerun=after_rerun, rerun_failed=rerun_failed,
                           after_rerun_failed=after_rerun_failed)

"""Sweeps of 10^5 trials, without Ray: the append-only results layout, the best-effort MLflow
thread and `sync`, the Recorder's failure paths, and the plans a launch makes. A few seconds.
(The speed itself is measured in bench/6_large_sweeps.py, never here.)
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY, write_spec
from mlflow.tracking import MlflowClient

from analysis import load
from sam_lab.trials import classify
from sweeps import cli, tracking
from sweeps import spec as specs
from sweeps.results import PARTS, TRIALS, Results, compact, read_statuses
from sweeps.sync import catch_up


def row(tid: str, status: str = "ok", **extra) -> dict:
    return {"trial_id": tid, "sweep": "s", "experiment": "classify", "status": status,
            "error": None if status == "ok" else "boom", "seed": 0, "width": 8, "lr": 0.1,
            "step": 2, "epoch": 2, "test_acc": 0.5, "wall_s": 1.0, "node": "n",
            "gpu_share": 0.0, "code_version": "git:abc", **extra}


def curve(n: int = 3) -> list[dict]:
    return [{"step": i, "epoch": i, "test_acc": i / 10} for i in range(n)]


def test_trials_are_appended_as_parts_then_compacted_into_one_file(tmp_path):
    results = Results(tmp_path, classify.Config)
    results.record(row("a", extra_text="x"), curve())
    results.record(row("b", "failed", extra_number=3), curve(1))
    while results.written < 2:  # the writer thread
        time.sleep(0.01)
    assert not (tmp_path / TRIALS).exists() and len(list((tmp_path / PARTS).iterdir())) >= 1
    assert read_statuses(tmp_path) == {"a": "ok", "b": "failed"}  # readers see the parts
    results.record(row("b", "ok"), curve())  # --rerun-failed: the latest row wins
    results.close()

    assert not list((tmp_path / PARTS).glob("*.parquet"))  # compacted, parts removed
    for df in (pd.read_parquet(tmp_path / TRIALS),
               pl.read_parquet(tmp_path / TRIALS).to_pandas(),
               duckdb.sql(f"select * from '{tmp_path / TRIALS}'").df()):
        assert sorted(df.trial_id) == ["a", "b"] and set(df.status) == {"ok"}
        assert {"extra_text", "extra_number", "code_version"} <= set(df.columns)
    table = pq.read_table(tmp_path / TRIALS)
    assert table.schema.field("width").type == pa.int64()  # the config dataclass's type
    assert table.schema.field("lr").type == pa.float64()
    assert len(load.curves(tmp_path)) == 6


def test_recording_a_trial_writes_one_part_and_leaves_100k_rows_alone(tmp_path):
    """The cost of a trial does not grow with the sweep: the big file is not rewritten."""
    big = pa.Table.from_pylist([row(f"t{i}") for i in range(100_000)])
    pq.write_table(big, tmp_path / TRIALS)
    before = (tmp_path / TRIALS).stat().st_mtime_ns
    results = Results(tmp_path, classify.Config)
    results.record(row("new"), curve())
    while results.written < 1:
        time.sleep(0.01)
    parts = list((tmp_path / PARTS).glob("*.parquet"))
    assert len(parts) == 1 and pq.read_metadata(parts[0]).num_rows == 1
    assert (tmp_path / TRIALS).stat().st_mtime_ns == before
    assert len(read_statuses(tmp_path)) == 100_001
    results.close()
    assert pq.read_metadata(tmp_path / TRIALS).num_rows == 100_001


def test_compaction_is_idempotent_and_readers_never_see_temp_files(tmp_path):
    results = Results(tmp_path, classify.Config)
    for i in range(5):
        results.record(row(f"t{i}"), [])
    results.close()
    assert compact(tmp_path) == 0 and len(read_statuses(tmp_path)) == 5
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- MLflow


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    """One SQLite store for the module: creating one costs seconds (its migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_an_mlflow_outage_never_blocks_and_sync_restores_the_runs(tmp_path, uri):
    tracker = tracking.Tracker(uri, "s", tmp_path / "s")
    tracker.client = MlflowClient(f"http://127.0.0.1:{closed_port()}")  # the server goes away
    background = tracking.Background(tracker, say=lambda line: None)
    background.BACKOFF_S = (0.01,)
    start = time.monotonic()
    for tid in ("a", "b", "c"):
        background.submit("start_trial", tid, tid, tid, {"width": 8})
        background.submit("log_final", tid, tid, row(tid), {}, None, curve())
    assert time.monotonic() - start < 0.5  # submit never waits for MLflow
    background.close()
    assert background.given_up == {"a", "b", "c"}

    sweep_dir = tmp_path / "s"
    results = Results(sweep_dir, classify.Config)
    for tid in ("a", "b", "c"):
        results.record(row(tid, "ok" if tid != "c" else "failed"), curve(250))
    results.close()
    back = tracking.Tracker(uri, "s", sweep_dir)  # the server is back
    assert catch_up(back, sweep_dir, "classify", say=lambda line: None) == 3
    assert catch_up(back, sweep_dir, "classify", say=lambda line: None) == 0  # idempotent
    runs = back.client.search_runs([back.experiment_id], "tags.kind = 'trial'")
    assert sorted((r.data.tags["trial_id"], r.info.status) for r in runs) == [
        ("a", "FINISHED"), ("b", "FINISHED"), ("c", "FAILED")]
    history = back.client.get_metric_history(runs[0].info.run_id, "test_acc")
    assert len(history) == tracking.CURVE_POINTS  # downsampled; Parquet keeps all 250
    assert {h.step for h in history} >= {0, 249}
    assert runs[0].data.params["width"] == "8"


def test_plot_on_a_copied_store_with_server_artifacts_logs_nothing_and_does_not_raise(tmp_path,
                                                                                     uri):
    tracker = tracking.Tracker(uri, "served", tmp_path, artifact_location="mlflow-artifacts:/1")
    tracker.client.create_run(tracker.experiment_id, tags={"kind": "launch"})  # as on the head
    figure = tmp_path / "f.png"
    figure.write_bytes(b"png")
    assert tracking.log_figures(uri, "served", [figure]) is None


# ----------------------------------------------------------------------------- Recorder


def test_callbacks_for_an_actor_that_never_started_record_it_lost_and_never_raise(tmp_path):
    from sweeps import launcher

    spec = specs.load(write_spec(tmp_path, TINY))
    trial = spec.trials[0]
    submitted = []
    recorded = []
    tracker = SimpleNamespace(submit=lambda *a: submitted.append(a))
    results = SimpleNamespace(record=lambda r, c, then=None: recorded.append(r))
    progress = launcher.Progress(1, stream=open(tmp_path / "out.txt", "w"))
    recorder = launcher.Recorder(spec, [trial], results, tracker, progress,
                                 {trial.trial_id: 0.0}, "git:abc")
    fake = SimpleNamespace(config={"unit": {"members": [{"trial_id": trial.trial_id}]}},
                           num_failures=1, get_error=lambda: "Failure # 1\nActorDiedError: x")
    recorder.on_trial_recover(0, [], fake)  # no on_trial_start before it
    recorder.on_trial_error(0, [], fake)
    assert [r["status"] for r in recorded] == ["lost"] and "ActorDiedError" in recorded[0]["error"]
    assert recorded[0]["code_version"] == "git:abc"

    broken = SimpleNamespace(config={"unit": {}}, num_failures=0)  # anything at all
    recorder.on_trial_start(0, [], broken)
    recorder.on_trial_result(0, [], broken, {})
    recorder.on_trial_error(0, [], broken)
    assert "the sweep goes on" in (tmp_path / "out.txt").read_text()


def test_lost_trials_run_again_by_default_failed_ones_on_request(tmp_path):
    spec = specs.load(write_spec(tmp_path, TINY))
    a, b, c, _ = [t.trial_id for t in spec.trials]
    statuses = {a: "ok", b: "failed", c: "lost"}
    todo, _ = cli._plan(spec, statuses, rerun_failed=False)
    assert {t.trial_id for t in todo} == set(statuses) - {a, b} | {spec.trials[3].trial_id}
    todo, _ = cli._plan(spec, statuses, rerun_failed=True)
    assert len(todo) == 3


def test_a_relative_data_dir_means_the_launch_directory(tmp_path, monkeypatch):
    from sweeps import launcher

    monkeypatch.chdir(tmp_path)
    assert launcher._with_absolute_paths({"data_dir": "data"})["data_dir"] == str(tmp_path / "data")
    assert launcher._with_absolute_paths({"data_dir": "/d"})["data_dir"] == "/d"
    assert launcher._with_absolute_paths({"width": 8}) == {"width": 8}


def test_a_dry_run_of_a_huge_grid_prints_a_summary(tmp_path, capsys):
    big = {**TINY, "grid": {"width": list(range(1, 51)), "lr": [0.1 * i for i in range(1, 41)]}}
    spec = write_spec(tmp_path, big)
    assert cli.main(["sweep", str(spec), "--dry-run", "--results", str(tmp_path / "r")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) < 30 and lines[-2].startswith("2000 trials (width: 50 values, lr: 40 "
                                                    "values; 1 seeds): 2000 pending")
    assert "2000 trials, 0 finished, 2000 to run (dry run" in lines[-1]
    assert not Path(tmp_path / "r").exists()


def test_what_tune_unpickles_per_trial_does_not_grow_with_the_sweep():
    from ray import cloudpickle

    from sweeps import launcher

    trainable = launcher.trainable(1)  # Tune pickles the function with its resources function
    assert len(cloudpickle.dumps(trainable._resources)) < 5_000  # no spec, no units inside
    assert len(cloudpickle.dumps(launcher.UnitFeeder([{"unit_id": "x"}] * 100_000))) < 1_000

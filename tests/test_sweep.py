"""End to end: a real local Ray, a real MLflow SQLite store, the CLI as a subprocess.

Costs about 60-90 s on 2 cores (two Ray start-ups in `tiny_sweep`, see conftest.py).
"""

from __future__ import annotations

import duckdb
import pandas as pd
import polars as pl
import pytest
import torch

from analysis import figures
from sam_lab.train import classify
from sweeps import cli
from sweeps import spec as specs
from sweeps.results import FINAL, META

pytestmark = pytest.mark.slow

DIVERGING = 1e6


def test_tables_have_the_pinned_columns_and_one_row_per_trial(tiny_sweep):
    trials = tiny_sweep.after_first.trials
    spec = specs.load(tiny_sweep.spec)
    assert sorted(trials.trial_id) == sorted(t.trial_id for t in spec.trials)
    config_keys = list(spec.trials[0].config)
    for column in [*META, *config_keys, *FINAL, "wall_s", "node"]:
        assert column in trials.columns, column
    assert (trials.sweep == "tiny").all() and (trials.experiment == "classify").all()
    assert (trials.wall_s > 0).all() and trials.node.str.len().gt(10).all()

    curves = pd.read_parquet(tiny_sweep.sweep_dir / "curves")
    assert list(curves.columns[:3]) == ["trial_id", "step", "epoch"]
    per_trial = curves.groupby("trial_id").size()
    ok = trials[trials.status == "ok"]
    assert (per_trial[ok.trial_id] == 3).all()  # epochs 0, 1, 2
    assert (per_trial[trials[trials.status == "failed"].trial_id] == 1).all()  # NaN in epoch 1


def test_curves_equal_a_direct_run_of_the_same_config(tiny_sweep):
    """Same config + seed = same metrics: the sweep adds nothing and loses nothing."""
    trials = tiny_sweep.after_first.trials
    row = trials[(trials.width == 16) & (trials.lr == 0.1)].iloc[0]
    trial = next(t for t in specs.load(tiny_sweep.spec).trials if t.trial_id == row.trial_id)
    torch.set_num_threads(1)
    direct = pd.DataFrame(list(classify(trial.config)))
    curve = pd.read_parquet(tiny_sweep.sweep_dir / "curves" / f"{row.trial_id}.parquet")
    pd.testing.assert_frame_equal(curve.drop(columns="trial_id"), direct[curve.columns[1:]])
    assert row.test_acc == direct.test_acc.iloc[-1] and row.step == direct.step.iloc[-1]


def test_diverging_trials_fail_with_their_error_and_the_others_finish(tiny_sweep):
    trials = tiny_sweep.after_first.trials
    failed = trials[trials.lr == DIVERGING]
    assert (failed.status == "failed").all() and len(failed) == 2
    assert failed.error.str.startswith("FloatingPointError: train loss is nan").all()
    ok = trials[trials.lr != DIVERGING]
    assert (ok.status == "ok").all() and ok.error.isna().all() and len(ok) == 2
    assert "2 ok, 2 failed" in tiny_sweep.first.stdout


def test_mlflow_has_one_nested_run_per_trial_with_params_and_stepped_metrics(tiny_sweep):
    snap = tiny_sweep.after_first
    parents = [r for r in snap.runs if r.data.tags.get("kind") == "launch"]
    children = [r for r in snap.runs if r.data.tags.get("kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == len(snap.trials) == 4
    by_id = snap.trials.set_index("trial_id")
    for run in children:
        row = by_id.loc[run.data.tags["trial_id"]]
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["sweep"] == "tiny" and run.data.tags["status"] == row.status
        assert run.info.status == ("FINISHED" if row.status == "ok" else "FAILED")
        assert float(run.data.params["lr"]) == row.lr and run.data.params["dataset"] == "digits"
        history = snap.client.get_metric_history(run.info.run_id, "test_acc")
        curve = pd.read_parquet(tiny_sweep.sweep_dir / "curves" / f"{row.name}.parquet")
        assert sorted((m.step, m.value) for m in history) == list(zip(curve.step, curve.test_acc))


def test_rerun_skips_everything_and_adds_nothing(tiny_sweep):
    assert tiny_sweep.rerun.returncode == 0
    assert "4 finished (2 failed; --rerun-failed retries them), 0 to run" in tiny_sweep.rerun.stdout
    pd.testing.assert_frame_equal(tiny_sweep.after_rerun.trials, tiny_sweep.after_first.trials)
    assert len(tiny_sweep.after_rerun.runs) == len(tiny_sweep.after_first.runs)


def test_rerun_failed_retries_only_the_failed_trials(tiny_sweep):
    assert tiny_sweep.rerun_failed.returncode == 0
    assert "skipping 2 finished trials" in tiny_sweep.rerun_failed.stdout
    before, after = tiny_sweep.after_first.trials, tiny_sweep.after_rerun_failed.trials
    assert sorted(after.trial_id) == sorted(before.trial_id)  # replaced, not appended
    unchanged = before[before.status == "ok"].set_index("trial_id")
    assert after.set_index("trial_id").loc[unchanged.index, "wall_s"].equals(unchanged.wall_s)
    new_runs = len(tiny_sweep.after_rerun_failed.runs) - len(tiny_sweep.after_first.runs)
    assert new_runs == 1 + 2  # a launch run and the two failed trials again


def test_tables_read_with_pandas_polars_and_duckdb(tiny_sweep):
    d = tiny_sweep.sweep_dir
    n_rows = len(pd.read_parquet(d / "curves"))
    assert pl.read_parquet(d / "trials.parquet").height == 4
    assert pl.read_parquet(d / "curves" / "*.parquet").height == n_rows
    con = duckdb.connect()
    ok = con.execute(f"select count(*) from '{d}/trials.parquet' where status = 'ok'").fetchall()
    assert ok == [(2,)]
    rows = con.execute(f"select count(*) from '{d}/curves/*.parquet'").fetchall()
    assert rows == [(n_rows,)]


def test_status_and_plot(tiny_sweep, capsys):
    assert cli.main(["status", str(tiny_sweep.sweep_dir)]) == 0
    assert "tiny: 2 ok, 2 failed, 0 pending (4 trials, classify)" in capsys.readouterr().out
    out = tiny_sweep.work / "figs"
    assert cli.main(["plot", str(tiny_sweep.sweep_dir), "--out", str(out)]) == 0
    assert (out / "error_vs_width.png").stat().st_size > 10_000
    assert (out / "error_vs_width.svg").exists()
    client = tiny_sweep.after_first.client
    launches = [r for r in client.search_runs([tiny_sweep.after_first.runs[0].info.experiment_id],
                                              "tags.kind = 'launch'",
                                              order_by=["attributes.start_time DESC"])]
    # the latest launch run, found straight from SQLite, is the one MLflow finds
    assert f"logged to MLflow run {launches[0].info.run_id}" in capsys.readouterr().out
    logged = [a.path for a in client.list_artifacts(launches[0].info.run_id, "figures")]
    drawn = figures.make(tiny_sweep.sweep_dir, out)
    assert drawn[0].name == "error_vs_width.png"
    assert sorted(logged) == sorted(f"figures/{p.stem}{ext}" for p in drawn
                                    for ext in (".png", ".svg"))  # each figure, PNG and SVG


def _tables(db) -> tuple[list, list]:
    import sqlite3

    with sqlite3.connect(db) as con:
        return (sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master "
                                                  "WHERE type = 'table'")),
                con.execute("SELECT * FROM alembic_version").fetchall())


def test_a_new_store_is_a_copy_of_the_cached_empty_one_and_never_replaces_a_store(
        tmp_path, monkeypatch):
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from sweeps import tracking

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    migrated = MlflowClient(f"sqlite:///{tmp_path / 'm' / 'mlflow.db'}")  # MLflow's own way
    copied = tracking.Tracker(f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}", "b", tmp_path / "b")
    empty = tracking.empty_store()  # made by the new store above
    assert empty is not None and empty.parent == tmp_path / "cache" / "sam-lab"
    assert _tables(tmp_path / "b" / "mlflow.db") == _tables(tmp_path / "m" / "mlflow.db")
    # the copy's Default experiment is made by MLflow for it, as in a migrated store
    assert copied.client.get_experiment("0").artifact_location == \
        migrated.get_experiment("0").artifact_location
    assert sorted(e.name for e in copied.client.search_experiments(ViewType.ALL)) == \
        ["Default", "b"]
    tracking.seed_store(tmp_path / "b" / "mlflow.db")  # an existing store is left as it is
    assert copied.client.get_experiment_by_name("b") is not None


def test_a_store_mlflow_cannot_open_is_raised_on_the_callers_thread(tmp_path):
    import functools
    import sqlite3

    from sweeps import tracking

    db = tmp_path / "mlflow.db"  # a store of an MLflow version this one does not know
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32))")
        con.execute("INSERT INTO alembic_version VALUES ('ffffffffffff')")
    make = functools.partial(tracking.Tracker, f"sqlite:///{db}", "s", tmp_path / "s")
    with pytest.raises(Exception) as direct:
        make()
    background = tracking.Background(make, say=lambda line: None)
    background.submit("open_launch", None, {}, 1, 0)  # queued before the store failed: skipped
    with pytest.raises(type(direct.value), match="ffffffffffff"):
        background.ready()
    background.close()
    assert not background.thread.is_alive()

"""The MLflow dashboard of a sweep (docs/dashboard.md): the experiment carries the spec's
description and the shared view, trial runs carry no `epoch`/`lr` metrics, the empty Default
experiment is gone, and the URL `sam-lab ui` prints opens, in a real headless browser (Debian's
chromium) and without any click, a runs table that shows every trial's name, the swept keys and
test_acc."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import TINY, free_port, wait_for

from sweeps import tracking


def query(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def trial_names(db: Path) -> list[str]:
    return [n for (n,) in query(db, "SELECT r.name FROM runs r JOIN tags t ON t.run_uuid = "
                                    "r.run_uuid WHERE t.key = 'kind' AND t.value = 'trial'")]


def test_sweep_experiment_has_description_view_and_no_default(tiny_sweep):
    db = tiny_sweep.results / "mlflow.db"
    experiments = dict(query(db, "SELECT name, lifecycle_stage FROM experiments"))
    assert experiments == {"Default": "deleted", "tiny": "active"}
    tags = dict(query(db, "SELECT key, value FROM experiment_tags"))
    assert tags["mlflow.note.content"] == TINY["description"]
    view = json.loads(json.loads(tags[f"mlflow.sharedViewState.{tracking.VIEW_KEY}"])["state"])
    assert view["selectedColumns"] == ["metrics.`test_acc`", "params.`width`", "params.`lr`",
                                       "tags.`status`"]
    assert view["searchFilter"] == "tags.kind = 'trial'"  # flat trials, no launch row
    assert view["orderByKey"] == "metrics.`test_acc`"


def test_epoch_and_lr_stay_out_of_mlflow_metrics_but_in_parquet(tiny_sweep):
    db = tiny_sweep.results / "mlflow.db"
    keys = {k for (k,) in query(db, "SELECT DISTINCT key FROM metrics")}
    assert "test_acc" in keys and not keys & {"epoch", "lr", "step"}
    import pyarrow.parquet as pq

    curve = next((tiny_sweep.sweep_dir / "curves").glob("*.parquet"))
    assert "epoch" in pq.read_schema(curve).names


def test_dashboard_url_forms():
    url = tracking.dashboard_url("0.0.0.0", 5000, "7")
    assert url == ("http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
                   f"&viewStateShareKey={tracking.VIEW_KEY}")
    assert tracking.dashboard_url("::1", 80, "1").startswith("http://[::1]:80/#/")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="chromium not installed (.ci/run installs it)")
def test_ui_url_opens_the_runs_table_ready_to_read_in_a_real_browser(tiny_sweep, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(tiny_sweep.results, results)
    port = free_port()
    ui = subprocess.Popen([str(Path(sys.executable).with_name("sam-lab")), "ui", "--results",
                           str(results), "--port", str(port)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        header = ui.stdout.readline()
        line = ui.stdout.readline().split()
        assert "one line per sweep" in header and line[0] == "tiny", (header, line)
        url = line[1]
        assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/")

        def up():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    return True
            except OSError:
                assert ui.poll() is None, ui.stdout.read()
                return False

        wait_for(up, "the MLflow UI", timeout=120, every=0.3)
        names = sorted(set(trial_names(results / "mlflow.db")))  # failed ones ran twice
        assert len(names) == 4
        with tempfile.TemporaryDirectory() as profile:
            started = time.monotonic()
            dom = subprocess.run(
                [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                 "--virtual-time-budget=20000", "--window-size=1600,1000", "--dump-dom", url],
                capture_output=True, text=True, timeout=120).stdout
        # a run name is a whole cell text; the swept keys and the metric are column headers
        missing = [n for n in names if f">{n}<" not in dom]
        missing += [h for h in ("width", "lr", "test_acc") if f">{h}<" not in dom]
        assert not missing, (f"not on the page after {time.monotonic() - started:.0f} s: "
                             f"{missing}")
        assert "launch " not in dom  # the launch run is filtered out, its trials listed flat
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        try:
            ui.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()

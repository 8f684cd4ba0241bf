"""Faults, with real processes: a worker node dies, the driver is SIGKILLed (at several points),
Ctrl-C, SIGTERM. Each time every trial must end up in trials.parquet exactly once, and nothing
that had finished may run again.

Kill points are found by polling (trials.parquet's row count, the trial actors among a node's
processes), never by sleeping, so the tests hold on a loaded machine. NaN / exception trials are
in test_sweep.py and a tracking server that is down in test_bad_input.py. About 3 min on 2
cores (7 sweep launches, a Ray start-up each).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import _processes, descendants, wait_for, write_spec
from mlflow.tracking import MlflowClient

from analysis import load
from sweeps.results import read_statuses

pytestmark = pytest.mark.slow


def spec(name: str, n_trials: int, epochs: int) -> dict:
    """Digits MLPs of about 0.05 s an epoch on an idle core: `epochs` sets the kill window."""
    return {"name": name, "experiment": "classify",
            "base": {"dataset": "digits", "model": "mlp", "n_train": 1000, "batch_size": 50,
                     "epochs": epochs},
            "grid": {"width": [8, 16, 24, 32, 48, 64, 96][:n_trials]}, "seeds": 1,
            "resources": {"cpu": 1}}


CORE = ("raylet/raylet ", "gcs_server ", "ImplicitFunc")  # command lines of a local Ray's core


def n_rows(sweep_dir: Path) -> int:
    """Trials recorded so far: trials.parquet plus the parts appended since its compaction."""
    return len(read_statuses(sweep_dir))


class Cli:
    """`sam-lab sweep` running in the background, in its own process group as a shell job."""

    running: list[Cli] = []  # stopped after each test, whatever happened (see `_cleanup`)

    def __init__(self, work: Path, *args: str, env: dict | None = None):
        self.work, self.n = work, len(list(work.glob("out-*.txt")))
        self.out, self.err = work / f"out-{self.n}.txt", work / f"err-{self.n}.txt"
        script = Path(sys.executable).with_name("sam-lab")
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [str(script), "sweep", *args], cwd=work, stdout=out, stderr=err,
                env={**(env or os.environ), "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        Cli.running.append(self)

    def trial_actors(self) -> list[int]:
        table = _processes()
        return [p for p in descendants(self.proc.pid, table)
                if "ImplicitFunc.train" in table[p][1]]

    def wait(self, timeout: float = 300) -> SimpleNamespace:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return SimpleNamespace(returncode=code, stdout=self.out.read_text(),
                               stderr=self.err.read_text())

    def sigkill(self) -> SimpleNamespace:
        """SIGKILL the driver alone, as the OOM killer would. Its local Ray (GCS, raylet and the
        trials on it) must die with it; Ray's agents take a minute or two to notice, so those
        are killed here."""
        table = _processes()
        ray = descendants(self.proc.pid, table)
        core = [p for p in ray if any(k in table[p][1] for k in CORE)]
        assert core, "no local Ray under the driver"
        self.proc.kill()
        done = self.wait()
        try:
            wait_for(lambda: not [p for p in core if p in _processes()],
                     "the dead driver's Ray and trials to exit", timeout=120)
        finally:
            _kill(ray)  # ours either way; never leave them running
        return done


def _kill(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(autouse=True)
def _cleanup():
    """A sweep still running when its test ends (a failed assertion) goes, with its local Ray."""
    yield
    while Cli.running:
        cli = Cli.running.pop()
        if cli.proc.poll() is None:
            _kill([*descendants(cli.proc.pid), cli.proc.pid])
            cli.proc.wait()


def mlflow_runs(results: Path, name: str) -> list:
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def finished_state(sweep_dir: Path) -> dict:
    """trial_id -> (wall_s, curve file mtime): changes if a finished trial runs again."""
    trials = load.trials(sweep_dir, latest=False)
    if trials.empty:
        return {}
    return {t: (w, (sweep_dir / "curves" / f"{t}.parquet").stat().st_mtime_ns)
            for t, w in zip(trials.trial_id, trials.wall_s)}


def test_worker_node_killed_mid_sweep_trials_are_retried_and_recorded_once(tmp_path, ray_nodes):
    write_spec(tmp_path, spec("lost", 4, epochs=60), "lost.yaml")
    sweep_dir = tmp_path / "results" / "lost"
    worker = ray_nodes.node_id("worker")
    cli = Cli(tmp_path, "lost.yaml", "--address", ray_nodes.address, env=ray_nodes.env)
    # A trial training on the worker (its actor in train()), none of its trials recorded yet.
    raylet = ray_nodes._raylet("worker")[0]

    def worker_busy():
        table = _processes()
        on_worker = [p for p in descendants(raylet, table) if "ImplicitFunc.train" in table[p][1]]
        recorded = load.trials(sweep_dir, latest=False).get("node", pd.Series()).tolist()
        return on_worker and worker not in recorded

    wait_for(worker_busy, "a trial running on the worker node")
    ray_nodes.kill_node("worker")
    done = cli.wait()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "retry  " in done.stdout and "worker lost" in done.stdout

    trials = pd.read_parquet(sweep_dir / "trials.parquet")
    assert len(trials) == 4 and trials.trial_id.is_unique and (trials.status == "ok").all()
    assert (trials.node == ray_nodes.node_id("head")).sum() >= 3  # the retry ran on the head
    runs = [r for r in mlflow_runs(tmp_path / "results", "lost") if r.data.tags["kind"] == "trial"]
    finished = [r.data.tags["trial_id"] for r in runs if r.info.status == "FINISHED"]
    assert sorted(finished) == sorted(trials.trial_id)  # one FINISHED run per trial
    assert any(r.info.status == "KILLED" and "worker lost" in r.data.tags.get("error", "")
               for r in runs)  # the lost attempt


def test_driver_sigkilled_at_several_points_then_rerun_loses_and_repeats_nothing(tmp_path):
    write_spec(tmp_path, spec("killed", 7, epochs=60), "killed.yaml")
    results, sweep_dir = tmp_path / "results", tmp_path / "results" / "killed"
    args = ("killed.yaml", "--max-concurrent", "2")
    finished, left_open = {}, {}  # left_open: run_id -> it was a trial recorded in Parquet
    # Kill points: trials in flight and none finished, then 1 more finished, then 2 more
    # (0, 1 and 3 in all when each kill is prompt).
    for more in (0, 1, 2):
        what = f"{more} more finished trials" if more else "trials in flight"
        cli = Cli(tmp_path, *args)
        if more:
            reached = lambda: n_rows(sweep_dir) >= len(finished) + more  # noqa: B023, E731
        else:
            reached = cli.trial_actors
        wait_for(lambda: reached() or cli.proc.poll() is not None, what)  # noqa: B023
        assert cli.proc.poll() is None, f"the sweep ended before the kill point ({what})"
        died = cli.sigkill()
        assert died.returncode == -signal.SIGKILL
        if finished:
            assert f"skipping {len(finished)} finished trials" in died.stdout
        state = finished_state(sweep_dir)
        assert {t: state[t] for t in finished} == finished, "a finished trial ran again"
        finished = state
        running = {r.info.run_id: r.data.tags.get("trial_id") in state
                   for r in mlflow_runs(results, "killed") if r.info.status == "RUNNING"}
        assert running, f"the dead driver left no RUNNING run ({what})"
        left_open |= running

    last = Cli(tmp_path, *args).wait()
    assert last.returncode == 0, last.stdout + last.stderr
    assert f"skipping {len(finished)} finished trials" in last.stdout
    assert "MLflow runs left RUNNING by an earlier driver as KILLED" in last.stdout
    state = finished_state(sweep_dir)
    assert {t: state[t] for t in finished} == finished, "a finished trial ran again"
    trials = pd.read_parquet(sweep_dir / "trials.parquet")
    assert len(trials) == 7 and trials.trial_id.is_unique and (trials.status == "ok").all()

    runs = {r.info.run_id: r for r in mlflow_runs(results, "killed")}
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]
    # Left open: KILLED, unless its trial had reached trials.parquet: then closed FINISHED if
    # its final status had reached MLflow too, else KILLED and logged again from Parquet (sync).
    assert {runs[r].info.status for r, done in left_open.items() if not done} == {"KILLED"}
    assert {runs[r].info.status for r, done in left_open.items() if done} <= {"FINISHED",
                                                                               "KILLED"}
    trial_runs = [r for r in runs.values() if r.data.tags["kind"] == "trial"]
    finished_ids = [r.data.tags["trial_id"] for r in trial_runs if r.info.status == "FINISHED"]
    assert sorted(finished_ids) == sorted(trials.trial_id)  # exactly one FINISHED per trial


def _one_resume_line(stderr: str, argv: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("interrupted:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].endswith(f"resume with: sam-lab sweep {argv}")
    return lines[0]


def test_ctrl_c_then_sigterm_stop_gracefully_keeping_finished_trials(tmp_path):
    write_spec(tmp_path, spec("stopped", 6, epochs=60), "stopped.yaml")
    results, sweep_dir = tmp_path / "results", tmp_path / "results" / "stopped"
    args = ("stopped.yaml", "--max-concurrent", "2")

    # Ctrl-C in a terminal: SIGINT to the whole foreground process group.
    cli = Cli(tmp_path, *args)
    wait_for(lambda: n_rows(sweep_dir) >= 1 or cli.proc.poll() is not None, "a finished trial")
    assert cli.proc.poll() is None, "the sweep ended before Ctrl-C"
    # Exposure, while Ray runs: the local Ray the CLI starts has no dashboard on a public address.
    table = _processes()
    dashboards = [table[p][1] for p in descendants(cli.proc.pid, table)
                  if "dashboard/dashboard.py" in table[p][1]]
    assert all("--host=127.0.0.1 " in cmd for cmd in dashboards), dashboards
    os.killpg(cli.proc.pid, signal.SIGINT)
    stopped = cli.wait()
    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    _one_resume_line(stopped.stderr, " ".join(args))
    saved = finished_state(sweep_dir)
    assert 1 <= len(saved) < 6
    runs = mlflow_runs(results, "stopped")
    assert not [r for r in runs if r.info.status == "RUNNING"]  # in-flight trials: KILLED
    assert [r.info.status for r in runs if r.data.tags["kind"] == "launch"] == ["KILLED"]

    # Resumed, then SIGTERM (kill, a batch scheduler) to the driver alone: the same stop.
    cli = Cli(tmp_path, *args)
    wait_for(lambda: n_rows(sweep_dir) > len(saved) or cli.proc.poll() is not None,
             "one more finished trial")
    assert cli.proc.poll() is None, "the sweep ended before SIGTERM"
    cli.proc.terminate()
    stopped = cli.wait()
    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    assert f"skipping {len(saved)} finished trials" in stopped.stdout
    _one_resume_line(stopped.stderr, " ".join(args))
    state = finished_state(sweep_dir)
    assert {t: state[t] for t in saved} == saved and len(state) > len(saved)
    assert not [r for r in mlflow_runs(results, "stopped") if r.info.status == "RUNNING"]


def test_runs_a_dead_driver_left_open_close_by_what_reached_parquet(tmp_path):
    """The kill window a poll cannot hit: between a trial's Parquet row and its run's end."""
    from sweeps import spec as specs
    from sweeps.tracking import Tracker

    trials = specs.load(write_spec(tmp_path, spec("window", 3, epochs=1))).trials
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    dead = Tracker(uri, "window", tmp_path / "window")
    dead.open_launch({"experiment": "classify", "trial_ids": [], "seeds": [0], "grid": {}}, 3, 0)
    for t in trials:
        dead.start_trial(t.trial_id, t.label, t.config)
    row = {"status": "ok", "node": "n", "error": None, "wall_s": 1.0, "step": 5}
    dead.log_final(trials[0].trial_id, row, {}, None, [])  # then its Parquet row; then SIGKILL
    dead.log_final(trials[1].trial_id, row, {}, None, [])  # SIGKILL before its Parquet row
    # trials[2]: an earlier attempt failed (in Parquet), this one (--rerun-failed) was in flight
    recorded = {trials[0].trial_id: "ok", trials[2].trial_id: "failed"}

    other = Tracker(uri, "window", tmp_path / "elsewhere")  # same server, other results root
    assert other.close_stale(recorded) == (0, 0)  # not its runs: it never closes them
    assert Tracker(uri, "window", tmp_path / "window").close_stale(recorded) == (3, 1)  # launch + 2 killed, 1 closed
    runs = {r.data.tags.get("trial_id", "launch"): r.info.status
            for r in mlflow_runs(tmp_path, "window")}
    assert runs == {trials[0].trial_id: "FINISHED", trials[1].trial_id: "KILLED",
                    trials[2].trial_id: "KILLED", "launch": "KILLED"}


def _mlflow_server(db: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--artifacts-destination", str(db.parent / "artifacts")],
        cwd=db.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    wait_for(lambda: _healthy(port) or server.poll() is not None, "mlflow server to answer")
    assert server.poll() is None, "mlflow server did not start"
    return server


def _healthy(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def _stop(server: subprocess.Popen):
    _kill([*descendants(server.pid), server.pid])
    server.wait()


def test_an_mlflow_server_gone_mid_sweep_costs_no_trial_and_sync_restores_its_runs(tmp_path):
    from conftest import free_port, sam_lab

    port, db = free_port(), tmp_path / "server" / "mlflow.db"
    db.parent.mkdir()
    uri = f"http://127.0.0.1:{port}"
    write_spec(tmp_path, spec("outage", 4, epochs=60), "outage.yaml")
    sweep_dir = tmp_path / "results" / "outage"
    server = _mlflow_server(db, port)
    try:
        cli = Cli(tmp_path, "outage.yaml", "--tracking-uri", uri, "--max-concurrent", "2")
        wait_for(lambda: n_rows(sweep_dir) >= 1 or cli.proc.poll() is not None, "a trial")
        _stop(server)  # the server goes away with trials in flight
        done = cli.wait()
        assert done.returncode == 0, done.stdout + done.stderr
        assert "sam-lab sync" in done.stdout
        trials = pd.read_parquet(sweep_dir / "trials.parquet")
        assert len(trials) == 4 and (trials.status == "ok").all()  # no trial lost to it

        server = _mlflow_server(db, port)  # back
        synced = sam_lab("sync", str(sweep_dir), "--tracking-uri", uri, cwd=tmp_path)
        assert synced.returncode == 0, synced.stdout + synced.stderr
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("outage").experiment_id],
                                  "tags.kind = 'trial'", max_results=1000)
        finished = sorted(r.data.tags["trial_id"] for r in runs if r.info.status == "FINISHED")
        assert finished == sorted(trials.trial_id)  # one FINISHED run per trial
        assert not [r for r in runs if r.info.status == "RUNNING"]
    finally:
        _stop(server)

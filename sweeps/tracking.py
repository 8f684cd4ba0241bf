"""MLflow bookkeeping, on the driver only: workers never need tracking access.

One MLflow experiment per sweep name; per launch a parent run (kind=launch) and, nested under
it, one run per trial (kind=trial), created when the trial starts so the dashboard shows it live.
params = the trial's config; curve rows arrive in batches (at most one a second per trial) and
each batch is one `log_batch` call, every value with its `step`; tags
trial_id, sweep, status. Runs end FINISHED (ok), FAILED (failed) or KILLED (worker lost and
retried, driver interrupted, or left RUNNING by a driver that died: fixed on the next launch).
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.tracking import MlflowClient

from sweeps.spec import InputError

TAG_LIMIT = 4000  # MLflow caps tag values; errors and tracebacks are cut to this
_END = {"ok": "FINISHED", "failed": "FAILED"}  # trial status -> MLflow run status
for _name in ("mlflow", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class TrackingError(InputError):
    """The tracking store cannot be used."""


def default_uri(results: Path) -> str:
    return f"sqlite:///{(Path(results) / 'mlflow.db').resolve()}"


def check_reachable(uri: str, timeout: float = 5.0):
    """A tracking server must answer before any trial runs (SQLite needs no check)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as reply:
            if reply.status != 200:
                raise TrackingError(f"--tracking-uri {uri}: /health answered {reply.status}")
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(f"--tracking-uri {uri}: tracking server unreachable ({reason}); "
                            "start it (mlflow server) or drop the flag for the local "
                            "SQLite store") from None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=artifact_location)
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _runs(client: MlflowClient, experiment_id: str, filter_string: str):
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, ViewType.ACTIVE_ONLY,
                                  max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


class Tracker:
    def __init__(self, uri: str, sweep: str, artifact_location: str | None = None):
        self.client = MlflowClient(tracking_uri=uri)
        self.sweep = sweep
        try:
            self.experiment_id = _experiment_id(self.client, sweep, artifact_location)
        except Exception as e:  # a broken store: say which, before any trial runs
            raise TrackingError(f"--tracking-uri {uri}: {type(e).__name__}: {e}") from None
        self.parent = None
        self.open = {}  # trial_id -> run_id of trials in flight

    def close_stale(self, recorded: dict[str, str]) -> tuple[int, int]:
        """Close the runs left RUNNING by a driver that died (SIGKILL, node loss).

        A trial run whose final status is logged and matches trials.parquet (`recorded`:
        trial_id -> status) died between the Parquet write and its end: its trial will not run
        again, so it ends FINISHED / FAILED. Every other one becomes KILLED. Returns
        (killed, finished).
        """
        stale = list(_runs(self.client, self.experiment_id, "attributes.status = 'RUNNING'"))
        finished = 0
        for run in stale:
            tags = run.data.tags
            status = tags.get("status")
            if tags.get("kind") == "trial" and status in ("ok", "failed") \
                    and recorded.get(tags.get("trial_id")) == status:
                self.client.set_terminated(run.info.run_id, _END[status])
                finished += 1
            else:
                self.client.set_tag(run.info.run_id, "status", "killed")
                self.client.set_terminated(run.info.run_id, "KILLED")
        return len(stale) - finished, finished

    def open_launch(self, resolved: dict, n_run: int, n_skipped: int):
        run = self.client.create_run(
            self.experiment_id, run_name=f"launch {time.strftime('%Y-%m-%d %H:%M:%S')}",
            tags={"kind": "launch", "sweep": self.sweep, "status": "running"})
        self.parent = run.info.run_id
        params = {"experiment": resolved["experiment"], "trials": len(resolved["trial_ids"]),
                  "run": n_run, "skipped": n_skipped, "seeds": resolved["seeds"],
                  "grid_keys": ",".join(resolved["grid"])}
        self.client.log_batch(self.parent, params=[Param(k, str(v)) for k, v in params.items()])
        self.client.log_dict(self.parent, resolved, "spec.yaml")

    def start_trial(self, trial):
        run = self.client.create_run(
            self.experiment_id, run_name=trial.label,
            tags={"mlflow.parentRunId": self.parent, "kind": "trial", "sweep": self.sweep,
                  "trial_id": trial.trial_id, "status": "running"})
        params = [Param(k, str(v)) for k, v in trial.config.items()]
        for i in range(0, len(params), 100):  # log_batch takes at most 100 params
            self.client.log_batch(run.info.run_id, params=params[i:i + 100])
        self.open[trial.trial_id] = run.info.run_id

    def log_rows(self, trial_id: str, rows: list[dict]):
        """Curve rows as stepped metrics, in as few log_batch calls as MLflow allows."""
        ts = _now_ms()
        metrics = [Metric(k, float(v), ts, row["step"]) for row in rows for k, v in row.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
            self.client.log_batch(self.open[trial_id], metrics=metrics[i:i + 1000])

    def log_final(self, trial_id: str, row: dict, summary: dict, traceback: str | None):
        """A trial's final row (status, error, wall_s, node) and summary; the run stays RUNNING
        until `end_trial`, which comes after the row is in Parquet (see `close_stale`)."""
        ts, step = _now_ms(), row.get("step") or 0
        numbers = {"wall_s": row["wall_s"]} | {
            k: v for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
        texts = {"status": row["status"], "node": row["node"], "error": row["error"],
                 "traceback": traceback} | {
            k: v for k, v in summary.items() if k not in numbers}
        self.client.log_batch(
            self.open[trial_id],
            metrics=[Metric(k, float(v), ts, step) for k, v in numbers.items()],
            tags=[RunTag(k, str(v)[-TAG_LIMIT:]) for k, v in texts.items() if v is not None])

    def end_trial(self, trial_id: str, status: str):
        self.client.set_terminated(self.open.pop(trial_id), _END[status])

    def kill_trial(self, trial_id: str, reason: str):
        run_id = self.open.pop(trial_id, None)
        if run_id is not None:
            self.client.log_batch(run_id, tags=[RunTag("status", "killed"),
                                                RunTag("error", reason[-TAG_LIMIT:])])
            self.client.set_terminated(run_id, "KILLED")

    def close_launch(self, status: str):
        """status: FINISHED or KILLED; trials still in flight are KILLED with it."""
        for trial_id in list(self.open):
            self.kill_trial(trial_id, "driver stopped before the trial finished")
        if self.parent is not None:
            self.client.set_tag(self.parent, "status", status.lower())
            self.client.set_terminated(self.parent, status)
            self.parent = None


def log_figures(uri: str, sweep: str, paths: list[Path]) -> str | None:
    """Attach figures to the sweep's latest launch run; returns its run id (None if no launch)."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(sweep)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'launch'", max_results=1,
                              order_by=["attributes.start_time DESC"])
    if not runs:
        return None
    for path in paths:
        for sibling in sorted(Path(path).parent.glob(Path(path).stem + ".*")):  # PNG and SVG
            client.log_artifact(runs[0].info.run_id, str(sibling), artifact_path="figures")
    return runs[0].info.run_id


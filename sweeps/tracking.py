"""MLflow bookkeeping, on the driver only, best-effort: workers never need tracking access, and an
MLflow store that is slow or gone never stops or slows a trial.

One MLflow experiment per sweep name; per launch a parent run (kind=launch) and, nested under
it, one run per trial (kind=trial), created when the trial starts so the dashboard shows it live.
params = the trial's config; when the trial ends, its curve (at most CURVE_POINTS points per
metric: Parquet keeps every point) and its final values in `log_batch` calls; tags trial_id,
sweep, sweep_dir, status, code_version. Runs end FINISHED (ok), FAILED (failed) or KILLED (lost,
worker lost and retried, driver interrupted, or left RUNNING by a driver that died: fixed on the
next launch).

`Background` runs these calls on one thread behind a bounded queue, retrying each a few times.
A trial whose calls could not all be made is left to `sync`, which (re)builds the runs of every
trial recorded in Parquet that has no ended run with its status; the next launch calls it, and
so does `sam-lab sync RESULTS/NAME` (e.g. for results copied off a cluster).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sweeps.preflight import sqlite_path
from sweeps.spec import InputError

if TYPE_CHECKING:  # MLflow is imported where it is used: `sam-lab sweep` loads it on a thread
    from mlflow.tracking import MlflowClient

# MLflow's REST client retries a dead server for minutes by default; Background retries itself.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

TAG_LIMIT = 4000  # MLflow caps tag values; errors and tracebacks are cut to this
CURVE_POINTS = 200  # per metric, sent to MLflow
END = {"ok": "FINISHED", "failed": "FAILED", "lost": "KILLED"}  # trial status -> run status
# Curve keys kept in Parquet but not sent as MLflow metrics: `epoch` is the step axis and `lr` a
# config value (a param); as metrics they became the first charts of the UI's Compare view.
NOT_METRICS = {"step", "epoch", "lr"}
# The dashboard: the UI applies the experiment tag mlflow.sharedViewState.<key> when the URL
# carries viewStateShareKey=<key> (MLflow 3.17; see docs/dashboard.md).
VIEW_KEY = "samlab"
MAIN_METRICS = ("test_acc",)  # every family's trials end with it
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


def empty_store() -> Path | None:
    """An empty SQLite store of this MLflow version, made once under the user's cache folder
    (XDG_CACHE_HOME): a new store is a copy of it, not a run of MLflow's schema migrations.
    Its Default experiment is removed, so MLflow makes it in each copy as in a new store.
    None where no cache can be kept."""
    import mlflow
    from mlflow.tracking import MlflowClient

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sam-lab"
    path = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if path.exists():
        return path
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            db = Path(tmp) / "mlflow.db"
            MlflowClient(tracking_uri=f"sqlite:///{db}")  # migrates the new file
            with contextlib.closing(sqlite3.connect(db)) as con, con:
                con.execute("DELETE FROM experiments WHERE experiment_id = 0")
            _fsync(db)
            os.replace(db, path)
    except Exception:  # noqa: BLE001 - only a shortcut: MLflow makes the store itself
        return None
    return path


def seed_store(db: Path):
    """Start a new SQLite store at `db` as a copy of `empty_store()`. The copy is linked in, so
    it never replaces a store another process made meanwhile; on any failure MLflow makes it."""
    empty = empty_store()
    if empty is None:
        return
    tmp = db.with_name(f".{db.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(empty, tmp)
        _fsync(tmp)
        os.link(tmp, db)
    except OSError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def downsample(curve: list[dict], points: int = CURVE_POINTS) -> list[dict]:
    """At most `points` rows, evenly spread, first and last kept."""
    if len(curve) <= points:
        return curve
    last = len(curve) - 1
    keep = sorted({round(i * last / (points - 1)) for i in range(points)})
    return [curve[i] for i in keep]


def view_state(swept: list[str], metrics=MAIN_METRICS) -> dict:
    """The runs table as a sweep reads best: trials only (no launch runs), flat and sorted by the
    first metric (a sort or a filter stops the UI from nesting them under a collapsed launch
    run), with the metrics, swept keys and status as columns."""
    metric_cols = [f"metrics.`{m}`" for m in metrics]
    param_cols = [f"params.`{k}`" for k in swept]
    return {"searchFilter": "tags.kind = 'trial'", "orderByKey": metric_cols[0],
            "orderByAsc": False, "selectedColumns": [*metric_cols, *param_cols, "tags.`status`"],
            # the UI applies columnWidths only together with a non-empty columnOrder
            "columnOrder": ["attributes.`Run Name`", *metric_cols, *param_cols, "tags.`status`"],
            "columnWidths": {"attributes.`Run Name`": 220, **{c: 120 for c in metric_cols}},
            "runsHiddenMode": "SHOW_ALL"}  # charts: every trial, not the first 10


def experiment_tags(description: str, swept: list[str]) -> dict[str, str]:
    """The spec's description (shown under the experiment's title) and the shared view, in the
    UI's saved-view envelope so it is also listed under "Views"."""
    now = _now_ms()
    view = {"name": "sam-lab sweep", "createdAt": now, "updatedAt": now,
            "state": json.dumps(view_state(swept))}
    return {"mlflow.note.content": description or "",
            "mlflow.experimentKind": "custom_model_development",
            f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps(view)}


def dashboard_url(host: str, port: int, experiment_id: str) -> str:
    """The sweep's runs table: `/runs` (the bare experiment route drops the share key) in the
    model-training view (without workflowType the UI opens the GenAI overview)."""
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    host = f"[{host}]" if ":" in host else host
    return (f"http://{host}:{port}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}")


def drop_default_experiment(client: MlflowClient):
    """Soft-delete the empty "Default" experiment (sam-lab never logs to it). The store re-creates
    id 0 only when it is missing altogether, so it stays gone; one with runs is kept."""
    exp = client.get_experiment("0")
    if exp is not None and exp.lifecycle_stage == "active" \
            and not client.search_runs(["0"], max_results=1):
        client.delete_experiment("0")


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=artifact_location)
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _runs(client: MlflowClient, experiment_id: str, filter_string: str):
    from mlflow.entities import ViewType

    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, ViewType.ACTIVE_ONLY,
                                  max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


class Tracker:
    """The MLflow calls of one sweep folder, made synchronously (see `Background`).

    `sweep_dir` keys the runs: `close_stale` only touches runs of this folder, which the CLI's
    lock guards, so two results roots sharing one server never close each other's runs."""

    def __init__(self, uri: str, sweep: str, sweep_dir: Path, artifact_location: str | None = None,
                 code_version: str = ""):
        from mlflow.tracking import MlflowClient

        path = sqlite_path(uri)
        if path is not None and not path.exists():
            seed_store(path)
        self.client = MlflowClient(tracking_uri=uri)
        self.sweep, self.sweep_dir = sweep, str(Path(sweep_dir).resolve())
        self.code_version = code_version
        try:
            self.experiment_id = _experiment_id(self.client, sweep, artifact_location)
            if uri.startswith("sqlite:"):  # sam-lab's own store, not a shared server's
                drop_default_experiment(self.client)
        except Exception as e:  # a broken store: say which, before any trial runs
            raise TrackingError(f"--tracking-uri {uri}: {type(e).__name__}: {e}") from None
        self.parent = None
        self.open = {}  # trial_id -> run_id of trials in flight

    def _ours(self, run) -> bool:  # runs from before the sweep_dir tag count as ours
        return run.data.tags.get("sweep_dir", self.sweep_dir) == self.sweep_dir

    def close_stale(self, recorded: dict[str, str]) -> tuple[int, int]:
        """Close the runs of this sweep folder left RUNNING by a driver that died.

        A trial run whose final status is logged and matches trials.parquet (`recorded`:
        trial_id -> status) died between the Parquet write and its end: it ends as its status
        says. Every other one becomes KILLED. Returns (killed, closed)."""
        stale = [r for r in _runs(self.client, self.experiment_id, "attributes.status = 'RUNNING'")
                 if self._ours(r)]
        closed = 0
        for run in stale:
            tags = run.data.tags
            status = tags.get("status")
            if tags.get("kind") == "trial" and status in END \
                    and recorded.get(tags.get("trial_id")) == status:
                self.client.set_terminated(run.info.run_id, END[status])
                closed += 1
            else:
                self.client.set_tag(run.info.run_id, "status", "killed")
                self.client.set_terminated(run.info.run_id, "KILLED")
        return len(stale) - closed, closed

    def open_launch(self, resolved: dict, n_run: int, n_skipped: int, kind: str = "launch"):
        run = self.client.create_run(
            self.experiment_id, run_name=f"{kind} {time.strftime('%Y-%m-%d %H:%M:%S')}",
            tags={"kind": kind, "sweep": self.sweep, "sweep_dir": self.sweep_dir,
                  "status": "running", "code_version": self.code_version})
        self.parent = run.info.run_id
        if kind == "launch":  # the latest spec's description and swept keys
            for key, value in experiment_tags(resolved.get("description"),
                                              list(resolved["grid"])).items():
                self.client.set_experiment_tag(self.experiment_id, key, value)
        params = {"experiment": resolved["experiment"], "trials": len(resolved["trial_ids"]),
                  "run": n_run, "skipped": n_skipped, "seeds": resolved["seeds"],
                  "grid_keys": ",".join(resolved["grid"])}
        from mlflow.entities import Param

        self.client.log_batch(self.parent, params=[Param(k, str(v)[:6000])
                                                   for k, v in params.items()])
        # the spec without its trial ids: those are in RESULTS/NAME/spec.yaml
        self.client.log_dict(self.parent, {k: v for k, v in resolved.items() if k != "trial_ids"},
                             "spec.yaml")

    def start_trial(self, trial_id: str, label: str, config: dict,
                    code_version: str | None = None):
        run = self.client.create_run(
            self.experiment_id, run_name=label,
            tags={"mlflow.parentRunId": self.parent, "kind": "trial", "sweep": self.sweep,
                  "sweep_dir": self.sweep_dir, "trial_id": trial_id, "status": "running",
                  "code_version": code_version or self.code_version})
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in config.items()]
        self.client.log_batch(run.info.run_id, params=params)  # chunked by MLflow itself
        self.open[trial_id] = run.info.run_id

    def log_final(self, trial_id: str, row: dict, summary: dict, traceback: str | None,
                  curve: list[dict]):
        """A trial's curve (downsampled), final row (status, error, wall_s, node) and summary;
        the run stays RUNNING until `end_trial`, which comes after the row is in Parquet (see
        `close_stale`)."""
        from mlflow.entities import Metric, RunTag

        if trial_id not in self.open:  # its run could not be created: `sync` makes it
            return
        ts, step = _now_ms(), row.get("step") or 0
        metrics = [Metric(k, float(v), ts, r["step"]) for r in downsample(curve)
                   for k, v in r.items() if k not in NOT_METRICS and _number(v)]
        numbers = {"wall_s": row["wall_s"]} | {k: v for k, v in summary.items()
                                               if _number(v) and k not in NOT_METRICS}
        metrics += [Metric(k, float(v), ts, step) for k, v in numbers.items()]
        texts = {"status": row["status"], "node": row["node"], "error": row["error"],
                 "traceback": traceback} | {k: v for k, v in summary.items() if not _number(v)}
        self.client.log_batch(self.open[trial_id], metrics=metrics,
                              tags=[RunTag(k, str(v)[-TAG_LIMIT:]) for k, v in texts.items()
                                    if v is not None])

    def end_trial(self, trial_id: str, status: str):
        if trial_id in self.open:
            self.client.set_terminated(self.open.pop(trial_id), END[status])

    def kill_trial(self, trial_id: str, reason: str):
        from mlflow.entities import RunTag

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

    def logged(self) -> dict[str, set[str]]:
        """{trial_id: statuses of its ended runs} over every trial run of the experiment."""
        out: dict[str, set[str]] = {}
        for run in _runs(self.client, self.experiment_id, "tags.kind = 'trial'"):
            if run.info.status != "RUNNING":
                out.setdefault(run.data.tags.get("trial_id"), set()).add(
                    run.data.tags.get("status"))
        return out


# ----------------------------------------------------------------------------- best-effort


class Background:
    """Tracker calls on one thread: `submit(method, trial_id, *args)` never blocks.

    Each call is tried up to RETRIES times. When one still fails, or the queue is full, the
    trial it belongs to is given up on (its later calls are skipped; `sync` rebuilds its run)
    and the store is left alone for DOWN_S seconds: an outage costs no trial any time."""

    RETRIES, BACKOFF_S, DOWN_S, QUEUE = 3, (1.0, 3.0), 30.0, 10_000

    def __init__(self, tracker: Tracker | Callable[[], Tracker], say=print):
        """tracker: a Tracker, or a function that makes one, called first on the thread: MLflow's
        import and a new store's set-up then overlap the caller's work (Ray's start). `ready()`
        waits for it; calls submitted before are queued."""
        self.make = tracker if not isinstance(tracker, Tracker) else None
        self.tracker = tracker if self.make is None else None
        self.error: Exception | None = None  # why the tracker could not be made
        self.made = threading.Event()
        self.say = say
        self.queue: queue.Queue = queue.Queue(self.QUEUE)
        self.given_up: set[str | None] = set()
        self.down_until = 0.0
        self.failures = 0
        self.thread = threading.Thread(target=self._loop, name="sam-lab-mlflow", daemon=True)
        self.thread.start()

    def ready(self) -> Tracker:
        """The tracker, once made; the error that stopped its making is raised here."""
        self.made.wait()
        if self.error is not None:
            raise self.error
        return self.tracker

    def submit(self, method, trial_id: str | None, *args):
        """method: a Tracker method's name, or any callable (called with args)."""
        try:
            self.queue.put_nowait((method, trial_id, args))
        except queue.Full:
            self._give_up(trial_id)

    def close(self):
        """Wait until everything submitted is done or given up on; Ctrl-C stops waiting, and
        what was not logged is left to `sam-lab sync` (or the next launch)."""
        if self.queue.qsize() > 100:  # tiny trials can finish faster than a store logs them
            self.say(f"MLflow: logging {self.queue.qsize()} queued calls (Ctrl-C leaves them "
                     "to `sam-lab sync`)")
        self.queue.put(None)
        try:
            while self.thread.is_alive():
                self.thread.join(0.5)
        except KeyboardInterrupt:
            self.say("MLflow: stopped logging; `sam-lab sync` will log what is missing")

    def _give_up(self, trial_id):
        self.failures += 1
        if trial_id is not None:
            self.given_up.add(trial_id)

    def _loop(self):
        if self.make is not None:
            try:
                self.tracker = self.make()
            except Exception as e:  # noqa: BLE001 - `ready()` raises it on the caller's thread
                self.error = e
        self.made.set()
        while (item := self.queue.get()) is not None:
            method, trial_id, args = item
            if self.error is not None:  # no store: `ready()` has stopped the sweep
                continue
            if trial_id in self.given_up and method != "kill_trial":
                continue
            if time.monotonic() < self.down_until:
                self._give_up(trial_id)
                continue
            for attempt in range(self.RETRIES):
                try:
                    call = method if callable(method) else getattr(self.tracker, method)
                    call(*args)
                    break
                except Exception as e:  # noqa: BLE001 - any MLflow failure is survivable
                    if attempt == self.RETRIES - 1:
                        self._give_up(trial_id)
                        self.down_until = time.monotonic() + self.DOWN_S
                        name = getattr(method, "__name__", method)
                        self.say(f"MLflow: {name} failed ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:200] if str(e) else ''}); "
                                 "`sam-lab sync` will log what is missing")
                    else:
                        time.sleep(self.BACKOFF_S[min(attempt, len(self.BACKOFF_S) - 1)])


# ----------------------------------------------------------------------------- sync


def sync(tracker: Tracker, trials: list[dict], config_keys: list[str], curve_of, say=print
         ) -> int:
    """Log every trial of `trials` (Parquet rows) that has no ended run with its status, under
    one parent run (kind=sync); returns how many. `curve_of(trial_id)` gives its curve rows."""
    logged = tracker.logged()
    missing = [r for r in trials if r["status"] not in logged.get(r["trial_id"], ())]
    if not missing:
        return 0
    tracker.open_launch({"experiment": missing[0]["experiment"], "trial_ids": [],
                         "seeds": sorted({r["seed"] for r in missing}), "grid": {}},
                        len(missing), 0, kind="sync")
    skip = {"trial_id", "sweep", "experiment", "status", "error", "node", "code_version",
            "wall_s", *config_keys}
    for row in missing:
        tid = row["trial_id"]
        config = {k: row[k] for k in config_keys if k in row}
        tracker.start_trial(tid, f"{tid} (synced)", config, row.get("code_version"))
        curve = curve_of(tid)
        in_curve = {k for r in curve[-1:] for k in r}  # its last point is already the curve's
        summary = {k: v for k, v in row.items()
                   if k not in skip and k not in in_curve and v is not None}
        tracker.log_final(tid, row, summary, None, curve)
        tracker.end_trial(tid, row["status"])
    tracker.close_launch("FINISHED")
    say(f"MLflow: logged {len(missing)} trials recorded in Parquet but missing in MLflow")
    return len(missing)


def log_figures(uri: str, sweep: str, paths: list[Path]) -> str | None:
    """Attach figures to the sweep's latest launch run; returns its run id (None if no launch).
    A store whose artifacts live on a server that is not running (`mlflow-artifacts:/` in a
    copied mlflow.db) takes no figures: the figures stay on disk and the user is told."""
    if (local := _local_launch(uri, sweep)) is not None:
        run_id, folder = local
        try:
            _copy_figures(paths, folder / "figures")
        except OSError as e:
            print(f"figures not logged to MLflow (artifact store {folder}: {e})",
                  file=sys.stderr)
            return None
        return run_id
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(sweep)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'launch'", max_results=1,
                              order_by=["attributes.start_time DESC"])
    if not runs:
        return None
    try:
        for path in paths:
            for sibling in sorted(Path(path).parent.glob(Path(path).stem + ".*")):  # PNG, SVG
                client.log_artifact(runs[0].info.run_id, str(sibling), artifact_path="figures")
    except Exception as e:  # noqa: BLE001 - e.g. mlflow-artifacts:/ with no server
        print(f"figures not logged to MLflow (artifact store {exp.artifact_location}: "
              f"{type(e).__name__}: {str(e).splitlines()[0][:200]})", file=sys.stderr)
        return None
    return runs[0].info.run_id


def _local_launch(uri: str, sweep: str) -> tuple[str, Path] | None:
    """(run id, artifact folder) of the sweep's latest launch run when both the store and the
    run's artifacts are local files, read straight from SQLite: `sam-lab plot` then neither
    imports MLflow nor opens its store, and copies the figures where MLflow's local artifact
    repository puts them. None for anything else (MLflow's own client handles it)."""
    path = sqlite_path(uri)
    if path is None or not path.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True,
                                                timeout=2)) as con:
            row = con.execute(
                "SELECT r.run_uuid, r.artifact_uri FROM runs r "
                "JOIN experiments e ON e.experiment_id = r.experiment_id "
                "JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'kind' AND t.value = 'launch' "
                "WHERE e.name = ? AND r.lifecycle_stage = 'active' "
                "ORDER BY r.start_time DESC LIMIT 1", (sweep,)).fetchone()
    except sqlite3.Error:
        return None
    if row is None or not row[1]:
        return None
    location = urllib.parse.urlparse(row[1])
    if location.scheme == "file" and location.netloc in ("", "localhost"):
        return row[0], Path(urllib.request.url2pathname(location.path))
    if location.scheme == "" and Path(row[1]).is_absolute():
        return row[0], Path(row[1])
    return None


def _copy_figures(paths: list[Path], folder: Path):
    """Each figure's files (PNG, SVG) into `folder`, each written whole (temp + rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        for sibling in sorted(Path(path).parent.glob(Path(path).stem + ".*")):
            tmp = folder / f".{sibling.name}.{os.getpid()}.tmp"
            shutil.copyfile(sibling, tmp)
            os.replace(tmp, folder / sibling.name)

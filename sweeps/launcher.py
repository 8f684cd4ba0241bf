"""Run a sweep's trials on Ray Tune; the driver records each one as it finishes.

    connect(address)                      # local Ray sized to this machine, or join a cluster
    summary = run(spec, todo, results, tracker, max_concurrent=2)

Workers only train: `run_trial` wraps the family's `run` generator (or, for a spec with `pack`,
its `run_packed` over a unit of trials), reports rows per evaluation point, and turns an exception
raised by the science code into a final `failed` report, so a deterministic failure is recorded
once and never retried. Each Ray trial asks for the spec's CPUs and its unit's GPU share. A lost
worker or node, an actor that never starts and CUDA out of memory are infrastructure failures:
Tune restarts the trial up to `failure_retries` times, then it is recorded `lost`, and the next
launch runs it again.

State (sam_lab.state): a family whose `run` takes `state` and `checkpoint` hands out its training
state at safe points; every `checkpoint_s` seconds the worker reports it as a Tune checkpoint
with the rows so far, and a restarted trial goes on from its last one (`tune.get_checkpoint()`;
the driver keeps the curve rows that checkpoint covers, drops the rest and the MLflow run). With
`keep: final` the last report carries the final weights and state as a checkpoint, which the
driver copies to RESULTS/NAME/weights (sweeps.weights) before it records the trial. A trial that
extends a shorter finished one (sweeps.extend) starts from that one's kept state. Packed units
are not checkpointed; they keep each member's final weights (no training state to extend).

Tune gets its trials from `UnitFeeder`, one unit when it asks, so the driver's cost per trial
does not grow with the sweep. The driver-side `Recorder` callback hands each finished trial to
the Parquet writer and its MLflow calls to a background thread. Tune's own storage is a temp
folder (or --storage for a multi-node cluster, where checkpoints must be seen by every node),
deleted afterwards: trials.parquet (and the kept weights) is the only state a new launch needs.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no per-trial json/csv/tfevents
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: Tune prints nothing
# num_to_keep=1 makes Tune snapshot its experiment state after each checkpoint, and warn when
# that happens often (tiny checkpoint_s); the snapshot is what a checkpoint costs the driver.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.experiment import Trial  # noqa: E402
from ray.tune.schedulers import FIFOScheduler  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

from sam_lab import trials as families  # noqa: E402
from sweeps import weights  # noqa: E402
from sweeps.preflight import units_per_fit  # noqa: E402
from sweeps.spec import MIN_GPU_SHARE, InputError, gpu_share  # noqa: E402

# Our progress lines replace Tune's: its restore hints, interrupt warnings and tracebacks of lost
# workers would only confuse (resume is rerunning the command; errors land in trials.parquet).
# Ray 2.60 turns token auth on for a local start and says so on every launch; keep it, quietly.
for _name, _level in (("ray._private.authentication.authentication_token_setup", logging.ERROR),
                      ("ray.tune.tune", logging.CRITICAL),
                      ("ray.tune.execution.tune_controller", logging.CRITICAL),
                      ("ray.tune.analysis.experiment_analysis", logging.ERROR),
                      ("ray.tune.utils.util", logging.ERROR)):  # "callback took 0.8 s" on a busy box
    logging.getLogger(_name).setLevel(_level)


class LaunchError(InputError):
    """Ray cannot be used as asked (bad --address, resources this machine lacks)."""


# Ray 2.60 turns token auth on for a head started where a token exists (~/.ray/auth_token), but
# never sends a token to an explicit host:port unless told to; both ends then just time out.
AUTH_HINT = ("if the cluster uses token auth, set RAY_AUTH_MODE=token and its token "
             "(RAY_AUTH_TOKEN, or ~/.ray/auth_token)")


def connect(address: str | None, resources: dict) -> str:
    """Start or join Ray; returns a description of the cluster for the user."""
    if address is None:
        # "local": a new Ray of our own, never one found through RAY_ADDRESS or a `ray start` on
        # this machine (joining is --address). Ray sizes itself to the CPUs this process may use
        # (affinity, cgroup quota), which os.cpu_count() overstates in a container. No dashboard.
        # On 127.0.0.1 only when the CLI set Ray's single-node mode before importing it
        # (cli.loopback_ray); otherwise Ray turns a loopback node IP into the machine's.
        ray.init(address="local", include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
    else:  # the address was checked by the CLI (sam-lab refuses ray:// and unreachable heads)
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except ConnectionError as e:
            hint = "" if address == "auto" else f"; {AUTH_HINT}"
            raise LaunchError(f"--address {address}: {str(e).splitlines()[0]}{hint}") from None
    total = ray.cluster_resources()
    for key, name in (("cpu", "CPU"), ("gpu", "GPU")):
        need, have = resources[key], total.get(name, 0)
        need = MIN_GPU_SHARE if need == "auto" else need  # auto asks for at least this much
        if need > have and address is None:  # a cluster may still scale up; this machine won't
            ray.shutdown()
            raise LaunchError(f"resources.{key}: each trial asks for {need} but this machine "
                              f"has {have:g} {name}s; allowed: <= {have:g}")
    where = "local Ray" if address is None else f"Ray at {address}"
    return f"{where} ({total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs)"


def disconnect():
    if ray.is_initialized():
        ray.shutdown()


# ----------------------------------------------------------------------------- worker side


# tune.report blocks the trial until the driver has taken the result, so rows are sent in
# batches at most once a second: a fast loop (an eval every few ms) is not slowed by round trips.
REPORT_EVERY_S = 1.0


def _clean(row: dict, what: str) -> dict:
    """Plain Python values only (they become Parquet columns and MLflow metrics)."""
    out = {}
    for key, value in row.items():
        if value is None:
            out[key] = None
        elif isinstance(value, (bool, int, float, str)):  # np.float64 is a float: make it one
            out[key] = next(t for t in (bool, int, float, str) if isinstance(value, t))(value)
        elif hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalar
            out[key] = value.item()
        else:
            raise TypeError(f"{what} key {key!r} has type {type(value).__name__}; "
                            "yield int, float or str")
    if what == "row" and not isinstance(out.get("step"), int):
        raise TypeError(f"every row needs an int 'step', got {row.get('step')!r}")
    return out


def _single(rows):
    """A family's `run` generator in `run_packed`'s shape: (0, row)s, then [summary]."""
    while True:
        try:
            row = next(rows)
        except StopIteration as stop:
            return [stop.value]
        yield 0, row


def _raises(error: BaseException):
    """A generator that fails at once (where the science code would)."""
    raise error
    yield


def _failed(error: BaseException, node: str, trace: str | None) -> dict:
    return {"status": "failed", "error": f"{type(error).__name__}: {error}", "traceback": trace,
            "summary": {}, "node": node}


def _infrastructure(error: BaseException) -> bool:
    """Out of GPU memory says where the trial ran, not what it computes: not a result."""
    return type(error).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(error)


def _final(summary, node: str) -> dict:
    if isinstance(summary, BaseException):  # one model of a pack failed (e.g. its loss is NaN)
        return _failed(summary, node, None)
    return {"status": "ok", "error": None, "traceback": None, "node": node,
            "summary": _clean(summary or {}, "returned")}


class _TuneError(BaseException):
    """Tune's own exception raised inside the science code's frame (a checkpoint report): it
    must reach Tune, not be recorded as the trial's failure."""


def resumable(family) -> bool:
    """The family's `run` hands out its state at safe points and can go on from one."""
    return "checkpoint" in inspect.signature(family.run).parameters


class Checkpoints:
    """Worker side: reports rows at most once per REPORT_EVERY_S and, every `every_s` seconds
    at a safe point of the training loop, with a checkpoint holding the training state."""

    def __init__(self, every_s: float):
        self.every_s = every_s
        self.pending, self.last_report, self.last_saved = [], -REPORT_EVERY_S, time.monotonic()
        self.get_state = None  # the loop's latest; its value at the end is the final state

    def add(self, k: int, row: dict):
        self.pending.append([k, row])
        if time.perf_counter() - self.last_report >= REPORT_EVERY_S:
            self.report()

    def report(self, extra: dict | None = None, files: dict | None = None):
        """Send the pending rows (and `extra`); with `files` ({name: object}) as a checkpoint."""
        metrics = {"rows": self.pending, **(extra or {})}
        self.pending, self.last_report = [], time.perf_counter()
        if not files:
            return tune.report(metrics)
        import torch

        folder = tempfile.mkdtemp(prefix="sam-lab-ckpt-")
        try:
            for name, obj in files.items():
                torch.save(obj, os.path.join(folder, name))
            tune.report(metrics | {"checkpointed": True},
                        checkpoint=tune.Checkpoint.from_directory(folder))
        finally:  # the report has copied it to Tune's storage
            shutil.rmtree(folder, ignore_errors=True)

    def offer(self, get_state):
        """Called by the family's loop at each safe point."""
        self.get_state = get_state
        if self.every_s and time.monotonic() - self.last_saved >= self.every_s:
            try:
                self.report(files={"state-0.pt": get_state()})
            except Exception as e:  # noqa: BLE001 - Tune's, not the science's
                raise _TuneError() from e
            self.last_saved = time.monotonic()


def _start_state(unit: dict):
    """(state, resumed_step): the state to go on from: this trial's last checkpoint after a lost
    worker, else the saved final state of the shorter trial it extends, else none."""
    from sam_lab import state as training_state

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = training_state.load(os.path.join(folder, "state-0.pt"))
        return state, state["step"]
    parent = unit["members"][0].get("extend_from")
    if parent:
        try:
            return training_state.load(parent["path"]), None
        except Exception as e:  # noqa: BLE001 - e.g. RESULTS not shared with this node
            raise ValueError(f"cannot read {parent['path']}, the state of {parent['trial_id']} "
                             f"to extend: {type(e).__name__}: {str(e).splitlines()[0][:200]} "
                             "(on a cluster RESULTS must be on a file system every node "
                             "mounts)") from None
    return None, None


def run_trial(params: dict):
    """The Tune trainable: one unit (a trial, or a pack of them) on this worker's CPU allotment.

    Reports {"rows": [[k, row], ...]} where k indexes the unit's members, and at the end
    "finals": one final record per member (with keep: final, and a checkpoint holding each ok
    member's weights and training state)."""
    import torch  # here, not at the top: the driver never needs it

    unit = params["unit"]
    start = time.perf_counter()
    torch.set_num_threads(unit["threads"])
    node = ray.get_runtime_context().get_node_id()
    family = families.get(unit["experiment"])
    configs = [dict(m["config"]) for m in unit["members"]]
    saves = resumable(family) and not unit["packed"]
    reporter = Checkpoints(unit["checkpoint_s"] if saves else 0)
    resumed_step = None
    if unit["packed"]:  # no checkpoints; the final weights of each member
        takes = "checkpoint" in inspect.signature(family.run_packed).parameters
        rows = family.run_packed(configs, **({"checkpoint": reporter.offer} if takes else {}))
    elif saves:
        try:
            state, resumed_step = _start_state(unit)
            rows = _single(family.run(configs[0], state=state, checkpoint=reporter.offer))
        except ValueError as e:  # a kept state that cannot be read: the trial's own failure
            rows = _raises(e)
    else:
        rows = _single(family.run(configs[0]))
    summaries, failure = None, None
    while True:
        try:  # only the science code is guarded: Tune's own exceptions must reach Tune
            try:
                k, row = next(rows)
            except StopIteration as stop:
                summaries = stop.value
                break
            row = _clean(row, "row")
        except _TuneError as e:
            raise e.__cause__ from None
        except Exception as e:  # fails the whole unit
            if _infrastructure(e):
                raise  # Tune retries it, then the driver records it `lost`
            failure = _failed(e, node, traceback.format_exc())
            break
        reporter.add(k, row)
    if failure is None:
        try:
            finals = [_final(s, node) for s in summaries]
        except Exception as e:  # a summary value Parquet cannot hold
            failure = _failed(e, node, traceback.format_exc())
    if failure is not None:
        finals = [failure] * len(configs)
    # a packed member's wall_s is its share of the pack's time, so wall_s sums to machine time
    wall_s = (time.perf_counter() - start) / len(configs)
    extra = {"pack_size": len(configs)} if unit["packed"] else {}  # failed members too
    finals = [f | {"wall_s": wall_s, "summary": f["summary"] | extra,
                   "resumed_step": resumed_step} for f in finals]
    files = {}
    if unit["keep"] == "final" and reporter.get_state is not None:
        states = reporter.get_state()
        if not unit["packed"]:
            files = {"state-0.pt": states} if finals[0]["status"] == "ok" else {}
            states = [states]
        files |= {f"weights-{k}.pt": s["model"] for k, s in enumerate(states)
                  if finals[k]["status"] == "ok"}
    reporter.report({"finals": finals}, files)


# ----------------------------------------------------------------------------- driver side


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class Progress:
    """One line per finished trial, with the counts; on a terminal also a live status line."""

    def __init__(self, total: int, stream=sys.stdout):
        self.total, self.stream = total, stream
        self.tty = stream.isatty()
        self.start = time.monotonic()
        self.ok = self.failed = self.lost = 0
        self.running = set()
        self.last_tick = 0.0

    def status(self) -> str:
        done = self.ok + self.failed + self.lost
        pending = self.total - done - len(self.running)
        lost = f"{self.lost} lost, " if self.lost else ""
        return (f"{done}/{self.total} done, {self.failed} failed, {lost}"
                f"{len(self.running)} running, {pending} pending, "
                f"{_clock(time.monotonic() - self.start)}")

    def say(self, text: str):
        clear = "\r\033[K" if self.tty else ""
        print(f"{clear}{text}", file=self.stream, flush=True)
        self.tick(force=True)

    def tick(self, force=False):
        if self.tty and (force or time.monotonic() - self.last_tick > 1.0):
            self.last_tick = time.monotonic()
            print(f"\r\033[K  {self.status()}", end="", file=self.stream, flush=True)

    def finished(self, trial_id: str, label: str, row: dict):
        self.running.discard(trial_id)
        if row["status"] == "ok":
            self.ok += 1
            acc = row.get("test_acc")
            what = f"test_acc {acc:.3f}" if isinstance(acc, float) else "ok"
        else:
            if row["status"] == "lost":
                self.lost += 1
            else:
                self.failed += 1
            what = row["error"].splitlines()[0][:120] if row["error"] else "failed"
        self.say(f"{row['status']:6} {label}: {what} ({row['wall_s']:.1f} s)  [{self.status()}]")

    def end(self):
        if self.tty:
            print("\r\033[K", end="", file=self.stream, flush=True)


def _lost_reason(trial) -> str:
    """The last failure Tune saw for a trial whose worker died, as one line."""
    text = ""
    try:
        text = trial.get_error() or ""
    except Exception:  # noqa: BLE001 - no error file (the actor never started)
        pass
    text = str(text).rsplit("Failure #", 1)[-1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "Traceback" not in ln
             and not ln.startswith(("Error occurred", "File "))]
    return "worker lost: " + (lines[-1][:300] if lines else "the trial's worker or node died")


def _never_raise(callback):
    """An exception escaping a Tune callback ends the whole sweep: report it and go on."""
    @functools.wraps(callback)
    def guarded(self, *args, **kwargs):
        try:
            return callback(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001
            self.progress.say(f"sam-lab: {callback.__name__}: {type(e).__name__}: {e} "
                              "(the sweep goes on)")
    return guarded


class Recorder(tune.Callback):
    """Driver side: curves in memory per trial; when a trial ends, its row and curve go to the
    Parquet writer and its MLflow calls to the background tracker. Nothing here blocks on disk
    or network, and nothing raises (`_never_raise`).

    A Tune trial runs a unit: one trial, or a pack whose members are recorded one by one."""

    def __init__(self, spec, trials, results, tracker, progress, gpu_shares, code_version,
                 extends=None):
        self.spec, self.results, self.tracker, self.progress = spec, results, tracker, progress
        self.gpu_shares, self.code_version = gpu_shares, code_version
        extends = extends or {}
        self.by_id = {t.trial_id: t for t in trials}
        self.curves, self.started, self.recorded = {}, {}, set()
        self.extends = extends  # {trial_id: the shorter trial it goes on from}
        self.saved_rows = {}  # trial_id: how many curve rows its last checkpoint covers
        self.resume_curves = {}  # trial_id: the curve to go on with after a lost worker
        self.awaiting = {}  # Tune trial id: finals waiting for their checkpoint (weights)

    def __getstate__(self):  # Tune pickles its callbacks once for a restore we never use
        return {}

    @staticmethod
    def _members(trial) -> list[str]:
        return [m["trial_id"] for m in trial.config["unit"]["members"]]

    @_never_raise
    def on_trial_start(self, iteration, trials, trial, **info):
        for tid in self._members(trial):
            t = self.by_id[tid]
            self.curves[tid] = self.resume_curves.pop(tid, None) or self._parent_curve(tid)
            self.started[tid] = time.perf_counter()
            self.tracker.submit("start_trial", tid, tid, t.label, t.config)
            self.progress.running.add(tid)
        self.progress.tick(force=True)

    @_never_raise
    def on_trial_result(self, iteration, trials, trial, result, **info):
        members = self._members(trial)
        if members[0] in self.recorded:  # a late duplicate, e.g. from a retry after the final
            return
        for k, row in result["rows"]:
            self.curves.setdefault(members[k], []).append(row)
        if result.get("checkpointed"):  # a lost worker goes on from here
            for tid in members:
                self.saved_rows[tid] = len(self.curves.get(tid, ()))
        if "finals" in result and result.get("checkpointed"):
            self.awaiting[trial.trial_id] = result["finals"]  # recorded with their weights
            return
        for tid, final in zip(members, result.get("finals", ())):
            self._record(tid, final, final["summary"], final["traceback"])

    @_never_raise
    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        """The final checkpoint: the weights go to RESULTS/NAME/weights, then the rows."""
        finals = self.awaiting.pop(trial.trial_id, None)
        if finals is None:
            return
        members = self._members(trial)
        try:
            with checkpoint.as_directory() as folder:
                weights.keep(folder, self.results.dir, members)
        except Exception as e:  # noqa: BLE001 - the results still count
            self.progress.say(f"sam-lab: weights of {members[0]} not kept: "
                              f"{type(e).__name__}: {e}")
        for tid, final in zip(members, finals):
            self._record(tid, final, final["summary"], final["traceback"])

    @_never_raise
    def on_trial_complete(self, iteration, trials, trial, **info):
        finals = self.awaiting.pop(trial.trial_id, None)  # a checkpoint that never came
        for tid, final in zip(self._members(trial), finals or ()):
            self._record(tid, final, final["summary"], final["traceback"])

    def _parent_curve(self, tid: str) -> list[dict]:
        """An extended trial's curve starts with the whole curve of the trial it extends."""
        parent = self.extends.get(tid)
        if parent is None:
            return []
        import pyarrow.parquet as pq

        table = pq.read_table(self.results.dir / "curves" / f"{parent}.parquet")
        return [{k: v for k, v in r.items() if k != "trial_id"} for r in table.to_pylist()]

    @_never_raise
    def on_trial_recover(self, iteration, trials, trial, **info):
        reason = _lost_reason(trial)  # the actor may never have started: no on_trial_start
        for tid in self._members(trial):
            self.tracker.submit("kill_trial", tid, tid, reason)
            # Tune restarts it from its last checkpoint: keep the rows that checkpoint covers
            kept = self.saved_rows.get(tid, 0)
            self.resume_curves[tid] = (self.curves.get(tid) or [])[:kept] if kept else None
            self.curves[tid] = []
            self.progress.running.discard(tid)
            self.progress.say(f"retry  {self.by_id[tid].label}: {reason} (attempt "
                              f"{trial.num_failures + 1} of {self.spec.failure_retries + 1})")

    @_never_raise
    def on_trial_error(self, iteration, trials, trial, **info):
        """Retries used up on infrastructure failures: the trial is `lost` (the next launch
        runs it again), not `failed` (which is the science's own verdict)."""
        reason = _lost_reason(trial)
        for tid in self._members(trial):
            if tid not in self.recorded:
                wall = time.perf_counter() - self.started.get(tid, time.perf_counter())
                final = {"status": "lost", "error": reason, "node": None, "wall_s": wall}
                self._record(tid, final, {}, None)

    @_never_raise
    def on_step_end(self, iteration, trials, **info):
        self.progress.tick()

    def _record(self, tid: str, final: dict, summary: dict, trace: str | None):
        trial = self.by_id[tid]
        curve = self.curves.pop(tid, None) or []
        row = {"trial_id": tid, "sweep": self.spec.name, "experiment": self.spec.experiment,
               "status": final["status"], "error": final["error"], "seed": trial.seed,
               **trial.config}
        for key, value in {**(curve[-1] if curve else {}), **summary}.items():
            row.setdefault(key, value)  # config values win over same-named metrics (lr)
        if self.spec.refine is not None:
            row["round"] = trial.round
        row |= {"wall_s": final["wall_s"], "node": final["node"],
                "gpu_share": self.gpu_shares[tid], "code_version": self.code_version}
        state = {}  # also in MLflow (a metric, a tag) through the summary
        if final.get("resumed_step") is not None:  # restarted from a checkpoint at this step
            state["resumed_step"] = final["resumed_step"]
        if tid in self.extends:
            state["extended_from"] = self.extends[tid]
        row |= state
        summary = summary | state
        # MLflow's final tags, then Parquet, then the run's end: a driver killed in between
        # leaves a RUNNING run that the next launch can tell finished (Tracker.close_stale).
        self.tracker.submit("log_final", tid, tid, row, summary, trace, curve)
        status = row["status"]
        self.results.record(row, curve, then=lambda: self.tracker.submit(
            "end_trial", tid, tid, status))
        self.recorded.add(tid)
        self.progress.finished(tid, trial.label, row)


class UnitFeeder(Searcher):
    """Hands Tune one unit per trial, when Tune asks for one: the cost per trial does not grow
    with the sweep, and Tune holds only the trials it has started (a grid_search over N units
    is expanded and deep-copied up front)."""

    def __init__(self, units: list[dict]):
        super().__init__()
        self.units, self.next = units, 0

    def __getstate__(self):  # Tune pickles its searcher once, for a restore we never use
        return {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str):
        if self.next == len(self.units):
            return Searcher.FINISHED
        self.next += 1
        return {"unit": self.units[self.next - 1]}

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False):
        pass

    def save_to_dir(self, *args, **kwargs):
        pass  # a resume reads trials.parquet, never Tune's state


def _created(trial) -> int:
    """The order Tune created a trial in (its experiment tag starts with a counter)."""
    head = str(trial.experiment_tag).split("_", 1)[0]
    return int(head) if head.isdigit() else 0


class LiveFIFO(FIFOScheduler):
    """Tune's FIFO choice of the next trial to start, among the live trials only: Tune's own
    scans every trial it ever made, at every step, which makes a sweep quadratic in its size."""

    def choose_trial_to_run(self, tune_controller):
        live = tune_controller.get_live_trials()
        for status in (Trial.PENDING, Trial.PAUSED):
            ready = [t for t in live if t.status == status]
            if ready:
                return min(ready, key=_created)
        return None


@dataclass
class Summary:
    ok: int
    failed: int
    lost: int
    unfinished: int
    seconds: float

    def __add__(self, later: Summary) -> Summary:  # a refined sweep's rounds, in order
        return Summary(self.ok + later.ok, self.failed + later.failed, self.lost + later.lost,
                       later.unfinished, self.seconds + later.seconds)


def _with_absolute_paths(config: dict) -> dict:
    """A relative data_dir (or endpoint file) means the launch directory's: Tune runs each trial
    in a folder of its own. (The trial_id was computed before, from the config as written.)"""
    out = config
    for key in ("data_dir", "endpoint_a", "endpoint_b"):
        path = config.get(key)
        if isinstance(path, str) and path and not os.path.isabs(path) and "://" not in path:
            out = {**out, key: os.path.abspath(path)}
    return out


def _slots(spec) -> int:
    """How many units the cluster can run at once now (Tune keeps as many queued)."""
    total = ray.cluster_resources()
    slots = total.get("CPU", 1) / spec.resources["cpu"]
    gpu = spec.resources["gpu"]
    if gpu not in (0, "auto"):
        slots = min(slots, total.get("GPU", 0) / gpu)
    return max(1, int(slots))


def trainable(cpu: float):
    """run_trial with each unit's resources. Tune pickles it, and unpickles it for every trial:
    it must hold nothing that grows with the sweep (such as the spec)."""
    def resources(config):  # per unit: `gpu: auto` sizes each one's share from its model
        bundle = {"CPU": cpu, "GPU": config["unit"]["gpu"]}
        return tune.PlacementGroupFactory([{k: v for k, v in bundle.items() if v}])

    return tune.with_resources(run_trial, resources)


def _member(trial, results, extends: dict) -> dict:
    member = {"trial_id": trial.trial_id, "config": _with_absolute_paths(trial.config)}
    parent = extends.get(trial.trial_id)
    if parent is not None:  # read on the worker: RESULTS must be on a shared file system
        path = weights.state_path(results.dir, parent).resolve()
        member["extend_from"] = {"trial_id": parent, "path": str(path)}
    return member


def _tuner(spec, units, name, storage, recorder, max_concurrent) -> tune.Tuner:
    return tune.Tuner(
        trainable(spec.resources["cpu"]),
        tune_config=tune.TuneConfig(
            search_alg=UnitFeeder(units), num_samples=len(units), scheduler=LiveFIFO(),
            reuse_actors=True, max_concurrent_trials=max_concurrent,
            trial_name_creator=lambda t: t.config["unit"]["unit_id"],
            trial_dirname_creator=lambda t: t.config["unit"]["unit_id"]),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=0, callbacks=[recorder],
            failure_config=tune.FailureConfig(max_failures=spec.failure_retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))  # only the latest counts


def run(spec, todo, results, tracker, *, max_concurrent=None, storage=None,
        code_version: str = "", extends: dict | None = None) -> Summary:
    """Run `todo` (a list of spec.Trial) to completion, or until Ctrl-C; Ray must be connected.
    `tracker` is a tracking.Background; `results` a results.Results (the caller closes both).
    `extends` maps a trial_id to the finished shorter trial it goes on from (sweeps.extend)."""
    family = families.get(spec.experiment)
    extends = extends or {}
    units = [{"unit_id": unit[0].trial_id + (f"+{len(unit) - 1}" if len(unit) > 1 else ""),
              "experiment": spec.experiment, "threads": spec.threads, "packed": bool(spec.pack),
              "gpu": gpu_share(family, [t.config for t in unit], spec.resources),
              "checkpoint_s": spec.checkpoint_s, "keep": spec.keep,
              "members": [_member(t, results, extends) for t in unit]}
             for unit in spec.units(todo)]

    progress = Progress(len(todo))
    shares = {m["trial_id"]: u["gpu"] for u in units for m in u["members"]}
    recorder = Recorder(spec, todo, results, tracker, progress, shares, code_version, extends)

    # Tune starts as many trials as are queued for resources; a Searcher gets 1 unless told.
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(max(2 * _slots(spec), 16)))
    # Tune's default CSV, JSON and TensorBoard loggers write per-trial files into its storage
    # that nothing reads (trials.parquet is the record), and keep state for every trial until
    # the run ends: driver memory that grows with the sweep (ray-project/ray#64231)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    own_storage = storage is None
    storage = storage or tempfile.mkdtemp(prefix="sam-lab-tune-")
    sigint = signal.getsignal(signal.SIGINT)
    per_fit = units_per_fit()  # checked by the CLI before Ray started
    try:
        for first in range(0, len(units), per_fit):
            chunk = units[first:first + per_fit]
            name = spec.name if first == 0 else f"{spec.name}-{first // per_fit}"
            _tuner(spec, chunk, name, storage, recorder, max_concurrent).fit()
            # the first Ctrl-C stops Tune gracefully: fit returns, trials in flight end
            if any(m["trial_id"] not in recorder.recorded for u in chunk for m in u["members"]):
                break  # interrupted: no later chunk starts
    finally:
        signal.signal(signal.SIGINT, sigint)  # Tune leaves its handler behind
        progress.end()
        if own_storage:
            shutil.rmtree(storage, ignore_errors=True)
    return Summary(ok=progress.ok, failed=progress.failed, lost=progress.lost,
                   unfinished=len(todo) - len(recorder.recorded),
                   seconds=time.monotonic() - progress.start)

"""`sam-lab`: sweep, status, plot, sync, measure, ui.

    sam-lab sweep sweeps/quickstart.yaml            # run (or resume: rerun the same command)
    sam-lab status results/quickstart               # ok / failed / lost / pending
    sam-lab plot results/quickstart                 # figures -> results/quickstart/figures
    sam-lab sync results/quickstart                 # MLflow runs rebuilt from Parquet
    sam-lab measure results/quickstart --what sharpness   # re-analysis from saved weights
    sam-lab ui                                      # MLflow dashboard on 127.0.0.1:5000

Exit codes: 0 done (failed trials are results, not errors), 2 bad input (one line on stderr,
nothing written, Ray not even imported), 3 an environment fault (a full or read-only disk, a
locked or corrupt mlflow.db or results file, a busy port, a missing or unreadable weight file for
measure: one line naming it), 130 interrupted by Ctrl-C or SIGTERM (finished trials are saved),
1 a crash. Heavy imports (Ray, MLflow, torch, seaborn) happen inside the commands
that need them.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import os
import shlex
import signal
import socket
import sys
from pathlib import Path

from sweeps import preflight
from sweeps.preflight import ENV_EXIT, EnvironmentFault
from sweeps.spec import InputError

DEFAULT_RESULTS = "results"
DRY_RUN_ROWS = 1000  # a longer dry run prints its first and last rows and the counts


class UsageError(InputError):
    """A bad flag or path found by a command."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(2, f"sam-lab: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> Parser:
    p = Parser(prog="sam-lab", description="Sweepable, reproducible SAM / double-descent / "
                                            "grokking / mode-connectivity experiments.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    s = sub.add_parser("sweep", help="run a YAML spec on Ray Tune (rerun to resume)")
    s.add_argument("spec", help="the sweep spec, e.g. sweeps/quickstart.yaml")
    s.add_argument("--results", default=DEFAULT_RESULTS, help="results root (default: results)")
    s.add_argument("--address", help="join a Ray cluster: auto or host:port (default: start a "
                                     "local Ray sized to this machine)")
    s.add_argument("--tracking-uri", help="MLflow tracking URI (default: "
                                          "sqlite:///RESULTS/mlflow.db)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base value (or replace a grid axis); repeatable")
    s.add_argument("--variant", metavar="NAME", help="apply the spec's named variant (e.g. tiny) "
                                                     "before any --set")
    s.add_argument("--max-concurrent", type=int, help="at most N trials at once")
    s.add_argument("--storage", help="Tune storage for a multi-node cluster (s3://..., or an NFS "
                                     "path); default: a temp folder, deleted afterwards")
    s.add_argument("--rerun-failed", action="store_true",
                   help="also rerun trials that failed (lost trials always run again)")
    s.add_argument("--dry-run", action="store_true", help="print the trials (a summary beyond "
                                                          f"{DRY_RUN_ROWS}); write nothing")
    s.set_defaults(func=sweep)

    st = sub.add_parser("status", help="ok / failed / pending counts of a sweep (or all)")
    st.add_argument("sweep_dir", nargs="?", help="RESULTS/NAME (default: every sweep in "
                                                 "--results)")
    st.add_argument("--results", default=DEFAULT_RESULTS)
    st.set_defaults(func=status)

    sy = sub.add_parser("sync", help="log to MLflow the trials in Parquet that it lacks")
    sy.add_argument("sweep_dir", help="RESULTS/NAME")
    sy.add_argument("--tracking-uri", help="MLflow tracking URI (default: "
                                           "sqlite:///RESULTS/mlflow.db)")
    sy.set_defaults(func=sync_command)

    pl = sub.add_parser("plot", help="draw a sweep's figures (and log them to MLflow)")
    pl.add_argument("sweep_dir", help="RESULTS/NAME")
    pl.add_argument("--out", help="output folder (default: RESULTS/NAME/figures)")
    pl.add_argument("--tracking-uri", help="MLflow store to log the figures to (default: "
                                           "RESULTS/mlflow.db if present)")
    pl.set_defaults(func=plot)

    me = sub.add_parser("measure", help="measure finished trials again from their saved "
                                        "weights -> RESULTS/NAME/measures.parquet")
    me.add_argument("sweep_dir", help="RESULTS/NAME (run with keep: final)")
    me.add_argument("--what", default="sharpness", help="what to measure (default: sharpness: "
                                                        "lambda_max, hessian_trace, "
                                                        "eps_sharpness)")
    me.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                    help="only trials with this column value; repeatable")
    me.add_argument("--address", help="join a Ray cluster (default: a local Ray)")
    me.set_defaults(func=measure_command)

    ui = sub.add_parser("ui", help="the MLflow dashboard for a results folder")
    ui.add_argument("--results", default=DEFAULT_RESULTS)
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=ui_command)
    return p


# ----------------------------------------------------------------------------- sweep


def _plan(spec, statuses: dict, rerun_failed: bool, sweep_dir: Path | None = None):
    """(todo, message): the trials to run, and one line of counts for the user. `lost` trials
    (infrastructure failures) always run again; `failed` ones only with --rerun-failed. A
    refined spec runs round by round: todo is the first round not yet recorded
    (sweeps/rounds.py), and spec.trials holds the rounds decided so far."""
    skip = {"ok"} if rerun_failed else {"ok", "failed"}
    round_note = ""
    if spec.refine is not None:
        from sweeps import rounds

        todo, round_ = rounds.plan(spec, rounds.recorded(sweep_dir, spec.refine.metric), skip)
        round_note = f", refine round {round_} of {spec.refine.rounds}"
    if spec.refine is None:
        todo = [t for t in spec.trials if statuses.get(t.trial_id) not in skip]
    n_failed = sum(statuses.get(t.trial_id) == "failed" for t in spec.trials)
    note = f" ({n_failed} failed; --rerun-failed retries them)" if n_failed and not rerun_failed \
        else ""
    done = sum(statuses.get(t.trial_id) in skip for t in spec.trials)
    message = (f"{spec.name}: {len(spec.trials)} trials, {done} finished{note}, {len(todo)} to "
               f"run{round_note}")
    return todo, message


def _print_table(spec, statuses: dict, todo):
    """One row per trial; beyond DRY_RUN_ROWS the first and last few, then counts."""
    todo_ids = {t.trial_id for t in todo}
    keys = list(spec.grid) + ["seed"]
    pack_of = {t.trial_id: str(i) for i, unit in enumerate(spec.units(todo)) for t in unit} \
        if spec.pack else {}
    shown = spec.trials if len(spec.trials) <= DRY_RUN_ROWS else \
        [*spec.trials[:10], None, *spec.trials[-10:]]
    rows = [["..."] * (len(keys) + 3 + bool(spec.pack)) if t is None else
            [t.trial_id, "run" if t.trial_id in todo_ids else "skip",
             statuses.get(t.trial_id, "-"), *[str(v) for v in t.point.values()], str(t.seed),
             *([pack_of.get(t.trial_id, "-")] if spec.pack else [])]
            for t in shown]
    header = ["trial_id", "action", "status", *keys, *(["pack"] if spec.pack else [])]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if len(shown) < len(spec.trials):
        counts = {}
        for t in spec.trials:
            counts[statuses.get(t.trial_id, "pending")] = counts.get(
                statuses.get(t.trial_id, "pending"), 0) + 1
        axes = ", ".join(f"{k}: {len(v)} values" for k, v in spec.grid.items())
        print(f"{len(spec.trials)} trials ({axes}; {len(spec.seeds)} seeds): "
              + ", ".join(f"{n} {k}" for k, n in counts.items())
              + (f"; {len(spec.units(todo))} packs to run" if spec.pack else ""))


def _lock(sweep_dir: Path):
    """One driver per sweep folder (a second would mark the first one's runs KILLED)."""
    f = open(sweep_dir / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        raise UsageError(f"{sweep_dir}: another sam-lab sweep is running on it "
                         f"(pid {f.read().strip() or '?'})") from None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f


def loopback_ray():
    """Make a local Ray listen on 127.0.0.1 only (call before Ray is imported). Ray 2.60 binds
    its servers to loopback when its node IP is loopback, and keeps a loopback node IP only with
    multi-node clusters off (its macOS / Windows mode, an env var read at import). A joined
    cluster (--address) is left as it is."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def check_address(address: str | None):
    """A bad --address is bad input: refused before Ray is imported, so nothing starts."""
    if address is None or address == "auto":
        return
    if address.startswith("ray://"):
        raise UsageError(
            f"--address {address}: Ray Client would run the Tune driver, and so the Parquet and "
            "MLflow writes, on the cluster; allowed: auto or host:port, with sam-lab run on the "
            "head: ray job submit -- sam-lab sweep ... --address auto")
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        raise UsageError(f"--address {address}: allowed: auto, or host:port of a running "
                         "`ray start --head` (e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()  # [::1]:6379
    except OSError as e:
        raise UsageError(f"--address {address}: cannot reach a Ray head there ({e}); allowed: "
                         "auto, or host:port of a running `ray start --head`") from None


def _sigterm_as_sigint(signum, frame):
    """SIGTERM (`kill`, a batch scheduler, a preempted VM) stops the sweep the way Ctrl-C does."""
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):  # SIGINT ignored, e.g. a job started with `nohup ... &`
        raise KeyboardInterrupt
    handler(signal.SIGINT, frame)


def _artifacts(root: Path, name: str, uri: str) -> str | None:
    """A tracking server stores artifacts where it was told; a local store keeps them beside
    the results (not in ./mlruns of whatever folder the command ran from)."""
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    return (root / "mlartifacts" / name).resolve().as_uri()


def _all_done(args, spec, sweep_dir: Path, counts: str) -> int:
    """Nothing to run: no Ray, no launch run. The spec record follows the latest command, and
    MLflow catches up with Parquet (runs a dead driver left open, trials it never logged)."""
    from sam_lab import trials as families
    from sweeps.results import Results, compact

    lock = _lock(sweep_dir)  # it exists: its trials are recorded
    try:
        compact(sweep_dir)
        Results(sweep_dir, families.get(spec.experiment).Config).write_spec(spec.resolved())
        if args.tracking_uri or (sweep_dir.parent / "mlflow.db").exists():
            _catch_up(args.tracking_uri, spec, sweep_dir)
    finally:
        lock.close()
    print(f"{counts}: nothing to do")
    return 0


def _preflight_store(root: Path, tracking_uri: str | None):
    """The results root and the MLflow store a command writes: usable, or one line and exit
    2/3. A local store's artifact paths are moved onto this root (a copied folder is whole)."""
    from sweeps import artifacts

    preflight.results_root(root)
    db = root / "mlflow.db"
    uri = tracking_uri or f"sqlite:///{db.absolute()}"
    preflight.tracking_uri(uri)
    preflight.sqlite_store(uri)
    path = preflight.sqlite_path(uri)
    if path is not None and path.absolute() == db.absolute():  # a store elsewhere is not ours
        artifacts.rebase(root)


def _catch_up(tracking_uri, spec, sweep_dir: Path):
    from sweeps import tracking
    from sweeps.provenance import code_version
    from sweeps.sync import catch_up

    uri = tracking_uri or tracking.default_uri(sweep_dir.parent)
    tracking.check_reachable(uri)
    tracker = tracking.Tracker(uri, spec["name"] if isinstance(spec, dict) else spec.name,
                               sweep_dir, _artifacts(sweep_dir.parent, sweep_dir.name, uri),
                               code_version())
    experiment = spec["experiment"] if isinstance(spec, dict) else spec.experiment
    return catch_up(tracker, sweep_dir, experiment)


def sweep(args, argv) -> int:
    from sam_lab import trials as families
    from sweeps import spec as specs
    from sweeps.results import Results, read_statuses

    spec = specs.load(args.spec, args.set, args.variant)
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UsageError(f"--max-concurrent: got {args.max_concurrent}; allowed: an int >= 1")
    root = Path(args.results)
    if root.exists() and not root.is_dir():
        raise UsageError(f"--results {root}: exists and is not a folder; allowed: a folder "
                         "(created if missing)")
    specs.check_name_free(spec, root)
    if not args.dry_run:  # every place the sweep will write, before any write or Ray start
        _preflight_store(root, args.tracking_uri)
        args.storage = preflight.storage(args.storage)
    sweep_dir = root / spec.name
    todo, counts = _plan(spec, read_statuses(sweep_dir), args.rerun_failed, sweep_dir)
    if args.dry_run:
        _print_table(spec, read_statuses(sweep_dir), todo)
        later = (f"; later refine rounds (up to {spec.refine.rounds}) depend on the results"
                 if spec.refine else "")
        print(f"{counts} (dry run: nothing written{later})")
        return 0
    if not todo:
        return _all_done(args, spec, sweep_dir, counts)

    from sweeps import tracking

    uri = args.tracking_uri or tracking.default_uri(root)
    tracking.check_reachable(uri)
    check_address(args.address)
    preflight.units_per_fit()
    if args.address is None:
        loopback_ray()
    from sweeps import launcher  # imports Ray: only once the input is known to be good
    from sweeps.extend import plan as plan_extensions
    from sweeps.provenance import code_version
    from sweeps.results import compact
    from sweeps.sync import catch_up

    version = code_version()
    # MLflow's import and the store's set-up run on the tracking thread while Ray starts
    background = tracking.Background(functools.partial(
        tracking.Tracker, uri, spec.name, sweep_dir, _artifacts(root, spec.name, uri), version))
    lock = summary = results = sigterm = None
    status = "KILLED"
    try:
        where = launcher.connect(args.address, spec.resources)
        sigterm = signal.signal(signal.SIGTERM, _sigterm_as_sigint)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        lock = _lock(sweep_dir)
        compact(sweep_dir)
        todo, counts = _plan(spec, read_statuses(sweep_dir), args.rerun_failed,
                             sweep_dir)  # now locked
        results = Results(sweep_dir, families.get(spec.experiment).Config)
        results.write_spec(spec.resolved())
        if not todo:
            print(f"{counts}: nothing to do")
            return 0
        tracker = background.ready()  # a store MLflow cannot open stops the sweep here
        # MLflow catches up first (FIFO), then this launch's runs: all off the trials' path
        background.submit(catch_up, None, tracker, sweep_dir, spec.experiment)
        background.submit("open_launch", None, spec.resolved(), len(todo),
                          len(spec.trials) - len(todo))
        if len(todo) < len(spec.trials):
            print(f"skipping {len(spec.trials) - len(todo)} finished trials")
        extends, notes = plan_extensions(spec, sweep_dir, todo)
        for note in notes:
            print(note)
        print(f"{counts} on {where}; MLflow: {uri}", flush=True)
        summary = launcher.run(spec, todo, results, background,
                               max_concurrent=args.max_concurrent, storage=args.storage,
                               code_version=version, extends=extends)
        while spec.refine is not None and summary.unfinished == 0:  # the next round, if any
            results.close()  # on disk: the round's results decide the next one
            todo, counts = _plan(spec, read_statuses(sweep_dir), args.rerun_failed, sweep_dir)
            if not todo:
                break
            results.write_spec(spec.resolved())
            extends, notes = plan_extensions(spec, sweep_dir, todo)
            print("\n".join([*notes, counts]), flush=True)
            summary = summary + launcher.run(spec, todo, results, background,
                                             max_concurrent=args.max_concurrent,
                                             storage=args.storage, code_version=version,
                                             extends=extends)
        if summary.unfinished == 0:
            status = "FINISHED"
    except KeyboardInterrupt:
        pass
    finally:
        if results is not None:
            results.close()  # the queued trials, then one compacted trials.parquet
        background.submit("close_launch", None, status)
        background.close()
        launcher.disconnect()  # last: Ray objects Tune left behind must go while Ray is up
        if lock is not None:
            lock.close()
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    if status != "FINISHED":
        command = shlex.join(["sam-lab", *argv])
        print(f"interrupted: finished trials are saved in {sweep_dir}; resume with: {command}",
              file=sys.stderr)
        return 130
    lost = f", {summary.lost} lost (rerun the command to retry them)" if summary.lost else ""
    print(f"done in {summary.seconds:.0f} s: {summary.ok} ok, {summary.failed} failed{lost} -> "
          f"{sweep_dir}/trials.parquet\n  figures: sam-lab plot {sweep_dir}\n"
          f"  dashboard: sam-lab ui --results {root}")
    return 0


# ----------------------------------------------------------------------------- status, plot, ui


def _sweep_summary(sweep_dir: Path) -> str:
    """One line of counts; the parts written so far are compacted on the way (if writable)."""
    from analysis import load
    from sweeps.results import compact, read_statuses

    try:
        compact(sweep_dir)
    except OSError:  # a read-only copy: the parts are read as they are
        pass
    spec = load.spec(sweep_dir)
    statuses = read_statuses(sweep_dir)
    ids = spec["trial_ids"]
    counts = {s: 0 for s in ("ok", "failed", "lost")}
    for i in ids:
        if statuses.get(i) in counts:
            counts[statuses[i]] += 1
    lost = f", {counts['lost']} lost" if counts["lost"] else ""
    pending = len(ids) - sum(counts.values())
    return (f"{spec['name']}: {counts['ok']} ok, {counts['failed']} failed{lost}, {pending} "
            f"pending ({len(ids)} trials, {spec['experiment']})  {sweep_dir}")


def status(args, argv) -> int:
    """One line per sweep; a sweep whose files cannot be read gets one line naming the file on
    stderr, the others are still listed, and the exit code is 3."""
    from analysis.load import CorruptFile

    if args.sweep_dir:
        sweep_dir = Path(args.sweep_dir)
        if not (sweep_dir / "spec.yaml").exists():
            raise UsageError(f"{sweep_dir}: no sweep here (no spec.yaml); run sam-lab sweep first")
        print(_sweep_summary(sweep_dir))
        return 0
    sweeps = sorted(p.parent for p in Path(args.results).glob("*/spec.yaml"))
    if not sweeps:
        raise UsageError(f"--results {args.results}: no sweeps found")
    broken = 0
    for sweep_dir in sweeps:
        try:
            print(_sweep_summary(sweep_dir))
        except (CorruptFile, OSError) as e:
            broken += 1
            print(f"sam-lab: error: {_one_line(e)}", file=sys.stderr)
    return ENV_EXIT if broken else 0


def plot(args, argv) -> int:
    sweep_dir = Path(args.sweep_dir)
    if not (sweep_dir / "spec.yaml").exists():
        raise UsageError(f"{sweep_dir}: no sweep here (no spec.yaml); run sam-lab sweep first")
    out = preflight.out_dir(Path(args.out)) if args.out else sweep_dir / "figures"
    if not args.out:
        preflight.writable(sweep_dir, str(sweep_dir))
    db = sweep_dir.parent / "mlflow.db"
    if args.tracking_uri:
        preflight.tracking_uri(args.tracking_uri)
        preflight.sqlite_store(args.tracking_uri)
    elif db.exists():
        from sweeps import artifacts

        preflight.sqlite_store(f"sqlite:///{db.absolute()}")
        artifacts.rebase(sweep_dir.parent)  # figures go to this folder's artifacts, not the original's
    from analysis import figures

    try:
        paths = figures.make(sweep_dir, out)
    except LookupError as e:
        raise UsageError(f"{sweep_dir}: {e}") from None
    if not paths:
        print(f"{sweep_dir}: no finished trials to plot yet")
        return 0
    for path in paths:
        print(path)
    if args.tracking_uri or db.exists():
        from sweeps import tracking

        uri = args.tracking_uri or tracking.default_uri(sweep_dir.parent)
        tracking.check_reachable(uri)
        run_id = tracking.log_figures(uri, sweep_dir.name, paths)
        if run_id:
            print(f"logged to MLflow run {run_id} ({uri})")
    return 0


def sync_command(args, argv) -> int:
    """Rebuild the sweep's missing MLflow runs from its Parquet tables (and close stale ones)."""
    from analysis import load
    from sweeps.results import compact

    sweep_dir = Path(args.sweep_dir)
    if not (sweep_dir / "spec.yaml").exists():
        raise UsageError(f"{sweep_dir}: no sweep here (no spec.yaml); run sam-lab sweep first")
    if args.tracking_uri and "://" not in args.tracking_uri:
        raise UsageError(f"--tracking-uri {args.tracking_uri}: allowed: a URI such as "
                         "http://host:5000 or sqlite:///path/mlflow.db")
    _preflight_store(sweep_dir.parent, args.tracking_uri)
    from sweeps import tracking

    tracking.check_reachable(args.tracking_uri or "")
    lock = _lock(sweep_dir)  # a running sweep would log the same trials
    try:
        compact(sweep_dir)
        logged = _catch_up(args.tracking_uri, load.spec(sweep_dir), sweep_dir)
    finally:
        lock.close()
    uri = args.tracking_uri or tracking.default_uri(sweep_dir.parent)
    print(f"{sweep_dir}: MLflow is up to date ({logged} trials logged now) in {uri}")
    return 0


def ui_command(args, argv) -> int:
    db = Path(args.results) / "mlflow.db"
    if not db.exists():
        raise UsageError(f"--results {args.results}: no mlflow.db there; run sam-lab sweep first")
    uri = f"sqlite:///{db.resolve()}"
    preflight.sqlite_store(uri)
    preflight.port(args.host, args.port)
    from sweeps import artifacts
    from sweeps.tracking import dashboard_url

    artifacts.rebase(Path(args.results))
    print(f"MLflow UI for {uri} on port {args.port} (Ctrl-C stops it); one line per sweep:")
    for experiment_id, name in _experiments(db):
        print(f"{name}  {dashboard_url(args.host, args.port, experiment_id)}")
    sys.stdout.flush()
    # One worker and no job runner (GenAI evaluation jobs): a local viewer, not 12 processes.
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", args.host, "--port", str(args.port), "--workers", "1"]
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execv(sys.executable, command)


def _experiments(db: Path) -> list[tuple[str, str]]:
    """(id, name) of the active sweeps' experiments, read straight from the SQLite store (no
    MLflow import: the UI process starts at once); the empty Default (id 0) is not a sweep."""
    import sqlite3

    con = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=2)
    try:
        rows = con.execute("SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = "
                           "'active' AND experiment_id != 0 ORDER BY name").fetchall()
    except sqlite3.OperationalError as e:  # an empty file: MLflow makes the tables
        if "no such table" not in str(e):
            raise EnvironmentFault(f"{db}: unreadable MLflow store ({e})") from None
        rows = []
    except sqlite3.DatabaseError as e:
        raise EnvironmentFault(f"{db}: unreadable MLflow store ({e})") from None
    finally:
        con.close()
    return [(str(i), n) for i, n in rows]


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def measure_command(args, argv) -> int:
    """Exit 3 for a missing or unreadable weight file (a data fault): nothing is measured."""
    if args.address is None:
        loopback_ray()
    from sweeps import measure

    sweep_dir = Path(args.sweep_dir)
    where = measure.parse_where(args.where)
    measure.select(sweep_dir, args.what, where)  # bad flags: exit 2 before Ray starts
    check_address(args.address)
    try:
        measured, present = measure.run(sweep_dir, args.what, where, args.address)
    except measure.DataError as e:
        print(f"sam-lab: error: {e}", file=sys.stderr)
        return 3
    print(f"{args.what}: {measured} trials measured, {present} already in "
          f"{sweep_dir / measure.MEASURES}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Every refusal is one line on stderr: 2 for input, 3 for the environment (a full or
    read-only disk, a locked store, a corrupt results file), never a traceback."""
    if argv is None:  # the `sam-lab` script
        _exit_now(main(sys.argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, list(argv))
    except InputError as e:
        print(f"sam-lab: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        line = _environment_fault(e)
        if line is None:
            raise  # a bug: the traceback is the report
        print(f"sam-lab: error: {line}", file=sys.stderr)
        return ENV_EXIT


def _exit_now(code: int):
    """End a finished command without the interpreter's teardown of the modules it loaded
    (Ray, torch, MLflow: slow, and nothing a finished command needs). Exit handlers still run
    and the output is flushed; a thread still at work gets the ordinary exit, which waits."""
    import atexit
    import threading

    if any(t.is_alive() and not t.daemon and t is not threading.main_thread()
           for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`sam-lab status | head`)
            pass
    os._exit(code)


def _environment_fault(e: Exception) -> str | None:
    """The one line for a fault of the machine or of the results folder, None for a bug."""
    load = sys.modules.get("analysis.load")  # only a command that read results can raise it
    if isinstance(e, EnvironmentFault) or (load and isinstance(e, load.CorruptFile)):
        return _one_line(e)
    if isinstance(e, OSError):
        return preflight.describe_os_error(e)
    return None

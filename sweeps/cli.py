"""`sam-lab`: sweep, status, plot, ui.

    sam-lab sweep sweeps/quickstart.yaml            # run (or resume: rerun the same command)
    sam-lab status results/quickstart               # ok / failed / pending
    sam-lab plot results/quickstart                 # figures -> results/quickstart/figures
    sam-lab ui                                      # MLflow dashboard on 127.0.0.1:5000

Exit codes: 0 done (failed trials are results, not errors), 2 bad input (one line on stderr,
nothing written, Ray not even imported), 130 interrupted by Ctrl-C or SIGTERM (finished trials
are saved), 1 a crash. Heavy imports (Ray, MLflow, torch, seaborn) happen inside the commands
that need them.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shlex
import signal
import socket
import sys
from pathlib import Path

from sweeps.spec import InputError

DEFAULT_RESULTS = "results"


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
    s.add_argument("--rerun-failed", action="store_true", help="also rerun trials that failed")
    s.add_argument("--dry-run", action="store_true", help="print the trials; write nothing")
    s.set_defaults(func=sweep)

    st = sub.add_parser("status", help="ok / failed / pending counts of a sweep (or all)")
    st.add_argument("sweep_dir", nargs="?", help="RESULTS/NAME (default: every sweep in "
                                                 "--results)")
    st.add_argument("--results", default=DEFAULT_RESULTS)
    st.set_defaults(func=status)

    pl = sub.add_parser("plot", help="draw a sweep's figures (and log them to MLflow)")
    pl.add_argument("sweep_dir", help="RESULTS/NAME")
    pl.add_argument("--out", help="output folder (default: RESULTS/NAME/figures)")
    pl.add_argument("--tracking-uri", help="MLflow store to log the figures to (default: "
                                           "RESULTS/mlflow.db if present)")
    pl.set_defaults(func=plot)

    ui = sub.add_parser("ui", help="the MLflow dashboard for a results folder")
    ui.add_argument("--results", default=DEFAULT_RESULTS)
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=ui_command)
    return p


# ----------------------------------------------------------------------------- sweep


def _plan(spec, statuses: dict, rerun_failed: bool):
    """(todo, message): the trials to run, and one line of counts for the user."""
    skip = {"ok"} if rerun_failed else {"ok", "failed"}
    todo = [t for t in spec.trials if statuses.get(t.trial_id) not in skip]
    n_failed = sum(statuses.get(t.trial_id) == "failed" for t in spec.trials)
    note = f" ({n_failed} failed; --rerun-failed retries them)" if n_failed and not rerun_failed \
        else ""
    message = (f"{spec.name}: {len(spec.trials)} trials, {len(spec.trials) - len(todo)} "
               f"finished{note}, {len(todo)} to run")
    return todo, message


def _print_table(spec, statuses: dict, todo):
    todo_ids = {t.trial_id for t in todo}
    keys = list(spec.grid) + ["seed"]
    pack_of = {t.trial_id: str(i) for i, unit in enumerate(spec.units(todo)) for t in unit}
    rows = [[t.trial_id, "run" if t.trial_id in todo_ids else "skip",
             statuses.get(t.trial_id, "-"), *[str(v) for v in t.point.values()], str(t.seed),
             *([pack_of.get(t.trial_id, "-")] if spec.pack else [])]
            for t in spec.trials]
    header = ["trial_id", "action", "status", *keys, *(["pack"] if spec.pack else [])]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


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


def _say_stale(killed: int, closed: int):
    if killed:
        print(f"marked {killed} MLflow runs left RUNNING by an earlier driver as KILLED")
    if closed:
        print(f"closed {closed} MLflow runs of trials recorded just before an earlier driver died")


def _all_done(args, spec, sweep_dir: Path, counts: str) -> int:
    """Nothing to run: no Ray, no launch run. The spec record follows the latest command, and
    runs a dead driver left open (it may die after recording its last trial) are closed."""
    from sam_lab import trials as families
    from sweeps import tracking
    from sweeps.results import Results

    lock = _lock(sweep_dir)  # it exists: its trials are recorded
    try:
        results = Results(sweep_dir, families.get(spec.experiment).Config)
        results.write_spec(spec.resolved())
        if args.tracking_uri or (sweep_dir.parent / "mlflow.db").exists():
            uri = args.tracking_uri or tracking.default_uri(sweep_dir.parent)
            tracking.check_reachable(uri)
            recorded = {t: r["status"] for t, r in results.rows.items()}
            _say_stale(*tracking.Tracker(uri, spec.name).close_stale(recorded))
    finally:
        lock.close()
    print(f"{counts}: nothing to do")
    return 0


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
    sweep_dir = root / spec.name
    todo, counts = _plan(spec, read_statuses(sweep_dir), args.rerun_failed)
    if args.dry_run:
        _print_table(spec, read_statuses(sweep_dir), todo)
        print(f"{counts} (dry run: nothing written)")
        return 0
    if not todo:
        return _all_done(args, spec, sweep_dir, counts)

    from sweeps import tracking

    uri = args.tracking_uri or tracking.default_uri(root)
    tracking.check_reachable(uri)
    check_address(args.address)
    from sweeps import launcher  # imports Ray: only once the input is known to be good

    where = launcher.connect(args.address, spec.resources)
    sigterm = signal.signal(signal.SIGTERM, _sigterm_as_sigint)
    tracker = lock = summary = None
    status = "KILLED"
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        lock = _lock(sweep_dir)
        todo, counts = _plan(spec, read_statuses(sweep_dir), args.rerun_failed)  # now locked
        results = Results(sweep_dir, families.get(spec.experiment).Config)
        results.write_spec(spec.resolved())
        if not todo:
            print(f"{counts}: nothing to do")
            return 0
        artifacts = (root / "mlartifacts" / spec.name).resolve().as_uri()
        # a tracking server stores artifacts where it was told; a local store keeps them beside
        # the results (not in ./mlruns of whatever folder the command ran from)
        served = uri.startswith(("http://", "https://", "databricks"))
        tracker = tracking.Tracker(uri, spec.name, None if served else artifacts)
        stale = tracker.close_stale({t: r["status"] for t, r in results.rows.items()})
        tracker.open_launch(spec.resolved(), len(todo), len(spec.trials) - len(todo))
        if len(todo) < len(spec.trials):
            print(f"skipping {len(spec.trials) - len(todo)} finished trials")
        _say_stale(*stale)
        print(f"{counts} on {where}; MLflow: {uri}")
        summary = launcher.run(spec, todo, results, tracker, max_concurrent=args.max_concurrent,
                               storage=args.storage)
        if summary.unfinished == 0:
            status = "FINISHED"
    except KeyboardInterrupt:
        pass
    finally:
        if tracker is not None:
            tracker.close_launch(status)
        launcher.disconnect()
        if lock is not None:
            lock.close()
        signal.signal(signal.SIGTERM, sigterm)
    if status != "FINISHED":
        command = shlex.join(["sam-lab", *argv])
        print(f"interrupted: finished trials are saved in {sweep_dir}; resume with: {command}",
              file=sys.stderr)
        return 130
    print(f"done in {summary.seconds:.0f} s: {summary.ok} ok, {summary.failed} failed -> "
          f"{sweep_dir}/trials.parquet\n  figures: sam-lab plot {sweep_dir}\n"
          f"  dashboard: sam-lab ui --results {root}")
    return 0


# ----------------------------------------------------------------------------- status, plot, ui


def _sweep_summary(sweep_dir: Path) -> str:
    import yaml

    from sweeps.results import read_statuses

    spec = yaml.safe_load((sweep_dir / "spec.yaml").read_text())
    statuses = read_statuses(sweep_dir)
    ids = spec["trial_ids"]
    ok = sum(statuses.get(i) == "ok" for i in ids)
    failed = sum(statuses.get(i) == "failed" for i in ids)
    return (f"{spec['name']}: {ok} ok, {failed} failed, {len(ids) - ok - failed} pending "
            f"({len(ids)} trials, {spec['experiment']})  {sweep_dir}")


def status(args, argv) -> int:
    if args.sweep_dir:
        sweep_dir = Path(args.sweep_dir)
        if not (sweep_dir / "spec.yaml").exists():
            raise UsageError(f"{sweep_dir}: no sweep here (no spec.yaml); run sam-lab sweep first")
        print(_sweep_summary(sweep_dir))
        return 0
    sweeps = sorted(p.parent for p in Path(args.results).glob("*/spec.yaml"))
    if not sweeps:
        raise UsageError(f"--results {args.results}: no sweeps found")
    for sweep_dir in sweeps:
        print(_sweep_summary(sweep_dir))
    return 0


def plot(args, argv) -> int:
    sweep_dir = Path(args.sweep_dir)
    if not (sweep_dir / "spec.yaml").exists():
        raise UsageError(f"{sweep_dir}: no sweep here (no spec.yaml); run sam-lab sweep first")
    from analysis import figures

    try:
        paths = figures.make(sweep_dir, Path(args.out) if args.out else sweep_dir / "figures")
    except LookupError as e:
        raise UsageError(f"{sweep_dir}: {e}") from None
    if not paths:
        print(f"{sweep_dir}: no finished trials to plot yet")
        return 0
    for path in paths:
        print(path)
    db = sweep_dir.parent / "mlflow.db"
    if args.tracking_uri or db.exists():
        from sweeps import tracking

        uri = args.tracking_uri or tracking.default_uri(sweep_dir.parent)
        tracking.check_reachable(uri)
        run_id = tracking.log_figures(uri, sweep_dir.name, paths)
        if run_id:
            print(f"logged to MLflow run {run_id} ({uri})")
    return 0


def ui_command(args, argv) -> int:
    db = Path(args.results) / "mlflow.db"
    if not db.exists():
        raise UsageError(f"--results {args.results}: no mlflow.db there; run sam-lab sweep first")
    uri = f"sqlite:///{db.resolve()}"
    print(f"MLflow UI for {uri} on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    # One worker and no job runner (GenAI evaluation jobs): a local viewer, not 12 processes.
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", args.host, "--port", str(args.port), "--workers", "1"]
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execv(sys.executable, command)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, argv)
    except InputError as e:
        print(f"sam-lab: error: {e}", file=sys.stderr)
        return 2

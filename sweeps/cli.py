"""`sam-lab`: sweep, status, plot, ui.

    sam-lab sweep sweeps/quickstart.yaml            # run (or resume: rerun the same command)
    sam-lab status results/quickstart               # ok / failed / pending
    sam-lab plot results/quickstart                 # figures -> results/quickstart/figures
    sam-lab ui                                      # MLflow dashboard on 127.0.0.1:5000

Exit codes: 0 done (failed trials are results, not errors), 2 bad input (one line on stderr,
nothing written, Ray not started), 130 interrupted (finished trials are saved), 1 a crash.
Heavy imports (Ray, MLflow, torch, seaborn) happen inside the commands that need them.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shlex
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
    rows = [[t.trial_id, "run" if t.trial_id in todo_ids else "skip",
             statuses.get(t.trial_id, "-"), *[str(v) for v in t.point.values()], str(t.seed)]
            for t in spec.trials]
    header = ["trial_id", "action", "status", *keys]
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


def sweep(args, argv) -> int:
    from sam_lab import trials as families
    from sweeps import spec as specs
    from sweeps.results import Results, read_statuses

    spec = specs.load(args.spec, args.set)
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UsageError(f"--max-concurrent: got {args.max_concurrent}; allowed: an int >= 1")
    root = Path(args.results)
    if root.exists() and not root.is_dir():
        raise UsageError(f"--results {root}: exists and is not a folder")
    sweep_dir = root / spec.name
    todo, counts = _plan(spec, read_statuses(sweep_dir), args.rerun_failed)
    if args.dry_run:
        _print_table(spec, read_statuses(sweep_dir), todo)
        print(f"{counts} (dry run: nothing written)")
        return 0
    if not todo:  # all done: no Ray, no MLflow run; the spec record follows the latest command
        Results(sweep_dir, families.get(spec.experiment).Config).write_spec(spec.resolved())
        print(f"{counts}: nothing to do")
        return 0

    from sweeps import launcher, tracking

    uri = args.tracking_uri or tracking.default_uri(root)
    tracking.check_reachable(uri)
    where = launcher.connect(args.address, spec.resources)
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
        tracker = tracking.Tracker(uri, spec.name, None if args.tracking_uri else artifacts)
        stale = tracker.kill_stale()
        tracker.open_launch(spec.resolved(), len(todo), len(spec.trials) - len(todo))
        if len(todo) < len(spec.trials):
            print(f"skipping {len(spec.trials) - len(todo)} finished trials")
        if stale:
            print(f"marked {stale} MLflow runs left RUNNING by an earlier driver as KILLED")
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
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", args.host, "--port", str(args.port)]
    os.execv(sys.executable, command)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, argv)
    except InputError as e:
        print(f"sam-lab: error: {e}", file=sys.stderr)
        return 2

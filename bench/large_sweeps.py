"""Benchmark 6: the driver's cost per trial as a sweep grows (10^2 .. 10^5 trials).

Tiny random_features trials (20 digits samples, a grid over n_features times seeds) through the
real CLI. Per sweep size N: first-trial latency (launch to the first finished trial), the
driver's CPU time per trial and trials/s over a window of finished trials, the driver's peak
RSS, and mlflow.db bytes per trial. With --stop-after K a sweep is stopped (Ctrl-C) after K
trials: how a 50,000-trial sweep starts. Then, in process, the cost of recording one trial
next to 10^5 existing rows (one new part) against rewriting the whole table (the old way).

Goals: first trial within 30 s at N = 10^5 on 2 cores; driver time per trial at 10^4 at most
1.3x that at 10^2; driver RSS at most 2 GB with 10^5 pending trials; mlflow.db <= 20 KiB/trial.

    .venv/bin/python bench/large_sweeps.py --sizes 100 1000          # minutes
    .venv/bin/python bench/large_sweeps.py --sizes 250 50000 --stop-after 250 --window 50 250
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.report import Report  # noqa: E402

SAM_LAB = str(Path(sys.executable).parent / "sam-lab")
TICK = os.sysconf("SC_CLK_TCK")


def spec_for(n: int) -> dict:
    points = next(p for p in (100, 50, 25, 10, 1) if n % p == 0)  # n_features values
    return dict(name=f"large-{n}", experiment="random_features",
                description="benchmark 6: near-empty trials",
                base=dict(dataset="digits", n_train=20), seeds=n // points,
                grid={"n_features": list(range(1, points + 1))})


def cpu_and_rss(pid: int) -> tuple[float, int]:
    """The process's own CPU seconds (user + system) and resident bytes."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


def sweep(n: int, root: Path, stop_after: int | None) -> dict:
    path = root / f"large-{n}.yaml"
    path.write_text(yaml.safe_dump(spec_for(n)))
    start = time.perf_counter()
    proc = subprocess.Popen([SAM_LAB, "sweep", str(path), "--results", str(root / "results")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finished: list[tuple[float, float]] = []  # (seconds since launch, driver CPU) per trial
    peak = [0]
    sample = [(0.0, 0)]

    def watch():  # the driver's CPU and RSS, sampled
        while proc.poll() is None:
            try:
                sample[0] = cpu_and_rss(proc.pid)
            except (OSError, IndexError):
                return
            peak[0] = max(peak[0], sample[0][1])
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    tail = []
    for line in proc.stdout:
        tail = (tail + [line])[-5:]
        if line.startswith(("ok ", "failed ", "lost ")):
            finished.append((time.perf_counter() - start, sample[0][0]))
            if stop_after and len(finished) == stop_after:
                proc.send_signal(signal.SIGINT)
    code = proc.wait()
    if code not in (0, 130):
        raise SystemExit(f"sweep of {n} failed ({code}):\n{''.join(tail)}")
    db = root / "results" / "mlflow.db"
    return {"n": n, "finished": finished, "wall": time.perf_counter() - start,
            "peak_rss": peak[0], "db_bytes": db.stat().st_size if db.exists() else 0}


def window_stats(run: dict, lo: int, hi: int) -> tuple[float, float]:
    """(driver CPU per trial, trials/s) between the lo-th and hi-th finished trials."""
    done = run["finished"]
    hi = min(hi, len(done))
    (t0, c0), (t1, c1) = done[lo - 1], done[hi - 1]
    return (c1 - c0) / (hi - lo), (hi - lo) / (t1 - t0)


def record_next_to(rows: int) -> tuple[float, float]:
    """Seconds to record one trial next to `rows` rows: as a new part (now), against rewriting
    the whole table (before). Both written the same way (temp file, fsync, rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sam_lab.trials import random_features
    from sweeps.results import Results, write_atomic

    row = {"trial_id": "x", "sweep": "s", "experiment": "random_features", "status": "ok",
           "error": None, "seed": 0, "n_features": 8, "step": 1, "test_acc": 0.5, "wall_s": 0.1,
           "node": "n", "gpu_share": 0.0, "code_version": "git:0"}
    with tempfile.TemporaryDirectory() as tmp:
        big = pa.Table.from_pylist([row | {"trial_id": f"t{i}"} for i in range(rows)])
        pq.write_table(big, Path(tmp) / "trials.parquet")
        results = Results(Path(tmp), random_features.Config)
        part, rewrite = [], []
        for i in range(7):
            start = time.perf_counter()
            results._write_part([row | {"trial_id": f"new{i}"}])  # what the writer thread does
            part.append(time.perf_counter() - start)
            start = time.perf_counter()
            table = pa.concat_tables([pq.read_table(Path(tmp) / "trials.parquet"),
                                      pa.Table.from_pylist([row])], promote_options="permissive")
            write_atomic(table, Path(tmp) / "old.parquet")
            rewrite.append(time.perf_counter() - start)
    return statistics.median(part), statistics.median(rewrite)


_STORE = "import tempfile, pathlib; d = pathlib.Path(tempfile.mkdtemp()); "
_TRACKER = "t.Tracker(f'sqlite:///{d}/mlflow.db', 'x', d)"
FIXED = {  # each step of a launch's fixed cost, timed in a fresh process
    "import the CLI and spec code": "import sweeps.cli, sweeps.spec",
    "load + check a spec (imports torch)": "import sweeps.spec as s; "
                                           "s.load('sweeps/quickstart.yaml')",
    "import the launcher (Ray Tune)": "import sweeps.launcher",
    "import MLflow (tracking)": "import sweeps.tracking, mlflow.tracking",
    "the launcher + start, stop local Ray": "import sweeps.launcher as l; "
                                            "l.connect(None, {'cpu': 1, 'gpu': 0}); l.disconnect()",
    "MLflow + migrate a new SQLite store": "from mlflow.tracking import MlflowClient; " + _STORE
                                           + "MlflowClient(f'sqlite:///{d}/mlflow.db')",
    "MLflow + copy of the cached empty store": "import sweeps.tracking as t; " + _STORE + _TRACKER,
    "both at once, as `sam-lab sweep` does": "import functools, sweeps.launcher as l, "
                                             "sweeps.tracking as t; " + _STORE
                                             + "b = t.Background(functools.partial("
                                             + _TRACKER.replace("(", ", ", 1)
                                             + "); l.connect(None, {'cpu': 1, 'gpu': 0}); "
                                             "b.ready(); b.close(); l.disconnect()",
    "import the figures code (plot)": "import analysis.figures",
}


def fixed_costs(report: Report, repeats: int = 3):
    """Median wall time of each step in a fresh interpreter (the interpreter's own start, ~0.05
    s, subtracted), so a 1-trial sweep's fixed cost can be split up."""
    def wall(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                       cwd=Path(__file__).resolve().parent.parent)
        return time.perf_counter() - start

    empty = statistics.median(wall("pass") for _ in range(repeats))
    for what, code in FIXED.items():
        seconds = statistics.median(wall(code) for _ in range(repeats)) - empty
        report.say(f"  {what:40} {seconds:5.1f} s")


def empty_store_bytes() -> int:
    """mlflow.db with its tables and one experiment, before any run."""
    from sweeps.tracking import Tracker

    with tempfile.TemporaryDirectory() as tmp:
        Tracker(f"sqlite:///{tmp}/mlflow.db", "empty", Path(tmp))
        return (Path(tmp) / "mlflow.db").stat().st_size


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10_000])
    parser.add_argument("--stop-after", type=int, help="Ctrl-C each sweep after K trials")
    parser.add_argument("--window", type=int, nargs=2, metavar=("LO", "HI"),
                        help="finished trials to time (default: 10%% .. 90%% of each sweep)")
    parser.add_argument("--no-record", action="store_true", help="skip the 10^5-row record")
    parser.add_argument("--fixed", action="store_true", help="only the fixed cost of a launch")
    args = parser.parse_args()
    report = Report("large_sweeps" + (f"_stop{args.stop_after}" if args.stop_after else ""))
    report.say(f"load average {os.getloadavg()[0]:.1f} at start (2 cores shared: indicative)")
    if args.fixed:
        report = Report("large_sweeps_fixed")
        report.say("fixed cost of a launch, step by step (median of 3, fresh processes):")
        fixed_costs(report)
        report.save()
        return
    base = empty_store_bytes()
    report.say("N        first trial  driver CPU/trial  trials/s  peak RSS  mlflow.db/trial  "
               "window")
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            run = sweep(n, Path(tmp), args.stop_after)
        done = len(run["finished"])
        lo, hi = args.window or (max(1, done // 10), max(2, done * 9 // 10))
        cpu, rate = window_stats(run, lo, hi)
        report.say(f"{n:<8} {run['finished'][0][0]:9.1f} s  {cpu * 1000:13.1f} ms  "
                   f"{rate:8.1f}  {run['peak_rss'] / 2**20:6.0f} MB  "
                   f"{(run['db_bytes'] - base) / max(done, 1) / 1024:12.1f} KiB  trials {lo}..{hi} "
                   f"({done} finished, {run['wall']:.0f} s)")
    if not args.no_record:
        part, rewrite = record_next_to(100_000)
        report.say(f"recording one trial next to 10^5 rows: {part * 1000:.1f} ms as a new part "
                   f"(on the writer thread), vs {rewrite * 1000:.0f} ms rewriting the whole "
                   "table (median of 7)")
    report.save()


if __name__ == "__main__":
    main()

"""Benchmark 4: a double-descent study through sam-lab / the same trials in a bare loop.

sam-lab: `sam-lab sweep` (local Ray, MLflow, Parquet) plus `sam-lab plot`, from a cold start.
Bare: the same trial configs run by `sam_lab.train.classify` in a pool of as many processes
as sam-lab runs trials at once (one per core, one torch thread each), nothing recorded. The
ratio of wall times is the platform's whole cost; the goal is <= 1.3. The platform side is
broken down from the sweep's own output, in the same run: when Ray and MLflow were ready (the
"N to run on ..." line), when the first trial started (a finished trial's line minus its
wall_s), when the last trial finished, the driver's exit, and the plot.

    .venv/bin/python bench/end_to_end.py [--spec sweeps/quickstart.yaml] [--set epochs=100]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
SAM_LAB = str(Path(sys.executable).parent / "sam-lab")
GOAL = 1.3
FINISHED = re.compile(r"^(ok|failed|lost) .*\((?P<wall>[0-9.]+) s\)  \[")


def _run_trial(config):
    import torch

    from sam_lab.train import classify

    torch.set_num_threads(1)
    for _ in classify(config):
        pass


def timed_sweep(cmd: list[str]) -> dict:
    """The sweep's milestones, in seconds since launch, read from its output as it comes."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    ready = first_start = last_done = None
    tail: list[str] = []
    for line in proc.stdout:
        now = time.perf_counter() - start
        tail = (tail + [line])[-5:]
        if ready is None and " to run" in line and " on " in line:
            ready = now
        if match := FINISHED.match(line):
            started = now - float(match["wall"])
            first_start = started if first_start is None else min(first_start, started)
            last_done = now
    if proc.wait():
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{''.join(tail)}")
    return {"ready": ready, "first": first_start, "last": last_done,
            "wall": time.perf_counter() - start}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "sweeps" / "quickstart.yaml"))
    parser.add_argument("--set", action="append", default=["epochs=100"], dest="sets")
    args = parser.parse_args()
    from sweeps import spec as specs

    spec = specs.load(args.spec, args.sets)
    configs = [trial.config for trial in spec.trials]
    workers = os.cpu_count()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [SAM_LAB, "sweep", args.spec, "--results", tmp]
        for s in args.sets:
            cmd += ["--set", s]
        sweep = timed_sweep(cmd)
        start = time.perf_counter()
        subprocess.run([SAM_LAB, "plot", str(Path(tmp) / spec.name)], check=True,
                       stdout=subprocess.DEVNULL)
        plot_s = time.perf_counter() - start
    platform_s = sweep["wall"] + plot_s
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_run_trial, configs, chunksize=1)
    bare_s = time.perf_counter() - start
    lines = [f"{len(configs)} trials of {Path(args.spec).name} with {' '.join(args.sets)}, "
             f"{workers} at a time; load average {load:.1f} at start, "
             f"{os.getloadavg()[0]:.1f} at end",
             f"sam-lab sweep + plot: {platform_s:.1f} s; bare loop: {bare_s:.1f} s; "
             f"ratio {platform_s / bare_s:.2f} (goal <= {GOAL})",
             f"  sweep {sweep['wall']:.1f} s: Ray and MLflow ready at {sweep['ready']:.1f} s, "
             f"first trial started at {sweep['first']:.1f} s, last trial done at "
             f"{sweep['last']:.1f} s, driver exited at {sweep['wall']:.1f} s",
             f"  plot {plot_s:.1f} s"]
    print("\n".join(lines), flush=True)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "end_to_end.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

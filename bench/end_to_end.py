"""Benchmark 4: a double-descent study through sam-lab / the same trials in a bare loop.

sam-lab: `sam-lab sweep` (local Ray, MLflow, Parquet) plus `sam-lab plot`, from a cold start.
Bare: the same trial configs run by `sam_lab.train.classify` in a pool of as many processes
as sam-lab runs trials at once (one per core, one torch thread each), nothing recorded. The
ratio of wall times is the platform's whole cost; the goal is <= 1.10.

    .venv/bin/python bench/end_to_end.py [--spec sweeps/quickstart.yaml] [--set epochs=100]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
SAM_LAB = str(Path(sys.executable).parent / "sam-lab")


def _run_trial(config):
    import torch

    from sam_lab.train import classify

    torch.set_num_threads(1)
    for _ in classify(config):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "sweeps" / "quickstart.yaml"))
    parser.add_argument("--set", action="append", default=["epochs=100"], dest="sets")
    args = parser.parse_args()
    from sweeps import spec as specs

    spec = specs.load(args.spec, args.sets)
    configs = [trial.config for trial in spec.trials]
    workers = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [SAM_LAB, "sweep", args.spec, "--results", tmp]
        for s in args.sets:
            cmd += ["--set", s]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        subprocess.run([SAM_LAB, "plot", str(Path(tmp) / spec.name)], check=True,
                       stdout=subprocess.DEVNULL)
        platform_s = time.perf_counter() - start
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_run_trial, configs, chunksize=1)
    bare_s = time.perf_counter() - start
    lines = [f"{len(configs)} trials of {Path(args.spec).name} with {' '.join(args.sets)}, "
             f"{workers} at a time",
             f"sam-lab sweep + plot: {platform_s:.1f} s; bare loop: {bare_s:.1f} s; "
             f"ratio {platform_s / bare_s:.2f} (goal <= 1.10)"]
    print("\n".join(lines), flush=True)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "end_to_end.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

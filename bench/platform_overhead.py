"""Benchmark 3: per-trial platform overhead of `sam-lab sweep` (Ray Tune + MLflow + Parquet).

Near-empty trials (random features with n_train 20 and 2 features: milliseconds of work) run
through the real CLI twice: a sweep of 1 trial and a sweep of N trials. Their wall-time
difference over N - 1 is what the platform costs per trial, start-up (Ray, MLflow) excluded.
Ray Tune's own with actor reuse is about 0.19 s here (shared/REFERENCE.md); the goal is <= 0.2 s.

    .venv/bin/python bench/platform_overhead.py [--trials 64]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).parent
SAM_LAB = str(Path(sys.executable).parent / "sam-lab")


def sweep_seconds(n_trials: int, root: Path) -> float:
    spec = dict(name=f"overhead-{n_trials}", experiment="random_features",
                description="near-empty trials for benchmark 3",
                base=dict(dataset="digits", n_train=20, n_features=2), grid={"ridge": [0.0]},
                seeds=n_trials)
    path = root / f"overhead-{n_trials}.yaml"
    path.write_text(yaml.safe_dump(spec))
    start = time.perf_counter()
    subprocess.run([SAM_LAB, "sweep", str(path), "--results", str(root / "results")], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = sweep_seconds(1, Path(tmp))
        many = sweep_seconds(args.trials, Path(tmp))
    per_trial = (many - one) / (args.trials - 1)
    lines = [f"sweep of 1 trial: {one:.1f} s; of {args.trials} trials: {many:.1f} s",
             f"per-trial platform overhead: {per_trial:.3f} s (goal <= 0.2 s; Ray Tune alone "
             "with reuse ~0.19 s here)"]
    print("\n".join(lines), flush=True)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "platform_overhead.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

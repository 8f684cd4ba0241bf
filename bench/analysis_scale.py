"""Benchmark 5: analysis at scale. Load a 10^7-row curves table and draw the width x epochs
heatmap. Goal: <= 10 s and <= 2 GB peak memory.

A synthetic sweep is written in the launcher's layout (trials.parquet, and curves/<trial_id>.parquet
with the columns `classify` rows give: trial_id, step, epoch, train/test loss and accuracy, lr):
by default 2,500 trials (25 widths x 100 seeds) x 4,000 evaluations, the size of a Nakkiran-style
epoch-wise study. Writing it is not timed. Timed: reading both tables (`analysis.load.curves`,
pandas for trials), `analysis.double_descent.epochs_table` and `heatmap` (PNG + SVG). Peak memory
is the process's maximum resident set (ru_maxrss), imports included, so the figure is what a user's
`sam-lab plot` process would need.

    .venv/bin/python bench/analysis_scale.py [--trials 2500] [--evals 4000]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analysis import load
from analysis.double_descent import epochs_table, heatmap

OUT = Path(__file__).parent / "out"
WIDTHS = np.unique(np.geomspace(2, 300, 25).astype(int))


def write_sweep(root: Path, n_trials: int, n_evals: int) -> int:
    """A synthetic double-descent sweep: test error peaks near width 47 late in training."""
    rng = np.random.default_rng(0)
    (root / "curves").mkdir(parents=True)
    epoch = np.arange(n_evals, dtype=np.int64)
    trials = []
    for i in range(n_trials):
        trial_id = f"{i:016x}"
        width = int(WIDTHS[i % len(WIDTHS)])
        peak = np.exp(-np.log(width / 47) ** 2) * (1 - np.exp(-epoch / 300))
        test_acc = np.clip(0.55 - 0.1 * peak + 0.3 * (1 - np.exp(-epoch / 50))
                           + 0.01 * rng.standard_normal(n_evals), 0, 1)
        train_acc = np.clip(1 - np.exp(-epoch * width / 2000), 0, 1)
        curve = pa.table({
            "trial_id": pa.array([trial_id] * n_evals, pa.string()),
            "step": epoch * 40, "epoch": epoch,
            "train_loss": -np.log(np.maximum(train_acc, 1e-3)), "train_acc": train_acc,
            "test_loss": -np.log(np.maximum(test_acc, 1e-3)), "test_acc": test_acc,
            "lr": np.full(n_evals, 0.01),
        })
        pq.write_table(curve, root / "curves" / f"{trial_id}.parquet")
        trials.append(dict(trial_id=trial_id, status="ok", width=width, seed=i // len(WIDTHS),
                           label_noise=0.15, rho=0.0, test_acc=float(test_acc[-1]),
                           train_acc=float(train_acc[-1])))
    pq.write_table(pa.Table.from_pylist(trials), root / "trials.parquet")
    return n_trials * n_evals


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=2500)
    parser.add_argument("--evals", type=int, default=4000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        n_rows = write_sweep(root, args.trials, args.evals)
        write_s = time.perf_counter() - start
        before = peak_mb()
        t0 = time.perf_counter()
        trials = pd.read_parquet(root / "trials.parquet")
        curves = load.curves(root, columns=["epoch", "test_acc"])  # what the heatmap reads
        t1 = time.perf_counter()
        table = epochs_table(trials, curves, x="width")
        t2 = time.perf_counter()
        heatmap(table, "width", "epoch", "test_error", OUT, "analysis_scale_heatmap",
                title=f"synthetic: {n_rows:,} curve rows")
        t3 = time.perf_counter()
    lines = [
        f"{n_rows:,} curve rows ({args.trials} trials x {args.evals} evaluations, one Parquet "
        f"file per trial), written in {write_s:.1f} s (not timed)",
        f"load {t1 - t0:.1f} s + epochs_table {t2 - t1:.1f} s + heatmap {t3 - t2:.1f} s = "
        f"{t3 - t0:.1f} s (goal <= 10 s)",
        f"peak memory {peak_mb():,.0f} MB (goal <= 2048 MB; {before:,.0f} MB before loading: "
        f"imports and writing)",
    ]
    for line in lines:
        print(line, flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "analysis_scale.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

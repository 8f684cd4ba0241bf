"""Benchmark 2: K seeds trained at once (`classify_packed`: a batched MLP forward) vs the same
K trials one after another (`classify`). Goal: >= 5x throughput for K = 16 on 2 CPU cores.

The trials are the MNIST-1D double-descent MLP (40 -> h -> h -> 10, 4000 samples, 15% label
noise, SGD lr 0.01 momentum 0.9, batch 100) at a small width, a few epochs, evaluated at the
first and last epoch; whole trials are timed (data, init, training, evaluation), plain SGD and
SAM (rho 0.05, each model its own eps). Packed and sequential runs alternate; each ratio is the
median over repeats of sequential time / packed time, in wall time and in CPU time (the latter is
not inflated while other processes hold the cores).

One torch thread per process by default: on 2 cores a sweep runs two 1-CPU trials side by side,
so the per-process ratio is the 2-core throughput ratio. (Two threads per process on a loaded
machine made tiny trials up to 20x slower here: OpenMP waits on a descheduled sibling thread.)

    .venv/bin/python bench/vmap_seeds.py [--k 16] [--width 16] [--epochs 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from report import Report

from sam_lab.train import classify
from sam_lab.vectorized import classify_packed

MNIST1D_MLP = dict(dataset="mnist1d", n_train=4000, label_noise=0.15, model="mlp", depth=2,
                   optimizer="sgd", lr=0.01, momentum=0.9, batch_size=100)


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def compare(configs, repeats):
    """Median (wall, cpu) ratios sequential / packed, and the median packed wall time."""
    def sequential():
        for cfg in configs:
            list(classify(cfg))

    def packed():
        list(classify_packed(configs))

    ratios, packed_wall = [], []
    for _ in range(repeats):
        seq, pk = timed(sequential), timed(packed)
        ratios.append((seq[0] / pk[0], seq[1] / pk[1]))
        packed_wall.append(pk[0])
    return (statistics.median(r[0] for r in ratios), statistics.median(r[1] for r in ratios),
            statistics.median(packed_wall))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = dict(MNIST1D_MLP, width=args.width, epochs=args.epochs, eval_every=args.epochs)
    list(classify({**base, "epochs": 1}))  # warm-up: builds and caches MNIST-1D
    report = Report("vmap_seeds")
    report.say(f"K={args.k} packed vs sequential, MNIST-1D MLP width {args.width}, "
               f"{args.epochs} epochs x 40 steps, {args.threads} thread(s), median of "
               f"{args.repeats}; goal >= 5x")
    for label, rho in (("sgd", 0.0), ("sam rho 0.05", 0.05)):
        configs = [{**base, "seed": seed, "rho": rho} for seed in range(args.k)]
        wall, cpu, packed_wall = compare(configs, args.repeats)
        steps = args.k * args.epochs * 40
        line = (f"{label:12s}: throughput packed / sequential {wall:.1f}x wall, {cpu:.1f}x CPU "
                f"(packed: {steps / packed_wall:.0f} model-steps/s)")
        report.say(line)
    report.save()


if __name__ == "__main__":
    main()

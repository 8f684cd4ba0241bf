"""Benchmark 1: SAM step time / base-optimizer step time, over the same batches.

Both run `sam_lab.train.train_epoch` (the training loop every classify trial runs) on the same
MNIST-1D-shaped batches (B x 1 x 40, random values: time does not depend on them), from the same
initial weights, alternating base and SAM epochs; the ratio is the median over repeats. Two
forward-backward passes make 2.0 the limit (less where the optimizer step is a visible share);
the goal is <= 2.05.

    .venv/bin/python bench/sam_step.py [--threads 1] [--repeats 7] [--steps 20]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from report import Report

from sam_lab import models
from sam_lab.optim import SAM
from sam_lab.train import train_epoch

CASES = [("mlp", 64), ("mlp", 256), ("cnn5", 16)]  # double-descent sizes on MNIST-1D
BATCH = 100


def time_epoch(model, opt, x, y):
    """CPU seconds of one epoch: unlike wall time, not inflated while other processes run."""
    generator = torch.Generator().manual_seed(0)  # outside the timing: not a training cost
    start = time.process_time()
    train_epoch(model, opt, x, y, BATCH, generator)
    return time.process_time() - start


def bench_case(name, width, repeats, steps):
    x = torch.randn(steps * BATCH, 1, 40)
    y = torch.randint(0, 10, (steps * BATCH,))
    torch.manual_seed(0)
    init = models.build(name, (1, 40), 10, width)
    kinds = {
        "base": lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9),
        "sam": lambda m: SAM(m.parameters(), torch.optim.SGD, rho=0.05, lr=0.01, momentum=0.9),
    }
    runs = {}
    for kind, make in kinds.items():
        model = copy.deepcopy(init)
        runs[kind] = (model, make(model))
        time_epoch(*runs[kind], x, y)  # warm-up
    times = {kind: [] for kind in kinds}
    for _ in range(repeats):  # interleaved, so load from other processes hits all kinds alike
        for kind, (model, opt) in runs.items():
            times[kind].append(time_epoch(model, opt, x, y) / steps)
    base = statistics.median(times["base"])
    ratios = {kind: statistics.median(s / b for s, b in zip(times[kind], times["base"]))
              for kind in kinds if kind != "base"}
    return base, {kind: statistics.median(t) for kind, t in times.items()}, ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a trial's cpu: 1)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed epoch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = Report("sam_step")
    report.say(f"SAM step / base step (SGD momentum, rho 0.05, p 2), batch {BATCH} x 1 x 40, "
               f"{args.threads} thread(s), median of {args.repeats} x {args.steps} steps; "
               "limit 2.0, goal <= 2.05")
    for name, width in CASES:
        n_params = models.count_params(models.build(name, (1, 40), 10, width))
        base, medians, ratios = bench_case(name, width, args.repeats, args.steps)
        line = (f"{name:5s} width {width:3d} ({n_params:7d} params): base {1e3 * base:.2f} ms/step"
                f" | sam {1e3 * medians['sam']:.2f} ms, ratio {ratios['sam']:.2f}")
        report.say(line)
    report.save()


if __name__ == "__main__":
    main()

"""Benchmark 1: SAM step time / base-optimizer step time, over the same batches.

Both run `sam_lab.train.train_epoch` (the training loop every classify trial runs) on the same
MNIST-1D-shaped batches (B x 1 x 40, random values: time does not depend on them), from the same
initial weights, alternating base and SAM epochs; the ratio is the median over repeats. Two
forward-backward passes make 2.0 the limit (less where the optimizer step is a visible share);
the goal is <= 2.05.

The "foreach eps" row times the fix proposed for sam_lab/optim.py (see `ForeachSAM`): the same
p = 2 perturbation from `torch._foreach_*` ops, a constant number of kernel launches instead of
about ten per parameter tensor, and no host sync. It is checked against `SAM.perturbation()`
before timing.

    .venv/bin/python bench/sam_step.py [--threads 1] [--repeats 7] [--steps 20]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from sam_lab import models
from sam_lab.optim import SAM
from sam_lab.train import train_epoch

OUT = Path(__file__).parent / "out"
CASES = [("mlp", 64), ("mlp", 256), ("cnn5", 16)]  # double-descent sizes on MNIST-1D
BATCH = 100


class ForeachSAM(SAM):
    """SAM whose first step and restore use `torch._foreach_*` ops (the proposal for optim.py).
    Here only p = 2 and one param group (what the sweeps use)."""

    @torch.no_grad()
    def first_step(self, zero_grad=False):
        group = self.param_groups[0]
        params = [p for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2)))
        # a zero or non-finite norm gives eps = 0, as in SAM.perturbation (no host sync)
        scale = torch.where(torch.isfinite(norm) & (norm > 0), group["rho"] / norm, 0.0)
        self._saved = [p.clone() for p in params]
        self._params = params
        torch._foreach_add_(params, torch._foreach_mul(grads, scale))
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def restore(self):
        if getattr(self, "_params", None):
            torch._foreach_copy_(self._params, self._saved)
            self._params = None


def _check_foreach_eps(model):
    """ForeachSAM moves the weights by SAM.perturbation()'s eps (to float tolerance)."""
    probe = copy.deepcopy(model)
    for p in probe.parameters():
        p.grad = torch.randn_like(p)
    want = [p.detach() + e for p, e in SAM(probe.parameters(), torch.optim.SGD, lr=0.1).perturbation()]
    ForeachSAM(probe.parameters(), torch.optim.SGD, lr=0.1).first_step()
    for got, w in zip(probe.parameters(), want):
        torch.testing.assert_close(got.detach(), w)


def time_epoch(model, opt, x, y):
    """CPU seconds of one epoch: unlike wall time, not inflated while other processes run."""
    start = time.process_time()
    train_epoch(model, opt, x, y, BATCH, torch.Generator().manual_seed(0))
    return time.process_time() - start


def bench_case(name, width, repeats, steps):
    x = torch.randn(steps * BATCH, 1, 40)
    y = torch.randint(0, 10, (steps * BATCH,))
    torch.manual_seed(0)
    init = models.build(name, (1, 40), 10, width)
    _check_foreach_eps(init)
    kinds = {
        "base": lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9),
        "sam": lambda m: SAM(m.parameters(), torch.optim.SGD, rho=0.05, lr=0.01, momentum=0.9),
        "sam, foreach eps": lambda m: ForeachSAM(m.parameters(), torch.optim.SGD, rho=0.05,
                                                 lr=0.01, momentum=0.9),
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
    lines = [f"SAM step / base step (SGD momentum, rho 0.05, p 2), batch {BATCH} x 1 x 40, "
             f"{args.threads} thread(s), median of {args.repeats} x {args.steps} steps; "
             "limit 2.0, goal <= 2.05"]
    print(lines[0], flush=True)
    for name, width in CASES:
        n_params = models.count_params(models.build(name, (1, 40), 10, width))
        base, medians, ratios = bench_case(name, width, args.repeats, args.steps)
        line = (f"{name:5s} width {width:3d} ({n_params:7d} params): base {1e3 * base:.2f} ms/step"
                f" | sam {1e3 * medians['sam']:.2f} ms, ratio {ratios['sam']:.2f}"
                f" | foreach eps {1e3 * medians['sam, foreach eps']:.2f} ms, ratio "
                f"{ratios['sam, foreach eps']:.2f}")
        print(line, flush=True)
        lines.append(line)
    OUT.mkdir(exist_ok=True)
    (OUT / "sam_step.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

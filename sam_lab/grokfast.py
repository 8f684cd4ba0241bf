"""Grokfast (Lee et al. 2024): amplify the slow part of the gradient before the optimizer step.

    gradient_filter = GradFilter(params, kind="ema", alpha=0.98, lamb=2.0)
    loss.backward()
    gradient_filter()          # g <- g + lamb * h
    opt.step()

- ema: h <- alpha h + (1 - alpha) g, h starting at the first gradient (the reference's
  `gradfilter_ema`).
- ma: h = the mean of the last `window` gradients; the filter is off until `window` gradients
  have been seen (the reference's `gradfilter_ma` with warmup).
Both are elementwise, so they apply unchanged to stacked (packed) parameters. With SAM the
filter sees the gradient at w + eps, the one the base step applies.
"""

from __future__ import annotations

from collections import deque

import torch

KINDS = ("none", "ema", "ma")


class GradFilter:
    def __init__(self, params, kind: str, alpha: float = 0.98, lamb: float = 2.0,
                 window: int = 100):
        if kind not in KINDS:
            raise ValueError(f"unknown grokfast filter {kind!r}; allowed: {', '.join(KINDS)}")
        self.params, self.kind = list(params), kind
        self.alpha, self.lamb, self.window = alpha, lamb, window
        self.slow = None  # ema: h per parameter; ma: a deque of past gradients per parameter

    @torch.no_grad()
    def __call__(self):
        if self.kind == "none":
            return
        grads = [p.grad for p in self.params if p.grad is not None]
        if self.kind == "ema":
            if self.slow is None:
                self.slow = [g.detach().clone() for g in grads]
            else:
                torch._foreach_lerp_(self.slow, grads, 1 - self.alpha)
            torch._foreach_add_(grads, self.slow, alpha=self.lamb)
            return
        if self.slow is None:  # the last `window` gradients and their running sum
            self.slow = [(deque(maxlen=self.window), torch.zeros_like(g)) for g in grads]
        for g, (past, total) in zip(grads, self.slow):
            if len(past) == self.window:
                total.sub_(past[0])
            past.append(g.detach().clone())
            total.add_(g)
            if len(past) == self.window:
                g.add_(total, alpha=self.lamb / self.window)

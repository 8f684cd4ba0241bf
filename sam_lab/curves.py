"""Curves phi(t), t in [0, 1], joining two weight vectors of any nn.Module (Garipov et al. 2018).

    curve = Curve(model, flatten(model_a), flatten(model_b), kind="bezier", num_bends=3)
    train_bends(curve, opt, x, y, batch_size=100, generator=g, weight_decay=5e-4)
    net = curve.at(0.5, bn_data=x)          # the template model, holding phi(0.5), BN recomputed

The weights live as flat vectors in `model.parameters()` order. `num_bends` counts every control
point, endpoints included, so 3 means one free bend; the endpoints stay fixed.
- bezier: phi(t) = sum_i C(n, i) t^i (1 - t)^(n - i) theta_i, n = num_bends - 1.
- polychain: straight segments through theta_i at t = i / n (hat-function weights).
Bends start evenly on the straight segment, so before training both kinds are the straight line
with uniform speed; `Curve(..., kind="polychain", num_bends=2)` is the straight line itself.

BatchNorm: a curve point has no running statistics of its own. `at(t, bn_data=x)` recomputes
them at that t with one pass over x in train mode, each batch weighted by its size, as Garipov et
al.'s `eval_curve.py` does at every t (their `utils.update_bn`). (`swa_utils.update_bn` weights
every batch equally, which skews the statistics when the last batch is short.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

KINDS = ("bezier", "polychain")


def flatten(model: nn.Module) -> torch.Tensor:
    """The model's parameters as one detached vector (a copy)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


@torch.no_grad()
def load_point(model: nn.Module, flat: torch.Tensor) -> nn.Module:
    """Copy a flat weight vector into the model's parameters (in place)."""
    i = 0
    for p in model.parameters():
        p.copy_(flat[i:i + p.numel()].view_as(p))
        i += p.numel()
    if i != flat.numel():
        raise ValueError(f"weight vector has {flat.numel()} entries, model has {i}")
    return model


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recompute_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 1000):
    """Reset BN running stats and re-estimate them on x: each batch's mean and variance enter
    with weight batch size / examples seen so far (momentum b / (seen + b)), so the means
    average to x's mean whatever the batch split. Modes and momenta are restored."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    modes = [(m, m.training) for m in model.modules()]
    for m in bns:
        m.reset_running_stats()
    model.train()
    seen = 0
    try:
        for i in range(0, len(x), batch_size):
            batch = x[i:i + batch_size]
            for m in bns:
                m.momentum = len(batch) / (seen + len(batch))
            model(batch)
            seen += len(batch)
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        for m, training in modes:
            m.training = training


def coefficients(kind: str, num_bends: int, t: torch.Tensor) -> torch.Tensor:
    """Weights (num_bends,) of the control points at scalar t."""
    n = num_bends - 1
    i = torch.arange(num_bends, dtype=t.dtype, device=t.device)
    if kind == "bezier":
        binom = torch.tensor([math.comb(n, k) for k in range(num_bends)], dtype=t.dtype,
                             device=t.device)
        return binom * t**i * (1 - t) ** (n - i)
    if kind == "polychain":
        return (1 - (t * n - i).abs()).clamp(min=0)
    raise ValueError(f"unknown curve {kind!r}; allowed: {', '.join(KINDS)}")


class Curve(nn.Module):
    """phi(t) over the parameters of `model`, which serves as the template (architecture and
    buffers). Only `bends` is trainable; the template's own parameters are overwritten by `at`."""

    def __init__(self, model: nn.Module, w0: torch.Tensor, w1: torch.Tensor, kind="bezier",
                 num_bends=3):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown curve {kind!r}; allowed: {', '.join(KINDS)}")
        if num_bends < 2:
            raise ValueError(f"num_bends counts the endpoints, so it must be >= 2; got {num_bends}")
        self.model, self.kind, self.num_bends = model, kind, num_bends
        self.names = [name for name, _ in model.named_parameters()]
        self.shapes = [p.shape for p in model.parameters()]
        self.register_buffer("w0", w0.detach().clone())
        self.register_buffer("w1", w1.detach().clone())
        frac = torch.arange(1, num_bends - 1, dtype=w0.dtype, device=w0.device) / (num_bends - 1)
        self.bends = nn.Parameter(self.w0 + frac[:, None] * (self.w1 - self.w0)[None])

    def control_points(self) -> torch.Tensor:
        return torch.cat([self.w0[None], self.bends, self.w1[None]])

    def point(self, t) -> torch.Tensor:
        """phi(t) as a flat vector, differentiable with respect to the bends."""
        t = torch.as_tensor(t, dtype=self.w0.dtype, device=self.w0.device)
        return coefficients(self.kind, self.num_bends, t) @ self.control_points()

    def forward(self, x, t):
        """The template's forward pass with weights phi(t) (BN in the template's mode)."""
        flat = self.point(t)
        parts = torch.split(flat, [math.prod(s) for s in self.shapes])
        params = {n: w.view(s) for n, w, s in zip(self.names, parts, self.shapes)}
        return functional_call(self.model, params, (x,))

    @torch.no_grad()
    def at(self, t, bn_data: torch.Tensor | None = None) -> nn.Module:
        """The template model holding phi(t); BN statistics recomputed on bn_data if given."""
        load_point(self.model, self.point(t))
        if bn_data is not None:
            recompute_bn(self.model, bn_data)
        return self.model


def train_bends(curve: Curve, opt, x, y, batch_size, generator, weight_decay=0.0,
                scheduler=None, loss_fn=F.cross_entropy):
    """One epoch of E_{t~U(0,1)} L(phi(t)): one t per minibatch, L2 weight decay at phi(t).

    Returns the summed loss (a tensor, no host sync per step) and the number of steps.
    """
    curve.train()
    n = len(y)
    order = torch.randperm(n, generator=generator).to(x.device)
    bs = n if batch_size == 0 else batch_size
    total = torch.zeros((), device=x.device)
    steps = 0
    for i in range(0, n, bs):
        idx = order[i:i + bs]
        t = torch.rand((), generator=generator)
        loss = loss_fn(curve(x[idx], t), y[idx])
        objective = loss
        if weight_decay > 0:
            objective = loss + 0.5 * weight_decay * curve.point(t).pow(2).sum()
        objective.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        total += loss.detach().float()
        steps += 1
    return total, steps


def barrier(values) -> float:
    """max_t v(t) - (v(0) + v(1)) / 2 over values ordered by t (Frankle et al.'s form)."""
    values = list(values)
    return max(values) - (values[0] + values[-1]) / 2


def length_weighted_mean(values, lengths) -> float:
    """Mean of v along a path per unit of arc length (trapezoid rule), from v at the samples and
    the lengths of the segments between consecutive samples."""
    v = torch.as_tensor(list(values), dtype=torch.float64)
    lengths = torch.as_tensor(list(lengths), dtype=torch.float64)
    if lengths.sum() == 0:
        return float(v.mean())
    return float((lengths * (v[1:] + v[:-1]) / 2).sum() / lengths.sum())

"""Sharpness of a trained model on a fixed batch: Hessian spectrum, trace, eps-sharpness.

    m = measure(model, F.cross_entropy, x, y, rho=0.05)   # lambda_max, hessian_trace, eps_sharpness

Everything here works on any nn.Module and a loss_fn(outputs, y) with mean reduction, on the one
batch (x, y) given; pick a fixed subset of the training set so numbers are comparable over time.

Choices:
- The model is measured in eval mode: BatchNorm uses its running statistics and dropout is off,
  so the loss is a deterministic function of the weights (the loss the model is evaluated with),
  and no BN buffer moves. Weights, buffers, .grad and every module's train/eval flag are put back
  exactly as found, and the global RNG is not touched (private generators), so measuring in the
  middle of training does not change the rest of the run.
- Hessian-vector products are double backward through one retained graph per call. Attention
  runs on the MATH backend while measuring: the fused scaled-dot-product kernels (flash on CPU,
  flash and memory-efficient on CUDA) have no double backward.
- Power iteration finds the eigenvalues of largest magnitude. Near a minimum the top one is
  lambda_max; far from one a large negative eigenvalue could come first (reported with its sign).
  Top-k uses deflation: each probe is kept orthogonal to the eigenvectors already found.
- eps_sharpness = max_{||eps||_p <= rho} L(w + eps) - L(w), estimated by `steps` of projected
  ascent. Each step adds SAM's closed-form eps at the current point (`SAM.perturbation`: the
  maximiser of the linearised loss over the ball) and rescales the sum back onto the ball if it
  left it. Radial rescaling is the exact projection for p = 2 and a feasible (not nearest) point
  for other p. One step is exactly SAM's perturbation. The best iterate counts (every iterate is
  feasible, so each is a lower bound on the true max); eps = 0 is the first, so the value is >= 0.
  adaptive=True measures ASAM's ball ||eps / T_w||_p <= rho, T_w = |w| + eta as SAM's (same
  parameters scaled), taken at the centre w; each step's direction is SAM's at the current point.
  `measure(adaptive=True)` reports both balls: eps_sharpness (the plain one, comparable across
  trials) and eps_sharpness_adaptive (the ASAM trial's own ball).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from sam_lab.optim import SAM, asam_scaled


@contextlib.contextmanager
def measuring(model: nn.Module):
    """Eval mode and the MATH attention backend inside; weights, buffers and train/eval flags
    restored exactly on exit."""
    saved_state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    saved_modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        with torch.no_grad():
            for k, v in model.state_dict(keep_vars=True).items():
                v.copy_(saved_state[k])
        for m, training in saved_modes:
            m.training = training


def _params(model):
    return [p for p in model.parameters() if p.requires_grad]


def _dot(a, b):
    return sum((x * y).sum() for x, y in zip(a, b))


def _normalised(v):
    norm = math.sqrt(float(_dot(v, v)))
    return [x / norm for x in v]


def _rademacher(params, gen):
    return [torch.randint(0, 2, p.shape, generator=gen, device=gen.device).to(p.dtype) * 2 - 1
            for p in params]


def _gaussian(params, gen):
    return [torch.randn(p.shape, generator=gen, device=gen.device).to(p.dtype) for p in params]


def _generator(params, seed):
    return torch.Generator(device=params[0].device).manual_seed(seed)


class _HVP:
    """Hessian-vector products of loss_fn(model(x), y) at the current weights."""

    def __init__(self, model, loss_fn, x, y):
        self.params = _params(model)
        loss = loss_fn(model(x), y)
        self.grads = torch.autograd.grad(loss, self.params, create_graph=True)

    def __call__(self, v):
        hv = torch.autograd.grad(self.grads, self.params, v, retain_graph=True)
        return [h.detach() for h in hv]


def top_eigenvalues(model, loss_fn, x, y, k=1, iters=100, tol=1e-4, seed=0) -> list[float]:
    """The k Hessian eigenvalues of largest magnitude, by power iteration with deflation.

    Each eigenvalue stops after `iters` products or when its Rayleigh quotient changes by less
    than tol relative.
    """
    with measuring(model):
        hvp = _HVP(model, loss_fn, x, y)
        gen = _generator(hvp.params, seed)
        found, values = [], []
        for _ in range(k):
            v, value = None, None
            for _ in range(iters):
                v = _normalised(_deflate(_gaussian(hvp.params, gen) if v is None else v, found))
                hv = _deflate(hvp(v), found)
                new = float(_dot(v, hv))
                converged = value is not None and abs(new - value) <= tol * (abs(value) + 1e-12)
                value, v = new, hv
                if converged:
                    break
            found.append(_normalised(v))
            values.append(value)
        return values


def _deflate(v, found):
    for u in found:
        c = _dot(v, u)
        v = [a - c * b for a, b in zip(v, u)]
    return v


def lambda_max(model, loss_fn, x, y, iters=100, tol=1e-4, seed=0) -> float:
    """The top Hessian eigenvalue (see top_eigenvalues)."""
    return top_eigenvalues(model, loss_fn, x, y, k=1, iters=iters, tol=tol, seed=seed)[0]


def hessian_trace(model, loss_fn, x, y, probes=100, seed=0) -> float:
    """Hutchinson's estimate mean_v v^T H v over Rademacher probes v."""
    with measuring(model):
        hvp = _HVP(model, loss_fn, x, y)
        gen = _generator(hvp.params, seed)
        total = 0.0
        for _ in range(probes):
            v = _rademacher(hvp.params, gen)
            total += float(_dot(v, hvp(v)))
        return total / probes


def _named(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _ascent_step(model, loss_fn, x, y, rho, p, adaptive, eta=0.01):
    """(loss, SAM's closed-form eps) at the model's current weights; .grad is left untouched."""
    named = _named(model)
    params = [q for _, q in named]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params)
    sam = SAM(named, torch.optim.SGD, rho=rho, p=p, adaptive=adaptive, eta=eta, lr=0.0)
    saved = [q.grad for q in params]
    for q, g in zip(params, grads):
        q.grad = g
    try:
        eps = [e for _, e in sam.perturbation()]
    finally:
        for q, g in zip(params, saved):
            q.grad = g
    return float(loss.detach()), eps, grads


def _ball_norm(eps, scales, p):
    """||eps / T_w||_p, with T_w = 1 where scales is None (and 0/0 = 0 for zero weights)."""
    parts = []
    for e, s in zip(eps, scales):
        u = e if s is None else torch.where(s > 0, e / s, torch.zeros_like(e))
        parts.append(u.flatten().float())
    return float(torch.linalg.vector_norm(torch.cat(parts), ord=p))


def first_order_sharpness(model, loss_fn, x, y, rho, p=2.0, adaptive=False, eta=0.01) -> float:
    """rho * ||g||_q (ASAM: rho * ||T_w g||_q), the linearised eps-sharpness: g . eps_SAM."""
    with measuring(model):
        _, eps, grads = _ascent_step(model, loss_fn, x, y, rho, p, adaptive, eta)
        return float(_dot(eps, grads))


def eps_sharpness(model, loss_fn, x, y, rho, p=2.0, steps=5, adaptive=False,
                  eta=0.01) -> float:
    """max_{||eps||_p <= rho} L(w + eps) - L(w) by `steps` of projected ascent (module doc)."""
    with measuring(model):
        named = _named(model)
        params = [q for _, q in named]
        w = [q.detach().clone() for q in params]
        scales = [q.detach().abs() + eta if adaptive and asam_scaled(n, q) else None
                  for n, q in named]  # T_w
        total = [torch.zeros_like(q) for q in params]
        best = base = None
        for _ in range(steps):
            loss, eps, _ = _ascent_step(model, loss_fn, x, y, rho, p, adaptive, eta)
            base = loss if base is None else base
            best = loss if best is None else max(best, loss)
            total = [a + e for a, e in zip(total, eps)]
            norm = _ball_norm(total, scales, p)
            if norm > rho:
                total = [a * (rho / norm) for a in total]
            with torch.no_grad():
                for q, w0, a in zip(params, w, total):
                    q.copy_(w0 + a)
        with torch.no_grad():
            best = max(best, float(loss_fn(model(x), y)))
        return best - base


def measure(model, loss_fn, x, y, rho=0.05, p=2.0, adaptive=False, eta=0.01, iters=100,
            probes=100, steps=5, seed=0) -> dict:
    """The pinned sharpness columns: lambda_max, hessian_trace, eps_sharpness (the plain p-ball),
    and with adaptive=True eps_sharpness_adaptive (ASAM's ball, T_w = |w| + eta)."""
    out = {
        "lambda_max": lambda_max(model, loss_fn, x, y, iters=iters, seed=seed),
        "hessian_trace": hessian_trace(model, loss_fn, x, y, probes=probes, seed=seed),
        "eps_sharpness": eps_sharpness(model, loss_fn, x, y, rho, p=p, steps=steps),
    }
    if adaptive:
        out["eps_sharpness_adaptive"] = eps_sharpness(model, loss_fn, x, y, rho, p=p,
                                                      steps=steps, adaptive=True, eta=eta)
    return out

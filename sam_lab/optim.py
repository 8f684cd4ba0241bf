"""Sharpness-aware minimization (Foret et al. 2020) with a general p-norm ball, and ASAM.

    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    loss_fn(model(x), y).backward()
    opt.first_step(zero_grad=True)            # w <- w + eps(w)
    with bn_update_once(model):               # BN running stats: count this step once
        loss_fn(model(x), y).backward()
    opt.second_step(zero_grad=True)           # w <- saved w, then base step with grad at w + eps
                                              # (opt.step() without a closure does the same)

Choices, stated because popular implementations differ:
- eps = rho * sign(g) |g|^(q-1) / (||g||_q^q)^(1/p), 1/p + 1/q = 1: the exact maximizer of the
  first-order loss over the p-ball. p = 2 is the paper's; p = inf gives rho * sign(g); p = 1 puts
  all of rho on the largest |g_i| (split evenly between exact ties). The norm is global over every
  parameter in every group, in float32. A zero (or non-finite) gradient gives eps = 0.
- eps is invariant to a positive scale of g, so under fp16 AMP the first step may run on the
  GradScaler-scaled gradients; non-finite gradients skip the perturbation and the scaler skips the
  step. bf16 autocast needs no scaler at all.
- adaptive=True is ASAM (Kwon et al. 2021): the ascent is taken in the coordinates u = T_w g with
  T_w = |w| for every tensor with ndim >= 2 (linear/conv weights) and T_w = 1 for biases and
  normalisation parameters, and eps = T_w * eps_p(u).
- Weight decay belongs to the base optimizer (as in davda54/sam); it is not in the ascent gradient
  (the JAX reference adds L2 there). Gradient clipping belongs between the second backward and
  `second_step`, so it sees only the gradient at w + eps.
- The weights are restored from a saved copy, never by subtracting eps, so a step is exact.
- The param_groups are shared with the base optimizer: LR schedulers take the SAM object itself.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn


class SAM(torch.optim.Optimizer):
    def __init__(self, params, base_optimizer, rho=0.05, p=2.0, adaptive=False, **base_kwargs):
        if not rho >= 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if not p >= 1:
            raise ValueError(f"p must be in [1, inf], got {p}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **base_kwargs))
        self.p = float(p)
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @staticmethod
    def _scale(param, group):
        """ASAM's T_w: |w| for weight matrices and kernels, 1 elsewhere."""
        return param.abs() if group["adaptive"] and param.ndim >= 2 else None

    @torch.no_grad()
    def _ascent_direction(self):
        """(param, u, T_w, rho) per parameter with a gradient, with u = T_w * g in float32."""
        items = []
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                scale = self._scale(param, group)
                u = param.grad.detach().float()
                if scale is not None:
                    u = u * scale.float()
                items.append((param, u, scale, group["rho"]))
        return items

    @torch.no_grad()
    def perturbation(self):
        """eps for every parameter with a gradient, as a list of (param, eps)."""
        items = self._ascent_direction()
        if not items:
            return []
        # Normalise by the largest |u| first: eps is scale-invariant in u, and this keeps
        # |u|^(q-1) and the q-norm finite for any q.
        umax = torch.stack([u.abs().max() for _, u, _, _ in items]).max()
        if not torch.isfinite(umax) or umax == 0:
            return [(param, torch.zeros_like(param)) for param, *_ in items]
        p = self.p
        out = []
        if math.isinf(p):  # q = 1
            directions = [u.sign() for _, u, _, _ in items]
        elif p == 1:  # q = inf: only the largest coordinates move
            ties = [(u.abs() == umax) for _, u, _, _ in items]
            count = sum(t.sum() for t in ties)
            directions = [u.sign() * t / count for (_, u, _, _), t in zip(items, ties)]
        else:
            q = p / (p - 1)
            scaled = [(u / umax).abs() for _, u, _, _ in items]
            norm = sum((s**q).sum() for s in scaled) ** (1 / p)
            directions = [
                u.sign() * s ** (q - 1) / norm for (_, u, _, _), s in zip(items, scaled)
            ]
        for (param, _, scale, rho), d in zip(items, directions):
            eps = rho * d
            if scale is not None:
                eps = eps * scale.float()
            out.append((param, eps.to(param.dtype)))
        return out

    @torch.no_grad()
    def first_step(self, zero_grad=False):
        """w <- w + eps(w). Saves w so that second_step restores it exactly."""
        for param, eps in self.perturbation():
            self.state[param]["w"] = param.detach().clone()
            param.add_(eps)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def restore(self):
        """Put back the weights saved by first_step (a no-op if nothing is saved)."""
        for group in self.param_groups:
            for param in group["params"]:
                saved = self.state[param].pop("w", None)
                if saved is not None:
                    param.copy_(saved)

    def second_step(self, zero_grad=False):
        """Restore w, then take the base optimizer's step with the gradient taken at w + eps."""
        self.step()  # through `step`, so LR schedulers and GradScaler see the optimizer step
        if zero_grad:
            self.zero_grad()

    def step(self, closure=None):
        """With a closure: both passes (the closure zeroes grads, runs forward and backward, and
        returns the loss). Without one: the second half only, i.e. `second_step`; this is what
        `GradScaler.step(opt)` calls (restore is idempotent, so the loop may `restore()` first
        when the scaler could skip the step)."""
        if closure is not None:
            closure = torch.enable_grad()(closure)
            loss = closure()
            self.first_step(zero_grad=True)
            closure()
        self.restore()
        self.base_optimizer.step()
        return loss if closure is not None else None

    def state_dict(self):
        # The base optimizer owns all persistent state (momenta); SAM's own state is transient.
        return {"base": self.base_optimizer.state_dict(), "p": self.p}

    def load_state_dict(self, state_dict):
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.p = state_dict["p"]
        # torch rebuilds param_groups on load; share the new list again.
        self.param_groups = self.base_optimizer.param_groups


_BN = (nn.modules.batchnorm._BatchNorm,)


@contextlib.contextmanager
def bn_update_once(model: nn.Module):
    """Run SAM's second forward without counting it in BatchNorm's running statistics.

    BN stays in train mode (batch statistics normalise the perturbed forward, as in the clean
    one); only the running buffers are snapshotted and put back afterwards, so after a SAM step
    they equal those after a single clean forward.
    """
    saved = []
    for m in model.modules():
        if isinstance(m, _BN) and m.track_running_stats and m.training:
            saved.append((m, m.running_mean.clone(), m.running_var.clone(),
                          m.num_batches_tracked.clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for m, mean, var, count in saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)

"""Sharpness-aware minimization (Foret et al. 2020) with a general p-norm ball, and ASAM.

    opt = SAM(model.named_parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
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
  parameter in every group, in float32. A zero (or non-finite) gradient gives eps = 0, on every
  path (the fused p = 2 one included: a non-finite entry never reaches the weights as 0 x inf).
- eps is invariant to a positive scale of g, so under fp16 AMP the first step may run on the
  GradScaler-scaled gradients; non-finite gradients skip the perturbation and the scaler skips the
  step. bf16 autocast needs no scaler at all.
- adaptive=True is ASAM (Kwon et al. 2021): the ascent is taken in the coordinates u = T_w g, and
  eps = T_w * eps_p(u), with Kwon et al.'s code's operator: T_w = |w| + eta (eta = 0.01 by
  default; the + eta lets an exactly-zero weight move) for every parameter whose name ends in
  `weight` (linear and conv kernels, embedding tables, BatchNorm/LayerNorm gains), and T_w = 1
  for biases and any other parameter (their code leaves biases out: a bias has no scale
  symmetry to undo). Names come from `model.named_parameters()`; given bare parameters, SAM
  cannot see names and scales the tensors with ndim >= 2 (kernels and tables) instead.
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


def per_model(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (K,) tensor shaped to broadcast against a stacked (K, ...) tensor."""
    return values.view(-1, *[1] * (like.ndim - 1))


def unit_ascent(us: list[torch.Tensor], p: float) -> list[torch.Tensor]:
    """Per model k (the leading dim of every tensor): the d_k on the unit p-ball maximising
    <u_k, d_k>, i.e. sign(u) |u|^(q-1) / (||u||_q^q)^(1/p) with 1/p + 1/q = 1, the norm taken
    over all of model k's tensors. A model whose u is zero or non-finite gets d = 0.

    SAM uses it with K = 1 (except for p = 2, which has a fused path); sam_lab.vectorized uses
    it for K stacked models, each with its own norm.
    """
    # Normalise by each model's largest |u| first: d is scale-invariant in u, and this keeps
    # |u|^(q-1) and the q-norm finite for any q.
    umax = torch.stack([torch.linalg.vector_norm(u.flatten(1), math.inf, dim=1) for u in us])
    umax = umax.amax(0)
    dead = ~torch.isfinite(umax) | (umax == 0)
    umax = torch.where(dead, torch.ones_like(umax), umax)
    if math.isinf(p):  # q = 1
        directions = [u.sign() for u in us]
    elif p == 1:  # q = inf: only each model's largest coordinates move
        ties = [u.abs() == per_model(umax, u) for u in us]
        count = sum(t.flatten(1).sum(1) for t in ties)
        directions = [u.sign() * t / per_model(count, u) for u, t in zip(us, ties)]
    else:
        q = p / (p - 1)
        scaled = [u / per_model(umax, u) for u in us]
        norms = torch.stack([torch.linalg.vector_norm(s.flatten(1), q, dim=1) for s in scaled])
        norm = torch.linalg.vector_norm(norms, q, dim=0) ** (q - 1)  # (sum |s|^q)^(1/p)
        if q == 2:  # p = 2: sign(s) |s|^(q-1) is s itself; skip two kernels per tensor
            directions = [s / per_model(norm, s) for s in scaled]
        else:
            directions = [s.sign() * s.abs() ** (q - 1) / per_model(norm, s) for s in scaled]
    return [torch.where(per_model(dead, d), torch.zeros_like(d), d) for d in directions]



def asam_scaled(name: str | None, param: torch.Tensor) -> bool:
    """Whether ASAM scales this parameter by |w| + eta (see the module doc)."""
    if name is None:
        return param.ndim >= 2
    return name.rsplit(".", 1)[-1].endswith("weight")


class SAM(torch.optim.Optimizer):
    def __init__(self, params, base_optimizer, rho=0.05, p=2.0, adaptive=False, eta=0.01,
                 **base_kwargs):
        if not rho >= 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if not p >= 1:
            raise ValueError(f"p must be in [1, inf], got {p}")
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, eta=eta, **base_kwargs))
        self.p = float(p)
        self._saved = None  # (params, their weights before first_step)
        self._buffers = {}  # param -> the buffer first_step saves it to, reused across steps
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @staticmethod
    def _scale(param, name, group):
        """ASAM's T_w: |w| + eta for the parameters `asam_scaled` picks, None (1) elsewhere."""
        if group["adaptive"] and asam_scaled(name, param):
            return param.abs().add_(group["eta"])
        return None

    def _ascent_direction(self):
        """(param, u, T_w, rho) per parameter with a gradient, with u = T_w * g in float32.
        Called under no_grad (as is _perturbation): a no_grad decorator costs ~3 us a call."""
        items = []
        for group in self.param_groups:
            names = group.get("param_names") or [None] * len(group["params"])
            for param, name in zip(group["params"], names):
                if param.grad is None:
                    continue
                scale = self._scale(param, name, group)
                u = param.grad
                if u.dtype != torch.float32:  # skip the no-op .float(): ~1 us per tensor
                    u = u.float()
                if scale is not None:
                    u = u * scale.float()
                items.append((param, u, scale, group["rho"]))
        return items

    def _perturbation(self):
        """(params, d, inv, rhos): eps_i = d_i * inv * rhos[i] with inv a 0-d tensor, or, where
        inv is None, eps_i = d_i. The split lets first_step add eps with one fused
        multiply-add per tensor and make no eps tensors. On a small model a SAM step costs
        about one dispatch per op and tensor, so the p = 2 path has as few ops as it can (no
        mul by rho, no eps tensors), and no host sync."""
        items = self._ascent_direction()
        if not items:
            return [], [], None, []
        params, us, scales, rhos = map(list, zip(*items))
        if self.p == 2:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(us, 2)))
            # 1 / norm is inf for a zero norm and 0 or nan for a non-finite one: all give eps = 0,
            # once u's non-finite entries are zeroed too (0 x inf would be nan)
            inv = norm.reciprocal_().nan_to_num_(0.0, 0.0, 0.0)
            us = [u.nan_to_num(0.0, 0.0, 0.0) if s is None else (u * s).nan_to_num_(0.0, 0.0, 0.0)
                  for u, s in zip(us, scales)]
            return params, us, inv, rhos
        eps = [d[0] for d in unit_ascent([u[None] for u in us], self.p)]
        torch._foreach_mul_(eps, rhos)
        return params, [e if s is None else e * s for e, s in zip(eps, scales)], None, rhos

    @torch.no_grad()
    def perturbation(self):
        """eps for every parameter with a gradient, as a list of (param, eps)."""
        params, eps, inv, rhos = self._perturbation()
        if inv is not None:
            eps = [e * inv * rho for e, rho in zip(eps, rhos)]
        return [(p, e.to(p.dtype)) for p, e in zip(params, eps)]

    @torch.no_grad()
    def first_step(self, zero_grad=False):
        """w <- w + eps(w). Saves w so that second_step restores it exactly."""
        params, eps, inv, rhos = self._perturbation()
        if params:
            # w is saved to a buffer kept across steps (a fresh clone costs an allocation per
            # tensor and step). Copies convert dtype and device exactly, so only a new shape or
            # a wider dtype (model.float() after model.half()) needs a new buffer.
            saved = [self._buffers.get(param) for param in params]
            if any(s is None or s.shape != p.shape or s.dtype != p.dtype
                   for s, p in zip(saved, params)):
                saved = [param.detach().clone() for param in params]
                self._buffers = dict(zip(params, saved))
            else:
                torch._foreach_copy_(saved, params)
            self._saved = (params, saved)
            if inv is None:
                torch._foreach_add_(params, [e.to(p.dtype) for p, e in zip(params, eps)])
            else:  # w += rho * d * inv, computed in float32 and rounded once to w's dtype
                torch._foreach_addcmul_(params, eps, [inv] * len(eps), rhos)
        if zero_grad:  # Optimizer.zero_grad() costs ~15 us of Python on a small model; every
            for param in params:  # param with a gradient is in `params`
                param.grad = None

    def restore(self):
        """Put back the weights saved by first_step (a no-op if nothing is saved)."""
        if self._saved is not None:
            with torch.no_grad():
                torch._foreach_copy_(*self._saved)
            self._saved = None

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
    one); only its `track_running_stats` flag is off for the block, so the forward neither
    updates the running buffers nor counts the batch, and after a SAM step they equal those
    after a single clean forward. (Flipping the flag costs no tensor op; snapshotting and
    restoring the buffers cost 6 per BN layer and step.)
    """
    modules = [m for m in model.modules()
               if isinstance(m, _BN) and m.track_running_stats and m.training]
    for m in modules:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in modules:
            m.track_running_stats = True

"""Train K classifiers of one shape at once: seeds and rho values packed into one process.

    trial = classify_packed([{**base, "seed": s, "rho": r} for s in range(4) for r in (0, 0.05)])
    try:
        while True:
            k, row = next(trial)      # row exactly as `classify(configs[k])` yields it
    except StopIteration as stop:
        summaries = stop.value        # one per config: classify's summary dict, or the
                                      # FloatingPointError that ended that model alone

The K models are stacked with `torch.func.stack_module_state`, so one step trains all of them:
an MLP through a hand-written batched forward (one baddbmm per layer, see `Packed`), any other
model through `functional_call` under `vmap`. Everything `classify` does per model is kept per
model: its init (`setup` with its seed), its n_train subset and label noise, its data order (its
own seeded generator), its SAM perturbation (its own gradient norm and rho; rho = 0 gives eps = 0,
so SAM and plain models mix; with `sam_m`, one eps per chunk of m examples), its Grokfast filter
state, and its gradient clipping norm. The base optimizers (SGD, Adam, AdamW) and the Grokfast
filter are elementwise, so one of each steps the stacked parameters. Each model agrees with a
separate `classify` run to float tolerance (tests/test_vectorized.py).

Configs may differ only in `seed` and `rho`, and the model must be `mlp`: BatchNorm's running
statistics do not stack (and width cannot be vmapped).

Packing pays where one small model leaves the core idle: K=16 width-16 MNIST-1D MLPs train
5-8x faster packed on one CPU core, whole trials (bench/vmap_seeds.py; a training step alone
~11x); a packed step of 16 models is ~3.7x faster than 16 separate ones at width 64, ~1.5x at
width 256.

`train_s` in a summary is the pack's wall time divided by K (the share of one model), and
`pack_size` is K.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from sam_lab import models, train
from sam_lab.config import ConfigError, parse
from sam_lab.optim import asam_scaled, per_model, unit_ascent

PACKABLE_KEYS = ("seed", "rho")
PACKABLE_MODELS = ("mlp",)  # no BatchNorm


def check_packable(cfgs: list[train.ClassifyConfig]):
    """Raise ConfigError naming the first key that keeps these configs from sharing a pack."""
    if not cfgs:
        raise ValueError("classify_packed needs at least one config")
    first = dataclasses.asdict(cfgs[0])
    for cfg in cfgs[1:]:
        for key, value in dataclasses.asdict(cfg).items():
            if key not in PACKABLE_KEYS and value != first[key]:
                raise ConfigError(key, f"packed configs may differ only in "
                                       f"{', '.join(PACKABLE_KEYS)}; got {first[key]!r} and {value!r}")
    if first["model"] not in PACKABLE_MODELS:
        raise ConfigError("model", f"packing needs a model without BatchNorm "
                                   f"({', '.join(PACKABLE_MODELS)}); got {first['model']}")


@torch.no_grad()
def packed_perturbation(params: list[torch.Tensor], rho: torch.Tensor, p: float,
                        adaptive: bool, eta: float = 0.01,
                        names: list[str] | None = None) -> list[torch.Tensor]:
    """eps per stacked parameter, each model with its own gradient norm and rho (a (K,) tensor).
    adaptive is ASAM, as in SAM: T_w = |w| + eta for the tensors `asam_scaled` picks by name
    (by ndim >= 2 per model without names)."""
    names = names or [None] * len(params)
    scales = [param.abs().float() + eta if adaptive and asam_scaled(name, param[0]) else None
              for param, name in zip(params, names)]
    us = [param.grad.float() if s is None else param.grad.float() * s
          for param, s in zip(params, scales)]
    if p == 2:  # the common case, as SAM's fused path: a few ops per tensor, not ~8
        norms = torch.stack([torch.linalg.vector_norm(u.flatten(1), dim=1) for u in us])
        # 1 / norm is inf for a zero norm and 0 or nan for a non-finite one: all give eps = 0,
        # once u's non-finite entries are zeroed too (0 x inf would be nan)
        coef = torch.linalg.vector_norm(norms, dim=0).reciprocal_().nan_to_num_(0.0, 0.0, 0.0)
        coef *= rho
        eps = [u.nan_to_num(0.0, 0.0, 0.0) * per_model(coef, u) for u in us]
        return [(e if s is None else e * s).to(param.dtype)
                for param, e, s in zip(params, eps, scales)]
    eps = []
    for param, d, s in zip(params, unit_ascent(us, p), scales):
        e = per_model(rho, d) * d
        eps.append((e if s is None else e * s).to(param.dtype))
    return eps


@torch.no_grad()
def clipper_model(params: list[torch.Tensor], max_norm: float):
    """`clip_grad_norm_(model.parameters(), max_norm)` for each model of the stack."""
    grads = [param.grad for param in params]
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])
    total = torch.linalg.vector_norm(norms, dim=0)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(per_model(coef, g))


def _mlp_plan(module: torch.nn.Module, names: list[str]):
    """For a `models.mlp` (Sequential of Flatten, then Linear and ReLU): its layers as
    ("linear", weight index, bias index or None) and ("relu",), indices into `names`; None for
    any other model, which then runs under vmap."""
    if not isinstance(module, torch.nn.Sequential) or len(module) == 0:
        return None
    layers = list(module.named_children())
    if not (isinstance(layers[0][1], torch.nn.Flatten) and layers[0][1].start_dim == 1
            and layers[0][1].end_dim == -1):
        return None
    plan = []
    for name, layer in layers[1:]:
        if type(layer) is torch.nn.Linear:
            bias = names.index(f"{name}.bias") if layer.bias is not None else None
            plan.append(("linear", names.index(f"{name}.weight"), bias))
        elif type(layer) is torch.nn.ReLU:
            plan.append(("relu",))
        else:
            return None
    return plan


class Packed:
    """K stacked models and a forward over them.

    An MLP runs through a hand-written batched forward (one baddbmm per layer); anything else
    through vmap. vmap of nn.Linear on CPU decomposes into bmm, mul and add, and its weight
    gradients come out transposed, so that AccumulateGrad copies each of them; the hand-written
    forward keeps activations feature-major, (K, features, B), so that every layer is
    baddbmm(b, W, h) on the stacked (K, out, in) weights and every gradient is contiguous. A
    packed step of K = 16 width-16 MLPs is ~2x faster than under vmap.
    """

    def __init__(self, modules: list[torch.nn.Module]):
        params, self.buffers = stack_module_state(modules)  # fresh leaves that require grad
        self.names = list(params)
        self.params = list(params.values())
        skeleton = copy.deepcopy(modules[0]).to("meta")
        self._plan = None if self.buffers else _mlp_plan(skeleton, self.names)

        def forward(params, buffers, x):
            return functional_call(skeleton, (dict(zip(self.names, params)), buffers), (x,),
                                   tie_weights=False)

        self._forward = vmap(forward)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(K, B, ...) inputs -> (K, classes, B) logits: the layout the MLP path makes, and
        cross_entropy takes as it is."""
        if self._plan is None:
            return self._forward(self.params, self.buffers, x).transpose(1, 2)
        h = x.flatten(2).transpose(1, 2)
        for op in self._plan:
            if op[0] == "relu":
                h = h.relu()
                continue
            w = self.params[op[1]]
            h = torch.bmm(w, h) if op[2] is None else torch.baddbmm(
                self.params[op[2]].unsqueeze(2), w, h)
        return h

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(K, B, ...) inputs -> (K, B, classes) logits."""
        return self.logits(x).transpose(1, 2)

    def losses(self, x, y):
        """Each model's mean cross-entropy on its own batch: (K,)."""
        return F.cross_entropy(self.logits(x), y, reduction="none").mean(1)

    @torch.no_grad()
    def load_into(self, k: int, module: torch.nn.Module) -> torch.nn.Module:
        """Copy model k's weights into `module` (one of the K built by `setup`)."""
        state = {**{n: p[k] for n, p in zip(self.names, self.params)},
                 **{n: b[k] for n, b in self.buffers.items()}}
        module.load_state_dict(state)
        return module


@torch.no_grad()
def evaluate_packed(packed: Packed, x, y, batch_size=2048):
    """Per model (mean loss, accuracy) lists, like `train.evaluate` on each model."""
    k, n = y.shape
    loss_sum = torch.zeros(k, dtype=torch.float64, device=y.device)
    correct = torch.zeros(k, dtype=torch.long, device=y.device)
    for i in range(0, n, batch_size):
        # (K, classes, b) logits; strided input chunks run 2x slower
        out = packed.logits(x[:, i:i + batch_size].contiguous()).float()
        yb = y[:, i:i + batch_size]
        loss_sum += F.cross_entropy(out, yb, reduction="none").sum(1).double()
        # max(1).indices, the first maximum as argmax gives it: argmax over the strided class
        # dim costs ~4x more
        correct += (out.max(1).indices == yb).sum(1)
    return (loss_sum / n).tolist(), (correct.double() / n).tolist()


def packed_metrics(packed, x_train, y_train, x_test, y_test, step, epoch, lr):
    """One row per model, with `train.metrics`' keys."""
    train_loss, train_acc = evaluate_packed(packed, x_train, y_train)
    test_loss, test_acc = evaluate_packed(packed, x_test, y_test)
    return [dict(step=step, epoch=epoch, train_loss=train_loss[k], train_acc=train_acc[k],
                 test_loss=test_loss[k], test_acc=test_acc[k], lr=lr)
            for k in range(len(train_loss))]


def classify_packed(configs: list[dict], checkpoint=None):
    """`classify` for K configs differing only in seed and rho. Yields (k, row); returns K
    summaries (see the module docstring). `checkpoint(get_states)` is called once, after
    training: get_states() gives each model's final {"model": state_dict} (no resume state)."""
    cfgs = [parse(train.ClassifyConfig, c) for c in configs]
    check_packable(cfgs)
    cfg = cfgs[0]
    start = time.perf_counter()
    built = [train.setup(c) for c in cfgs]  # each model's own subset, label noise and init
    datas, modules = [d for d, _ in built], [m for _, m in built]
    x_train, y_train, x_test, y_test = (torch.stack([getattr(d, name) for d in datas])
                                        for name in ("x_train", "y_train", "x_test", "y_test"))
    packed = Packed(modules)
    device = x_train.device
    rho = torch.tensor([c.rho for c in cfgs], device=device)
    is_sam = any(c.rho > 0 for c in cfgs)
    opt = train.make_optimizer(dataclasses.replace(cfg, rho=0.0), packed.params)
    grad_filter = train.gradient_filter(cfg, packed.params)
    k_models, n = y_train.shape
    per_epoch = train.steps_per_epoch(n, cfg.batch_size)
    scheduler = train.make_scheduler(cfg, opt, per_epoch * cfg.epochs)
    generators = [torch.Generator().manual_seed(c.seed) for c in cfgs]
    # each model's batch is gathered from its own rows of the flattened (K * n, ...) data by one
    # index_select, several times cheaper than 2-D advanced indexing
    x_flat, y_flat = x_train.flatten(0, 1), y_train.flatten()
    offsets = torch.arange(k_models, device=device)[:, None] * n
    bs = n if cfg.batch_size == 0 else cfg.batch_size
    autocast = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16))
                if cfg.amp == "bf16" else nullcontext)
    failed: dict[int, FloatingPointError] = {}
    # SAM saves w here before each ascent, and restores it exactly (reused: no clone per step)
    saved = [param.detach().clone() for param in packed.params] if is_sam else None

    def emit(rows):
        for k, row in enumerate(rows):
            if k not in failed:
                yield k, row

    step = 0
    yield from emit(packed_metrics(packed, x_train, y_train, x_test, y_test, step, 0,
                                   opt.param_groups[0]["lr"]))
    for epoch in range(1, cfg.epochs + 1):
        orders = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(device)
        orders += offsets
        total = torch.zeros(k_models, device=device)
        for i in range(0, n, bs):
            idx = orders[:, i:i + bs].reshape(-1)
            xb = x_flat.index_select(0, idx).view(k_models, -1, *x_flat.shape[1:])
            yb = y_flat.index_select(0, idx).view(k_models, -1)
            chunk = cfg.sam_m if is_sam and 0 < cfg.sam_m < xb.shape[1] else xb.shape[1]
            losses = torch.zeros(k_models, device=device)
            grads = None
            for c in range(0, xb.shape[1], chunk):  # one chunk unless m-sharpness
                xc, yc = xb[:, c:c + chunk], yb[:, c:c + chunk]
                weight = yc.shape[1] / yb.shape[1]
                with autocast():
                    chunk_losses = packed.losses(xc, yc)
                chunk_losses.sum().backward()  # models are independent: each its own gradient
                losses += chunk_losses.detach().float() * weight
                if is_sam:
                    with torch.no_grad():
                        torch._foreach_copy_(saved, packed.params)
                        eps = packed_perturbation(packed.params, rho, cfg.sam_p, cfg.adaptive,
                                                  cfg.asam_eta, packed.names)
                        torch._foreach_add_(packed.params, eps)
                    opt.zero_grad(set_to_none=True)
                    with autocast():
                        packed.losses(xc, yc).sum().backward()
                    with torch.no_grad():
                        torch._foreach_copy_(packed.params, saved)
                if chunk < xb.shape[1]:  # average the chunks' gradients, weighted by size
                    chunk_grads = [param.grad * weight for param in packed.params]
                    grads = chunk_grads if grads is None else torch._foreach_add(grads,
                                                                                 chunk_grads)
                    opt.zero_grad(set_to_none=True)
            if grads is not None:
                for param, g in zip(packed.params, grads):
                    param.grad = g
            if grad_filter is not None:  # on the gradient the base step applies
                grad_filter()
            if cfg.grad_clip > 0:  # on the gradient that is applied: SAM's second pass
                clipper_model(packed.params, cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            total += losses
        step += per_epoch
        for k in torch.nonzero(~torch.isfinite(total)).flatten().tolist():  # one sync per epoch
            if k not in failed:
                failed[k] = FloatingPointError(f"train loss is {total[k].item()} in epoch {epoch} "
                                               f"(step {step}); lower lr or rho")
        if len(failed) == k_models:
            break
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            yield from emit(packed_metrics(packed, x_train, y_train, x_test, y_test, step, epoch,
                                           opt.param_groups[0]["lr"]))
    if checkpoint is not None:
        checkpoint(lambda: [{"model": {k: v.clone() for k, v in
                                       packed.load_into(i, module).state_dict().items()}}
                            for i, module in enumerate(modules)])
    share = (time.perf_counter() - start) / k_models
    summaries = []
    for k, (c, data, module) in enumerate(zip(cfgs, datas, modules)):
        if k in failed:
            summaries.append(failed[k])
            continue
        summary = dict(n_params=models.count_params(module), train_s=share, pack_size=k_models)
        if c.measure_sharpness:
            summary.update(train.measure_sharpness(c, packed.load_into(k, module), data))
        summaries.append(summary)
    return summaries

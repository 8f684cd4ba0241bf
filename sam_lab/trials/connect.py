"""Mode connectivity: train two minima, train a curve between them, walk both paths.

    from sam_lab.trials import connect
    for row in connect.run({"dataset": "digits", "width": 64, "epochs": 20, "curve_epochs": 20}):
        print(row["path"], row["t"], row["train_loss"], row["test_err"])

Endpoints A and B share the data (subset and label noise are drawn with `seed`) and the whole
classify recipe; they differ in the init and minibatch seed (`seed`, `seed_b`; by default B's
seed is drawn from its own stream, `SeedSequence(seed).spawn(2)[1]`, so B of one seed is never
A of another, as `seed + 1` made it), or are loaded
from `endpoint_a` / `endpoint_b`: state_dict files (`torch.save(model.state_dict(), path)`) of the
same architecture, read with `torch.load(weights_only=True)`, or `SWEEP_DIR#TRIAL_ID`, the final
weights a sweep kept (`keep: final`) for that trial; both are checked when the trial loads them.

The curve (`curve`, `num_bends`) is trained for `curve_epochs` with the classify optimizer
(without SAM or Grokfast) at `curve_lr` (by default the endpoints' `lr`) and the classify
schedule, one t ~ U(0, 1) per minibatch, and `weight_decay` as L2 at the curve point. Then `points` evenly spaced t (61 by default) are
evaluated on the straight line and on the curve, BN statistics recomputed at every t, yielding
one row per (path, t): step (row index over the trial), path (linear | curve), t, train_loss,
train_err, test_loss, test_err. The trial returns
  barrier_{loss,err}_{linear,curve}  max_t v(t) - (v(0) + v(1)) / 2, loss = train loss and
                                     err = test error
  mean_{loss,err}_{linear,curve}     the same quantities averaged per unit of path length
  max_err_{linear,curve}             max_t test error
  length_{linear,curve}              Euclidean length of the path in weight space
  {train_loss,test_err}_{a,b}        the endpoints, with their own BN statistics
  curve_train_loss                   the curve's training objective E_t L(phi(t)) over its
                                     last epoch: near the endpoints' train loss once trained
and, with measure_sharpness, lambda_max, hessian_trace, eps_sharpness averaged over A and B.
`eval_every` does not apply: endpoint training yields no rows.

Pictures (sam_lab.landscape), each an n x n grid of rows with t = nan and coordinates u, v:
  plane_points: n      path "plane": the plane through A, B and the middle bend, in Euclidean
                       weight-space units (origin A, u along B - A), control points plus 20%
                       margins; the linear and curve rows then also carry their own u, v.
  landscape_points: n  path "landscape": A + u d1 + v d2 with two filter-normalized random
                       directions (Li et al.), u, v in [-1, 1]; with odd n, A is on the grid and
                       the v = 0 row is the 1-D slice.
Both recompute BN statistics at every grid point. Grid rows come first, path rows last, so the
trial's last row is t = 1 on the curve.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import time

import numpy as np
import torch

from sam_lab import curves, landscape, models
from sam_lab.config import ConfigError, field, parse
from sam_lab.train import (
    MAX_EPOCHS,
    ClassifyConfig,
    evaluate,
    gradient_filter,
    make_optimizer,
    make_scheduler,
    measure_sharpness,
    setup,
    steps_per_epoch,
    train_epoch,
)

BN_MODELS = ("cnn5", "resnet18k")


@dataclasses.dataclass
class Config(ClassifyConfig):
    # Fixes that changed results on purpose (issue 16): these configs get new trial ids.
    ID_CHANGES = {
        "seed_b_independent": lambda c: c["seed_b"] is None and c["endpoint_b"] is None,
        "bn_recompute_by_size": lambda c: c["model"] in BN_MODELS,
    }

    seed_b: int | None = field(default=None, metadata=dict(ge=0))  # None = its own stream
    curve: str = field(default="bezier", metadata=dict(choices=curves.KINDS))
    num_bends: int = field(default=3, metadata=dict(ge=3))  # control points incl. endpoints
    curve_epochs: int = field(default=20, metadata=dict(ge=1, le=MAX_EPOCHS))
    curve_lr: float | None = field(default=None, metadata=dict(gt=0.0))  # None = lr
    points: int = field(default=61, metadata=dict(ge=3))  # evaluated t per path
    plane_points: int = field(default=0, metadata=dict(ge=0))  # n x n plane grid; 0 = off
    landscape_points: int = field(default=0, metadata=dict(ge=0))  # n x n around A; 0 = off
    endpoint_a: str | None = None
    endpoint_b: str | None = None

    def check(self):
        super().check()
        for key in ("plane_points", "landscape_points"):
            if getattr(self, key) == 1:
                raise ConfigError(key, "got 1; allowed: 0 (off) or >= 2 points per side")
        if self.seed_b is not None and self.seed_b == self.seed and self.endpoint_b is None:
            raise ConfigError("seed_b", f"equals seed ({self.seed}): both endpoints would be the "
                                        "same network")
        for key in ("endpoint_a", "endpoint_b"):
            value = getattr(self, key)
            if value is not None and not os.path.isfile(endpoint_path(value)):
                kept = " (was that sweep run with keep: final?)" if "#" in value else ""
                raise ConfigError(key, f"{endpoint_path(value)} is not a file{kept}")


def endpoint_path(value: str) -> str:
    """A state_dict file, or `SWEEP_DIR#TRIAL_ID`: the final weights a sweep kept for that trial
    (SWEEP_DIR/weights/TRIAL_ID.pt)."""
    if "#" not in value:
        return value
    sweep_dir, trial_id = value.rsplit("#", 1)
    return os.path.join(sweep_dir, "weights", f"{trial_id}.pt")


def _endpoint(cfg, model, data, seed, checkpoint):
    """Load the checkpoint, or train with the classify loop under `seed`."""
    if checkpoint is not None:  # checked here, at load time: the file may have changed
        path = endpoint_path(checkpoint)
        try:
            state = torch.load(path, map_location=data.x_train.device, weights_only=True)
        except Exception as e:
            raise ValueError(f"endpoint {checkpoint}: cannot read {path}: "
                             f"{type(e).__name__}: {str(e).splitlines()[0]}") from None
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:
            raise ValueError(f"endpoint {checkpoint}: its weights do not fit this trial's model "
                             f"({cfg.model}, width {cfg.width}): "
                             f"{str(e).splitlines()[0][:200]}") from None
        return model
    opt = make_optimizer(cfg, model.named_parameters())
    grad_filter = gradient_filter(cfg, model.parameters())
    scheduler = make_scheduler(cfg, opt, steps_per_epoch(len(data.y_train), cfg.batch_size)
                               * cfg.epochs)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(1, cfg.epochs + 1):
        loss_sum, _ = train_epoch(model, opt, data.x_train, data.y_train, cfg.batch_size,
                                  generator, scheduler, cfg.grad_clip, cfg.amp == "bf16",
                                  sam_m=cfg.sam_m, grad_filter=grad_filter)
        if not torch.isfinite(loss_sum):
            raise FloatingPointError(f"endpoint (seed {seed}) train loss is {loss_sum.item()} in "
                                     f"epoch {epoch}; lower lr or rho")
    return model


def endpoint_b_seed(seed: int) -> int:
    """B's seed by default: from its own stream of SeedSequence(seed), never another A's seed
    (a 63-bit draw; A's seeds are small)."""
    state = np.random.SeedSequence(seed).spawn(2)[1].generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


def _train_curve(cfg, curve, data) -> float:
    """Train the bends; return the mean training loss of the last curve epoch."""
    lr = cfg.lr if cfg.curve_lr is None else cfg.curve_lr
    opt = make_optimizer(dataclasses.replace(cfg, rho=0.0), [curve.bends], lr=lr,
                         weight_decay=0.0)  # weight decay goes on the curve point instead
    scheduler = make_scheduler(cfg, opt, steps_per_epoch(len(data.y_train), cfg.batch_size)
                               * cfg.curve_epochs)
    generator = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(1, cfg.curve_epochs + 1):
        loss_sum, steps = curves.train_bends(curve, opt, data.x_train, data.y_train,
                                             cfg.batch_size, generator, cfg.weight_decay,
                                             scheduler)
        if not torch.isfinite(loss_sum):
            raise FloatingPointError(f"curve train loss is {loss_sum.item()} in curve epoch "
                                     f"{epoch}; lower curve_lr")
    return loss_sum.item() / steps


def _metrics(net, data) -> dict:
    train_loss, train_acc = evaluate(net, data.x_train, data.y_train)
    test_loss, test_acc = evaluate(net, data.x_test, data.y_test)
    return dict(train_loss=train_loss, train_err=1 - train_acc, test_loss=test_loss,
                test_err=1 - test_acc)


def walk(path: curves.Curve, data, points: int, plane=None):
    """Evaluate `points` evenly spaced t, BN recomputed at each: rows of t and _metrics (and
    plane coordinates u, v if plane = (w0, e1, e2) is given), and the Euclidean lengths of the
    segments between consecutive points."""
    bn_data = data.x_train if curves.has_batchnorm(path.model) else None
    rows, lengths, previous = [], [], None
    for t in torch.linspace(0, 1, points).tolist():
        row = dict(t=t, **_metrics(path.at(t, bn_data=bn_data), data))
        current = path.point(t).detach()
        if plane is not None:
            row["u"], row["v"] = landscape.plane_coordinates(current, *plane)
        if previous is not None:
            lengths.append(float((current - previous).norm()))
        previous = current
        rows.append(row)
    return rows, lengths


def _plane_grid(curve, n, plane):
    """n x n points on the plane through w0, w1 and the middle bend, margins included."""
    w0, e1, e2 = plane
    controls = curve.control_points().detach()
    corners = [landscape.plane_coordinates(w, w0, e1, e2) for w in controls]
    (u_lo, u_hi), (v_lo, v_hi) = landscape.plane_extent(corners)
    return w0, e1, e2, torch.linspace(u_lo, u_hi, n), torch.linspace(v_lo, v_hi, n)


def run(config: dict):
    cfg = parse(Config, config)
    start = time.perf_counter()
    seed_b = endpoint_b_seed(cfg.seed) if cfg.seed_b is None else cfg.seed_b
    data, model_a = setup(cfg)  # data subset and label noise follow `seed`, for both endpoints
    torch.manual_seed(seed_b)
    model_b = models.build(cfg.model, data.input_shape, data.n_classes, cfg.width, cfg.depth)
    model_b = model_b.to(data.x_train.device)
    model_a = _endpoint(cfg, model_a, data, cfg.seed, cfg.endpoint_a)
    model_b = _endpoint(cfg, model_b, data, seed_b, cfg.endpoint_b)

    summary = {"n_params": models.count_params(model_a)}
    for name, model in (("a", model_a), ("b", model_b)):
        summary[f"train_loss_{name}"] = evaluate(model, data.x_train, data.y_train)[0]
        summary[f"test_err_{name}"] = 1 - evaluate(model, data.x_test, data.y_test)[1]
    if cfg.measure_sharpness:
        both = [measure_sharpness(cfg, m, data) for m in (model_a, model_b)]
        summary.update({k: (both[0][k] + both[1][k]) / 2 for k in both[0]})

    w0, w1 = curves.flatten(model_a), curves.flatten(model_b)
    line = curves.Curve(copy.deepcopy(model_a), w0, w1, kind="polychain", num_bends=2)
    curve = curves.Curve(copy.deepcopy(model_a), w0, w1, kind=cfg.curve, num_bends=cfg.num_bends)
    summary["curve_train_loss"] = _train_curve(cfg, curve, data)
    plane = None
    if cfg.plane_points:
        middle_bend = curve.bends[(cfg.num_bends - 3) // 2].detach()
        plane = (w0, *landscape.plane_basis(w0, w1, middle_bend))

    grids = []
    if cfg.plane_points:
        grids.append(("plane", *_plane_grid(curve, cfg.plane_points, plane)))
    if cfg.landscape_points:
        generator = torch.Generator().manual_seed(cfg.seed)
        d1, d2 = (landscape.filter_normalized_direction(model_a, generator) for _ in range(2))
        span = torch.linspace(-1, 1, cfg.landscape_points)
        grids.append(("landscape", w0, d1, d2, span, span))
    metrics_fn = functools.partial(_metrics, data=data)
    step = 0  # grids first, so the last row (merged into trials.parquet) is B, on the curve
    for name, origin, d1, d2, us, vs in grids:
        points = landscape.grid(copy.deepcopy(model_a), origin, d1, d2, us, vs, metrics_fn,
                                bn_data=data.x_train)
        for u, v, metrics in points:
            yield dict(step=step, path=name, t=math.nan, u=u, v=v, **metrics)
            step += 1

    for name, path in (("linear", line), ("curve", curve)):
        rows, lengths = walk(path, data, cfg.points, plane)
        for row in rows:
            yield dict(step=step, path=name, **row)
            step += 1
        train_losses = [r["train_loss"] for r in rows]
        test_errs = [r["test_err"] for r in rows]
        summary[f"barrier_loss_{name}"] = curves.barrier(train_losses)
        summary[f"barrier_err_{name}"] = curves.barrier(test_errs)
        summary[f"mean_loss_{name}"] = curves.length_weighted_mean(train_losses, lengths)
        summary[f"mean_err_{name}"] = curves.length_weighted_mean(test_errs, lengths)
        summary[f"max_err_{name}"] = max(test_errs)
        summary[f"length_{name}"] = sum(lengths)
    summary["train_s"] = time.perf_counter() - start
    return summary


# The columns a refined sweep (`refine.metric`) may split on (per path: line, bezier, polychain).
METRICS = {"curve_train_loss": "numeric", **{f"{m}_{path}": "numeric"
           for m in ("barrier_loss", "barrier_err", "mean_loss", "mean_err", "max_err")
           for path in ("line", "bezier", "polychain")}}

"""Random-features regression (Belkin et al. 2019): the cleanest double descent.

Inputs x (standardised, flattened) are mapped to N random features, then a minimum-norm
least-squares fit to one-hot labels is solved in closed form (SVD, float64):
- relu:    phi(x) = relu(x W) / sqrt(N),                W ~ N(0, 1/d)
- fourier: phi(x) = sqrt(2/N) cos(x W / bandwidth + b), W ~ N(0, 1/d), b ~ U(0, 2 pi)
The test error peaks where the fit first interpolates, N = n_train, and falls again beyond it.
`ridge` > 0 adds an L2 penalty, which smooths the peak away. One evaluation row (step 1), with
the classify metric names: the losses are mean squared errors, the accuracies argmax accuracies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sam_lab import data as datasets
from sam_lab.config import ConfigError, field, parse
from sam_lab.train import resolve_device


@dataclass
class Config:
    dataset: str = field(default="digits", metadata=dict(choices=tuple(datasets.TRAIN_POOL)))
    n_train: int = field(default=400, metadata=dict(ge=1))
    n_test: int = field(default=0, metadata=dict(ge=0))
    label_noise: float = field(default=0.0, metadata=dict(ge=0.0, lt=1.0))
    data_dir: str = "data"
    download: bool = False
    data_seed: int = field(default=42, metadata=dict(ge=0))
    dim: int = field(default=20, metadata=dict(ge=1))
    n_features: int = field(default=400, metadata=dict(ge=1))
    features: str = field(default="relu", metadata=dict(choices=("relu", "fourier")))
    bandwidth: float = field(default=1.0, metadata=dict(gt=0.0))  # fourier only
    ridge: float = field(default=0.0, metadata=dict(ge=0.0))  # 0 = minimum-norm interpolation
    seed: int = field(default=0, metadata=dict(ge=0))
    device: str = field(default="auto", metadata=dict(choices=("auto", "cpu", "cuda")))
    threads: int = field(default=0, metadata=dict(ge=0))

    def check(self):
        if self.n_train > datasets.TRAIN_POOL[self.dataset]:
            raise ConfigError("n_train", f"got {self.n_train}; {self.dataset} has "
                                         f"{datasets.TRAIN_POOL[self.dataset]}")


def featurize(x, weights, offsets, kind, bandwidth):
    n_features = weights.shape[1]
    z = x.flatten(1).double() @ weights
    if kind == "relu":
        return z.relu() / math.sqrt(n_features)
    return math.sqrt(2 / n_features) * torch.cos(z / bandwidth + offsets)


def min_norm_fit(phi, targets, ridge=0.0):
    """argmin ||beta|| among minimisers of ||phi beta - Y||^2 (+ ridge ||beta||^2), via SVD."""
    u, s, vh = torch.linalg.svd(phi, full_matrices=False)
    if ridge > 0:
        inv = s / (s**2 + ridge)
    else:  # pseudo-inverse: drop singular values at round-off level, as lstsq/pinv do
        keep = s > s.max() * max(phi.shape) * torch.finfo(s.dtype).eps
        inv = torch.where(keep, 1 / s, torch.zeros_like(s))
    return vh.T @ (inv[:, None] * (u.T @ targets))


def _scores(phi, beta, y, n_classes):
    pred = phi @ beta
    onehot = torch.nn.functional.one_hot(y, n_classes).double()
    loss = ((pred - onehot) ** 2).sum(1).mean().item()
    return loss, (pred.argmax(1) == y).double().mean().item()


def run(config: dict):
    cfg = parse(Config, config)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    d = datasets.load(cfg.dataset, n_train=cfg.n_train, n_test=cfg.n_test,
                      label_noise=cfg.label_noise, seed=cfg.seed, data_seed=cfg.data_seed,
                      data_dir=cfg.data_dir, download=cfg.download, dim=cfg.dim, device=device)
    in_dim = math.prod(d.input_shape)
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    weights = (torch.randn(in_dim, cfg.n_features, generator=g, dtype=torch.float64)
               / math.sqrt(in_dim)).to(device)
    offsets = (2 * math.pi * torch.rand(cfg.n_features, generator=g, dtype=torch.float64)).to(device)
    phi_train = featurize(d.x_train, weights, offsets, cfg.features, cfg.bandwidth)
    phi_test = featurize(d.x_test, weights, offsets, cfg.features, cfg.bandwidth)
    targets = torch.nn.functional.one_hot(d.y_train, d.n_classes).double()
    beta = min_norm_fit(phi_train, targets, cfg.ridge)
    train_loss, train_acc = _scores(phi_train, beta, d.y_train, d.n_classes)
    test_loss, test_acc = _scores(phi_test, beta, d.y_test, d.n_classes)
    if not math.isfinite(train_loss):
        raise FloatingPointError(f"random-features fit gave train loss {train_loss}")
    yield dict(step=1, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
               test_acc=test_acc)
    return dict(n_params=cfg.n_features * d.n_classes, weight_norm=beta.norm().item())


# The columns a refined sweep (`refine.metric`) may split on; train_loss at round-off level marks
# interpolation (N >= n_train), which train_acc (an argmax accuracy) reaches earlier.
METRICS = {"train_loss": "numeric", "train_acc": "numeric", "test_loss": "numeric",
           "test_acc": "numeric", "weight_norm": "numeric"}

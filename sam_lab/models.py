"""Classifiers whose size is one number, `width`, so double descent can sweep it.

    model = build("cnn5", input_shape=(1, 8, 8), n_classes=10, width=16)
    count_params(model)

- mlp(width, depth): input -> depth hidden layers of `width` (ReLU) -> classes.
- cnn5(width): Nakkiran et al.'s 5-layer CNN, channels [k, 2k, 4k, 8k] with BatchNorm, then a
  linear head; Conv1d for (C, L) inputs such as MNIST-1D, Conv2d for (C, H, W) images.
- resnet18k(width): pre-activation ResNet18 with widths [k, 2k, 4k, 8k]; k = 64 is the
  standard net. Images only. Meant for GPUs.
"""

from __future__ import annotations

import math

from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def mlp(input_shape, n_classes, width, depth=2):
    dims = [math.prod(input_shape)] + [width] * depth
    layers = [nn.Flatten()]
    for d_in, d_out in zip(dims, dims[1:]):
        layers += [nn.Linear(d_in, d_out), nn.ReLU()]
    layers.append(nn.Linear(dims[-1], n_classes))
    return nn.Sequential(*layers)


def _conv_ops(input_shape):
    if len(input_shape) == 2:
        return nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveMaxPool1d
    if len(input_shape) == 3:
        return nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d
    raise ValueError(f"cnn5 needs (C, L) or (C, H, W) inputs, got shape {tuple(input_shape)}")


def cnn5(input_shape, n_classes, width, depth=None):
    conv, bn, pool, global_pool = _conv_ops(input_shape)
    channels = [input_shape[0], width, 2 * width, 4 * width, 8 * width]
    layers = []
    for i, (c_in, c_out) in enumerate(zip(channels, channels[1:])):
        layers += [conv(c_in, c_out, 3, padding=1, bias=False), bn(c_out), nn.ReLU()]
        if i > 0:  # downsample after layers 2-4, as in Nakkiran et al.
            layers.append(pool(2, ceil_mode=True))
    layers += [global_pool(1), nn.Flatten(), nn.Linear(8 * width, n_classes)]
    return nn.Sequential(*layers)


class PreActBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        out = self.bn1(x).relu()
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.bn2(out).relu())
        return out + skip


class PreActResNet18(nn.Module):
    def __init__(self, in_channels, n_classes, k):
        super().__init__()
        widths = [k, 2 * k, 4 * k, 8 * k]
        self.stem = nn.Conv2d(in_channels, k, 3, 1, 1, bias=False)
        blocks, c_in = [], k
        for i, c_out in enumerate(widths):
            for j in range(2):
                blocks.append(PreActBlock(c_in, c_out, 2 if (i > 0 and j == 0) else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c_in)
        self.head = nn.Linear(c_in, n_classes)

    def forward(self, x):
        out = self.bn(self.blocks(self.stem(x))).relu()
        return self.head(out.mean(dim=(2, 3)))


def resnet18k(input_shape, n_classes, width, depth=None):
    if len(input_shape) != 3:
        raise ValueError(f"resnet18k needs (C, H, W) images, got shape {tuple(input_shape)}")
    return PreActResNet18(input_shape[0], n_classes, width)


MODELS = {"mlp": mlp, "cnn5": cnn5, "resnet18k": resnet18k}


def build(name, input_shape, n_classes, width, depth=2) -> nn.Module:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    return MODELS[name](tuple(input_shape), n_classes, width, depth)

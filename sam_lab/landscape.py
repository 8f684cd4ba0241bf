"""Loss-landscape slices: filter-normalized planes around a minimum, and the plane of a curve.

    d1, d2 = (filter_normalized_direction(model, g) for _ in range(2))
    for u, v, m in grid(model, curves.flatten(model), d1, d2, us, vs, metrics_fn, bn_data=x):
        ...                                   # m = metrics_fn(model) at w + u d1 + v d2

- Filter normalization (Li et al. 2018): a Gaussian direction whose every filter (a row of a
  weight: one output unit of a linear layer, one kernel of a conv) is rescaled to the norm of the
  same filter of the model, so that slices of nets with different weight scales compare.
  Parameters with ndim <= 1 (biases, BN affine) get zero, as in Li et al.'s default; the 1-D
  slice is the v = 0 row of the 2-D grid.
- The plane through three weight vectors (Garipov et al. 2018, Fig. 5): origin w0, e1 along
  w1 - w0, e2 the Gram-Schmidt remainder of w2 - w0, both unit length, so (u, v) are Euclidean
  coordinates in weight space. `plane_extent` is the box holding the three points plus a margin.
- Every grid point recomputes BN statistics on bn_data (if given and the model has BN): a point
  off the minimum has no running statistics of its own, as on a curve.
The model is the template: grid() leaves it holding the last grid point; pass a copy.
"""

from __future__ import annotations

import torch
from torch import nn

from sam_lab.curves import has_batchnorm, load_point, recompute_bn


def _filter_norm(a):
    """The norm of each filter (slice along dim 0), broadcastable against a."""
    return torch.linalg.vector_norm(a, dim=tuple(range(1, a.ndim)), keepdim=True)


def filter_normalized_direction(model: nn.Module, generator: torch.Generator) -> torch.Tensor:
    parts = []
    for p in model.parameters():
        d = torch.randn(p.shape, generator=generator).to(p.device, p.dtype)
        if p.ndim <= 1:
            d.zero_()
        else:
            d *= _filter_norm(p.detach()) / (_filter_norm(d) + 1e-10)
        parts.append(d.reshape(-1))
    return torch.cat(parts)


def plane_basis(w0, w1, w2):
    """Orthonormal (e1, e2) spanning the plane through w0, w1, w2, e1 along w1 - w0."""
    e1 = w1 - w0
    e1 = e1 / e1.norm()
    e2 = (w2 - w0) - ((w2 - w0) @ e1) * e1
    norm = e2.norm()
    if norm < 1e-8 * (w2 - w0).norm().clamp(min=1e-12):
        raise ValueError("w2 lies on the line through w0 and w1: no plane")
    return e1, e2 / norm


def plane_coordinates(w, w0, e1, e2) -> tuple[float, float]:
    return float((w - w0) @ e1), float((w - w0) @ e2)


def plane_extent(coords, margin=0.2):
    """((u_min, u_max), (v_min, v_max)) of the points, widened by margin x range each side."""
    us, vs = zip(*coords)
    out = []
    for lo, hi in ((min(us), max(us)), (min(vs), max(vs))):
        pad = margin * (hi - lo)
        out.append((lo - pad, hi + pad))
    return tuple(out)


@torch.no_grad()
def grid(model, origin, d1, d2, us, vs, metrics_fn, bn_data=None):
    """Yield (u, v, metrics_fn(model)) with the model at origin + u d1 + v d2, v slowest."""
    bn_data = bn_data if bn_data is not None and has_batchnorm(model) else None
    for v in vs:
        for u in us:
            load_point(model, origin + u * d1 + v * d2)
            if bn_data is not None:
                recompute_bn(model, bn_data)
            yield float(u), float(v), metrics_fn(model)

"""Phase boundaries on a two-axis grid, uniform or refined (see sweeps/refine.py).

    crossings = boundary(trials, axes=("n_features", "n_train"), metric="train_acc",
                         threshold=0.999)

A point (one value per grid key) gets one label from its ok trials: the seed-majority class of a
categorical metric (phase, status), or for a numeric one whether the seed mean is >= threshold.
A point with no ok trial is unknown: it neither bounds a phase nor triggers refinement.

Two points are neighbours along an axis when they share every other coordinate and no sampled
point lies between them. The boundary is where neighbours disagree: each such pair is one
crossing, placed at the pair's midpoint (geometric on a log axis). The same rule decides where
the refiner samples next, so the figures draw exactly the boundary the sweep refined.
"""

from __future__ import annotations

import math
from collections import Counter

import pandas as pd

UNKNOWN = None


def point_label(values: list, threshold: float | None):
    """One label for the ok trials of a point; UNKNOWN if there are none."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return UNKNOWN
    if threshold is not None:
        return bool(sum(values) / len(values) >= threshold)
    counts = Counter(values).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:  # a tie between seeds: no majority
        return UNKNOWN
    return counts[0][0]


def labels(trials: pd.DataFrame, keys: list[str], metric: str,
           threshold: float | None) -> dict[tuple, object]:
    """{point: label} for every grid point present (`keys` in grid order), failed and lost
    trials counted as unknown."""
    out = {}
    for point, group in trials.groupby(keys, sort=False, dropna=False):
        point = point if isinstance(point, tuple) else (point,)
        ok = group[group.status == "ok"] if "status" in group else group
        values = ok[metric].tolist() if metric in ok else []
        out[tuple(_plain(v) for v in point)] = point_label(values, threshold)
    return out


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def midpoint(a, b, log: bool, integer: bool):
    """The midpoint of a and b (geometric if log), rounded for int axes; None if no new value
    lies strictly between them."""
    m = math.sqrt(a * b) if log else (a + b) / 2
    if integer:
        m = round(m)
    lo, hi = min(a, b), max(a, b)
    return m if lo < m < hi else None


def neighbours(points, axis: int):
    """Pairs of sampled points adjacent along `axis` (all other coordinates equal)."""
    lines: dict[tuple, list] = {}
    for p in points:
        lines.setdefault(p[:axis] + p[axis + 1:], []).append(p)
    for line in lines.values():
        line.sort(key=lambda p: p[axis])
        yield from zip(line, line[1:])


def disagree(a, b) -> bool:
    return a is not UNKNOWN and b is not UNKNOWN and a != b


def boundary(trials: pd.DataFrame, axes, metric: str, threshold: float | None = None,
             log=(), keys=None) -> pd.DataFrame:
    """Every crossing of the phase boundary: one row per pair of disagreeing neighbours along
    either axis, with the pair's coordinates (`lo`, `hi` along `along`), the crossing's position
    (`x`, `y`; the midpoint along `along`) and any other grid keys (one boundary per slice).
    `log` names the axes whose midpoints are geometric. Sort by `y` (or `x`) for a polyline."""
    axes = list(axes)
    keys = list(keys or axes)
    table = labels(trials, keys, metric, threshold)
    ix, iy = keys.index(axes[0]), keys.index(axes[1])
    rows = []
    for axis, name in ((ix, axes[0]), (iy, axes[1])):
        for a, b in neighbours(list(table), axis):
            if not disagree(table[a], table[b]):
                continue
            lo, hi = a[axis], b[axis]
            mid = math.sqrt(lo * hi) if name in log else (lo + hi) / 2
            x, y = (mid, a[iy]) if axis == ix else (a[ix], mid)
            others = {k: a[i] for i, k in enumerate(keys) if k not in axes}
            rows.append({**others, "along": name, "lo": lo, "hi": hi, "x": x, "y": y,
                         "label_lo": table[a], "label_hi": table[b]})
    columns = [k for k in keys if k not in axes] + ["along", "lo", "hi", "x", "y", "label_lo",
                                                     "label_hi"]
    return pd.DataFrame(rows, columns=columns)


def is_uniform(frame: pd.DataFrame, x: str, y: str) -> bool:
    """Whether the sampled (x, y) points form a full tensor grid (a plain heatmap fits)."""
    points = frame[[x, y]].drop_duplicates()
    return len(points) == points[x].nunique() * points[y].nunique()


def nearest_fill(ax, frame: pd.DataFrame, x: str, y: str, value: str, log=(), resolution=240,
                 **mesh_kw):
    """Colour the plane by the `value` of the nearest sampled point (distances measured in axis
    units, log10 on log axes, each axis scaled to [0, 1]): a non-uniform, refined grid drawn at
    its own resolution. Returns (mesh x, mesh y, raster) for a boundary contour."""
    import numpy as np

    points = frame[[x, y, value]].dropna(subset=[x, y])

    def scale(values, name):
        values = np.asarray(values, dtype=float)
        return np.log10(values) if name in log else values

    px, py = scale(points[x], x), scale(points[y], y)
    lo_x, hi_x, lo_y, hi_y = px.min(), px.max(), py.min(), py.max()
    pad_x, pad_y = 0.5 * _step(px), 0.5 * _step(py)
    gx = np.linspace(lo_x - pad_x, hi_x + pad_x, resolution)
    gy = np.linspace(lo_y - pad_y, hi_y + pad_y, resolution)
    mx, my = np.meshgrid(gx, gy)
    span_x, span_y = max(hi_x - lo_x, 1e-12), max(hi_y - lo_y, 1e-12)
    d = ((mx[..., None] - px) / span_x) ** 2 + ((my[..., None] - py) / span_y) ** 2
    raster = np.asarray(points[value], dtype=float)[d.argmin(-1)]
    ex, ey = (10 ** gx if x in log else gx), (10 ** gy if y in log else gy)
    ax.pcolormesh(ex, ey, raster, shading="nearest", **mesh_kw)
    if x in log:
        ax.set_xscale("log")
    if y in log:
        ax.set_yscale("log")
    return ex, ey, raster


def _step(values) -> float:
    import numpy as np

    distinct = np.unique(values)
    return float(np.diff(distinct).min()) if len(distinct) > 1 else 1.0


def draw_boundary(ax, ex, ey, raster, levels, **kw):
    """The boundary between fill classes, as the contour of the nearest-fill raster."""
    import numpy as np

    if len(np.unique(raster[np.isfinite(raster)])) > 1:
        ax.contour(ex, ey, raster, levels=levels, colors=kw.pop("colors", "black"),
                   linewidths=kw.pop("linewidths", 1.5), **kw)

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

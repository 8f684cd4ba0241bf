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
    # ints round to the nearest int; floats to 4 significant digits, which keeps labels and
    # configs readable and is far finer than any number of halvings a sweep can afford
    m = round(m) if integer else float(f"{m:.4g}")
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


# Drawing a refined (non-uniform) grid. "Nearest" is measured in the plane the refiner halves:
# log10 on log axes, each axis scaled to [0, 1], so the midpoints `boundary` places a crossing at
# are midpoints of the fill too (the edge between two neighbours' regions passes through their
# midpoint unless a third point is nearer to it).

ROUND_SIZES = (30, 15, 8, 4)  # marker area (pt²) of points added in round 0, 1, 2, 3+
BOUNDARY_LINE = dict(color="black", lw=1.6, solid_capstyle="round", zorder=4)


def is_refined(trials: pd.DataFrame) -> bool:
    """Whether the trials include points a refinement round added (a `round` above 0): their
    grid is drawn at its own resolution, not as a heatmap of the spec's grid."""
    return "round" in trials and bool((trials["round"].fillna(0) > 0).any())


def is_uniform(frame: pd.DataFrame, x: str, y: str) -> bool:
    """Whether the sampled (x, y) points form a full tensor grid (a plain heatmap fits)."""
    points = frame[[x, y]].drop_duplicates()
    return len(points) == points[x].nunique() * points[y].nunique()


def _plane(xs, ys, log, names, resolution):
    """The raster's centres (gx, gy) in plane units, and the scale that maps data to them."""
    import numpy as np

    def to_plane(values, name):
        values = np.asarray(values, dtype=float)
        return np.log10(values) if name in log else values

    px, py = to_plane(xs, names[0]), to_plane(ys, names[1])
    pad_x, pad_y = 0.5 * _step(px), 0.5 * _step(py)
    gx = np.linspace(px.min() - pad_x, px.max() + pad_x, resolution)
    gy = np.linspace(py.min() - pad_y, py.max() + pad_y, resolution)
    span = (max(np.ptp(px), 1e-12), max(np.ptp(py), 1e-12))
    return px, py, gx, gy, span


def _nearest(px, py, gx, gy, span):
    """Index of the nearest sampled point for every raster cell (rows along y)."""
    import numpy as np
    from scipy.spatial import cKDTree

    mx, my = np.meshgrid(gx, gy)
    tree = cKDTree(np.column_stack([px / span[0], py / span[1]]))
    _, index = tree.query(np.column_stack([mx.ravel() / span[0], my.ravel() / span[1]]))
    return index.reshape(mx.shape)


def _to_data(values, name, log):
    return 10 ** values if name in log else values


def _step(values) -> float:
    import numpy as np

    distinct = np.unique(values)
    return float(np.diff(distinct).min()) if len(distinct) > 1 else 1.0


def nearest_fill(ax, frame: pd.DataFrame, x: str, y: str, value: str, log=(), resolution=240,
                 **mesh_kw):
    """Colour the plane by the `value` of the nearest point of `frame` (one row per sampled
    point): a non-uniform, refined grid drawn at its own resolution. NaN and inf values are
    drawn in the colour map's "bad" colour. Returns the QuadMesh."""
    import numpy as np

    points = frame.dropna(subset=[x, y])
    px, py, gx, gy, span = _plane(points[x], points[y], log, (x, y), resolution)
    raster = np.asarray(points[value], dtype=float)[_nearest(px, py, gx, gy, span)]
    return ax.pcolormesh(_to_data(gx, x, log), _to_data(gy, y, log),
                         np.ma.masked_invalid(raster), shading="nearest", **mesh_kw)


def polyline(crossings: pd.DataFrame, axes):
    """The crossings as one polyline ((n, 2) array of data (x, y)) when the boundary is a
    function of one axis: crossings along x, one per row, sorted by y (or along y, one per
    column, sorted by x; the form with more vertices wins). None when neither fits (several
    crossings on a line, e.g. a phase between two others)."""

    best = None
    for along, other in ((axes[0], "y"), (axes[1], "x")):
        part = crossings[crossings["along"] == along]
        if len(part) < 2 or part[other].duplicated().any():
            continue
        if best is None or len(part) > len(best):
            best = part.sort_values(other)
    return None if best is None else best[["x", "y"]].to_numpy(dtype=float)


def boundary_lines(trials: pd.DataFrame, axes, metric: str, threshold: float | None = None,
                   log=(), resolution=240) -> list:
    """The boundary as polylines ((n, 2) arrays of data (x, y)), for one slice (`trials` varies
    no grid key but `axes`). A boundary that is a function of one axis is the `polyline` through
    the crossings of `boundary` (between sampled rows it is linear in the plane); any other is
    traced as the edges between the nearest-fill regions of points with different labels
    (unknown points left out): they cut the segment between every pair of disagreeing
    neighbours."""
    import contourpy
    import numpy as np

    x, y = axes
    line = polyline(boundary(trials, (x, y), metric, threshold, log=log), (x, y))
    if line is not None:
        return [line]
    table = {p: lab for p, lab in labels(trials, [x, y], metric, threshold).items()
             if lab is not UNKNOWN}
    classes = sorted({repr(lab) for lab in table.values()})
    if len(classes) < 2:
        return []
    points = list(table)
    px, py, gx, gy, span = _plane([p[0] for p in points], [p[1] for p in points], log, (x, y),
                                  resolution)
    codes = np.array([classes.index(repr(table[p])) for p in points])[
        _nearest(px, py, gx, gy, span)]
    lines = []
    for code in range(len(classes) - 1):  # the edge of each class but the last covers all edges
        generator = contourpy.contour_generator(gx, gy, (codes == code).astype(float))
        lines += [np.column_stack([_to_data(line[:, 0], x, log), _to_data(line[:, 1], y, log)])
                  for line in generator.lines(0.5) if len(line) > 1]
    return lines


def draw_lines(ax, lines, label: str) -> None:
    """The boundary polylines, one legend entry; each line has gid "boundary". A white halo
    keeps the black line visible on the darkest fill."""
    from matplotlib import patheffects

    halo = [patheffects.withStroke(linewidth=3.2, foreground="white")]
    for i, line in enumerate(lines):
        ax.plot(line[:, 0], line[:, 1], label=label if i == 0 else "_", gid="boundary",
                path_effects=halo, **BOUNDARY_LINE)


def line_words(metric: str, threshold: float | None) -> str:
    """'estimated boundary (train loss = 1e-08)', for the legend."""
    from analysis import common

    where = f"{common.name(metric)} = {threshold:g}" if threshold is not None else \
        f"{common.name(metric)} changes"
    return f"estimated boundary ({where})"


def mark_points(ax, points: pd.DataFrame, x: str, y: str, counts: bool = True) -> list:
    """The sampled points, by round (the grid largest, each round smaller), and the failed ones
    (every trial failed) as red x. `points`: one row per point with x, y, `round`, `failed`.
    Returns legend handles."""
    from matplotlib.lines import Line2D

    from analysis import common

    handles = []
    ok = points[~points["failed"]]
    for round_, group in ok.groupby("round"):
        size = ROUND_SIZES[min(int(round_), len(ROUND_SIZES) - 1)]
        ax.scatter(group[x], group[y], s=size, facecolor="white", edgecolor="black",
                   linewidths=0.6, zorder=5, gid=f"round{int(round_)}")
        words = "grid (round 0)" if round_ == 0 else f"round {int(round_)}"
        handles.append(Line2D([], [], ls="", marker="o", mfc="white", mec="black", mew=0.6,
                              ms=size ** 0.5,
                              label=f"{words}: {len(group)} points" if counts else words))
    failed = points[points["failed"]]
    if len(failed):
        ax.scatter(failed[x], failed[y], gid="failed", **common.FAILED)
        handles.append(Line2D([], [], ls="", marker="x", color=common.FAILED["color"],
                              label=f"failed point ({len(failed)})" if counts else
                              "failed point"))
    return handles


def missing_points(trials: pd.DataFrame, x: str, y: str, xs, ys) -> pd.DataFrame:
    """The round-0 grid points (xs by ys) with no trial row at all."""
    have = set(map(tuple, trials[[x, y]].drop_duplicates().to_numpy().tolist()))
    return pd.DataFrame([(a, b) for a in xs for b in ys if (a, b) not in have], columns=[x, y])


def point_table(trials: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """One row per sampled (x, y): its round (0 when the table has no `round` column) and
    whether every trial there failed."""
    rounds = trials["round"] if "round" in trials else pd.Series(0, index=trials.index)
    frame = trials.assign(round=rounds.fillna(0).astype(int),
                          failed=trials["status"] == "failed")
    return frame.groupby([x, y], as_index=False).agg(round=("round", "min"),
                                                     failed=("failed", "all"))


def refined_plane(ax, trials: pd.DataFrame, fill: pd.DataFrame, x: str, y: str, value: str,
                  ticks: tuple, refine: dict | None = None, default_metric: str | None = None,
                  missing: pd.DataFrame | None = None, counts: bool = True, **mesh_kw):
    """A refined grid on `ax`: the nearest fill of `fill[value]` (one row per point with a
    result), the estimated boundary (metric and threshold from the spec's `refine` block when it
    refines these axes, else `default_metric` if given), the sampled points by round, failed
    points as red x and `missing` grid points as grey circles; ticks at `ticks` (the round-0
    grid values of x and y). Legend labels count the points unless `counts` is False (panels
    that share one legend). Returns (the fill's QuadMesh or None, legend handles)."""
    from matplotlib.lines import Line2D

    from analysis import common

    log = _log_axes(refine, x, y, ticks)
    mesh = nearest_fill(ax, fill, x, y, value, log=log, **mesh_kw) if len(fill) else None
    handles = []
    rule = _rule(refine, x, y, default_metric)
    if rule is not None:
        metric, threshold = rule
        lines = boundary_lines(trials, (x, y), metric, threshold, log=log)
        if lines:
            draw_lines(ax, lines, line_words(metric, threshold))
            handles.append(Line2D([], [], label=line_words(metric, threshold), **BOUNDARY_LINE))
    handles += mark_points(ax, point_table(trials, x, y), x, y, counts)
    if missing is not None and len(missing):
        ax.scatter(missing[x], missing[y], gid="missing", **common.MISSING)
        handles.append(Line2D([], [], ls="", marker="o", mfc="none", mec="0.45",
                              label="grid point with no trial" +
                              (f" ({len(missing)})" if counts else "")))
    common.value_axis(ax, "x", ticks[0])
    common.value_axis(ax, "y", ticks[1])
    ax.set(xlabel=common.label(x), ylabel=common.label(y))
    return mesh, handles


def _log_axes(refine, x, y, ticks) -> tuple:
    """The axes measured in log10: the refine block's spacing where it names the axis, else
    log when the run values span 8x or more (as common.value_axis scales them)."""
    spacing = _spacing(refine)
    out = []
    for name, values in zip((x, y), ticks):
        values = [float(v) for v in values]
        wide = bool(values) and min(values) > 0 and max(values) / min(values) >= 8
        if spacing.get(name, "log" if wide else "linear") == "log":
            out.append(name)
    return tuple(out)


def _spacing(refine) -> dict:
    if not isinstance(refine, dict) or not isinstance(refine.get("axes"), list):
        return {}
    spacing = refine.get("spacing", "log")
    return {a: spacing for a in refine["axes"]} if isinstance(spacing, str) else dict(spacing)


def _rule(refine, x, y, default_metric):
    """(metric, threshold) of the boundary drawn on the (x, y) plane, or None."""
    if isinstance(refine, dict) and set(refine.get("axes") or ()) == {x, y}:
        return refine["metric"], refine.get("threshold")
    return (default_metric, None) if default_metric else None

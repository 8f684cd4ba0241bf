"""Adaptive boundary refinement: the spec key `refine`.

    refine:
      axes: [train_fraction, weight_decay]   # two numeric grid keys
      metric: phase            # a trials.parquet column: categorical, or numeric with threshold
      threshold: 0.99          # numeric only: the sides are metric >= threshold and < threshold
      rounds: 3                # each round halves the spacing between neighbours that disagree
      spacing: log             # log | linear, or {axis: log|linear}

Round 0 is the spec's grid. Each later round labels every sampled point (analysis.boundary) and
adds, for every seed:
- the midpoint between each pair of neighbours along an axis that disagree, and
- the centre of each cell (adjacent coordinates on both axes, all four corners sampled) whose
  corners disagree.
Midpoints are geometric on a log axis and rounded on an int axis; a point is never added twice,
nor where no new int lies between. Other grid keys are held fixed: each of their combinations is
refined on its own. Unknown points (every trial failed or lost) trigger nothing.

The rounds are a pure function of what is recorded, so a resumed or deepened (`--set rounds=N`)
sweep recomputes them and runs only the trials not yet recorded.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from analysis.boundary import disagree, midpoint, neighbours

KEYS = ("axes", "metric", "threshold", "rounds", "spacing")


class RefineError(ValueError):
    """A bad refine block; str(e) is the one line shown (the caller adds the file)."""


@dataclass(frozen=True)
class Refine:
    axes: tuple
    metric: str
    threshold: float | None
    rounds: int
    spacing: dict  # axis -> "log" | "linear"

    def log_axes(self) -> tuple:
        return tuple(a for a in self.axes if self.spacing[a] == "log")


def parse(value, grid: dict, metrics: dict) -> Refine:
    """Check a refine block against the spec's grid and the family's metrics
    ({name: "numeric" | "categorical"}); raise RefineError naming the key."""
    if not isinstance(value, dict):
        raise RefineError("refine: expected a mapping with keys axes, metric, rounds "
                          "(threshold, spacing optional)")
    for key in value:
        if key not in KEYS:
            raise RefineError(f"refine.{key}: unknown key; allowed: {', '.join(KEYS)}")
    axes = value.get("axes")
    if not isinstance(axes, list) or len(axes) != 2 or len(set(map(str, axes))) != 2:
        raise RefineError(f"refine.axes: got {axes!r}; allowed: a list of two grid keys")
    for axis in axes:
        if axis not in grid:
            raise RefineError(f"refine.axes: {axis!r} is not a grid key; allowed: "
                              f"{', '.join(grid)}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in grid[axis]):
            raise RefineError(f"refine.axes: grid.{axis} is not numeric ({grid[axis]!r})")
        if len(grid[axis]) < 2:
            raise RefineError(f"refine.axes: grid.{axis} needs at least two values to refine")
    metric = value.get("metric")
    if metric not in metrics:
        raise RefineError(f"refine.metric: got {metric!r}; allowed: a column the experiment "
                          f"reports: {', '.join(sorted(metrics))}")
    threshold = value.get("threshold")
    if metrics[metric] == "categorical" and threshold is not None:
        raise RefineError(f"refine.threshold: {metric} is categorical; a threshold is only for "
                          "numeric metrics")
    if metrics[metric] == "numeric":
        ok = isinstance(threshold, (int, float)) and not isinstance(threshold, bool) \
            and math.isfinite(threshold)
        if not ok:
            raise RefineError(f"refine.threshold: got {threshold!r}; allowed: a finite number "
                              f"(the {metric} value that splits the two phases)")
        threshold = float(threshold)
    rounds = value.get("rounds")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise RefineError(f"refine.rounds: got {rounds!r}; allowed: an int >= 0")
    spacing = value.get("spacing", "log")
    spacing = {a: spacing for a in axes} if isinstance(spacing, str) else spacing
    if not isinstance(spacing, dict) or set(spacing) != set(axes):
        raise RefineError(f"refine.spacing: got {value.get('spacing')!r}; allowed: log, linear, "
                          "or a mapping of each axis to log or linear")
    for axis, kind in spacing.items():
        if kind not in ("log", "linear"):
            raise RefineError(f"refine.spacing.{axis}: got {kind!r}; allowed: log, linear")
        if kind == "log" and min(grid[axis]) <= 0:
            raise RefineError(f"refine.spacing: log on {axis} needs values > 0, got "
                              f"{min(grid[axis])}")
    return Refine(tuple(axes), metric, threshold, rounds, dict(spacing))


def next_points(refine: Refine, keys: list, table: dict, integer: set) -> list[tuple]:
    """New grid points (tuples in `keys` order) for the next round, from {point: label} of every
    point sampled so far; sorted, none already sampled."""
    ix, iy = keys.index(refine.axes[0]), keys.index(refine.axes[1])
    log = set(refine.log_axes())
    new = set()

    def mid(axis_index, a, b):
        name = keys[axis_index]
        return midpoint(a, b, name in log, name in integer)

    for axis in (ix, iy):  # neighbours along each axis
        for a, b in neighbours(list(table), axis):
            if disagree(table[a], table[b]):
                m = mid(axis, a[axis], b[axis])
                if m is not None:
                    new.add(a[:axis] + (m,) + a[axis + 1:])
    slices: dict[tuple, dict] = {}  # cells, per combination of the other keys
    for p in table:
        slices.setdefault(tuple(v for i, v in enumerate(p) if i not in (ix, iy)), {})[
            (p[ix], p[iy])] = p
    for points in slices.values():
        xs = sorted({x for x, _ in points})
        ys = sorted({y for _, y in points})
        for (x0, x1), (y0, y1) in itertools.product(zip(xs, xs[1:]), zip(ys, ys[1:])):
            corners = [points.get(c) for c in ((x0, y0), (x1, y0), (x0, y1), (x1, y1))]
            if None in corners:
                continue
            known = [table[c] for c in corners if table[c] is not None]
            if len(set(map(repr, known))) < 2:
                continue
            mx, my = mid(ix, x0, x1), mid(iy, y0, y1)
            if mx is not None and my is not None:
                base = list(corners[0])
                base[ix], base[iy] = mx, my
                new.add(tuple(base))
    return sorted(new - set(table), key=lambda p: tuple(map(repr, p)))


def dense_size(refine: Refine, grid: dict, integer: set) -> int:
    """Points of the dense grid at the final resolution (each axis's spacing halved `rounds`
    times; int axes keep only distinct ints): what refinement saves against."""
    log = set(refine.log_axes())
    total = 1
    for key, values in grid.items():
        if key not in refine.axes:
            total *= len(values)
            continue
        coords = sorted(values)
        for _ in range(refine.rounds):
            finer = [coords[0]]
            for a, b in zip(coords, coords[1:]):
                m = midpoint(a, b, key in log, key in integer)
                finer += [m, b] if m is not None else [b]
            coords = finer
        total *= len(coords)
    return total

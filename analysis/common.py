"""Shared figure plumbing: one look, one set of words for the axes, the grid values as ticks, the
failed and missing trials marked, and `save` (PNG + SVG, atomic, world-readable).

Every figure module has `build(trials, curves, spec) -> list[(stem, Figure)]`; `save_all` writes
them. Conventions shared by all figures:
- error is in percent everywhere (test error, train error, barriers);
- test is drawn solid in blue, train dashed in orange (or a lighter shade of the setting's colour);
- a grid key on an axis has a tick at every value that was run (labels are thinned only where
  they would overlap; the tick and the data point stay);
- a failed trial is a red x, a grid point with no trial at all a grey open circle (a hatched cell
  in heatmaps), and the title counts them ("2 failed, 1 missing").
"""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

# Sized for a printed page: 7 inches is a full text width, and 8 pt text stays readable there.
plt.rcParams.update({
    "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "figure.titlesize": 9,
    "legend.handlelength": 3.2,  # long enough to show solid against dashed
    "svg.hashsalt": "sam-lab",  # same figure, same SVG bytes
})
WIDTH = 7.0  # inches: the widest figure; one panel is about 3.4
MODE = 0o644  # figures are for sharing: world-readable, like any file a plot tool writes

TEST = dict(color="#1f5fa8", ls="-", marker="o")
TRAIN = dict(color="#e8871e", ls="--", marker="s")
FAILED = dict(marker="x", color="#d62728", s=40, linewidths=1.5, zorder=5)
MISSING = dict(marker="o", facecolor="none", edgecolor="0.45", s=36, linewidths=1.2, zorder=5)
FAILED_HATCH, MISSING_HATCH = "xx", "//"

# Axis words with units, for the keys and measures figures show.
LABELS = {
    "width": "width (hidden units)",
    "n_train": "training samples",
    "n_features": "random features N",
    "epoch": "epoch",
    "step": "optimizer step",
    "rho": "SAM radius ρ",
    "label_noise": "label noise (fraction of labels)",
    "train_fraction": "training fraction (of all pairs)",
    "weight_decay": "weight decay",
    "lr": "learning rate",
    "modulus": "modulus p",
    "depth": "depth (hidden layers)",
    "batch_size": "batch size",
    "operation": "operation",
    "model": "model",
    "curve": "curve kind",
    "seed": "seed",
    "test_error": "test error (%)",
    "train_error": "train error (%)",
    "error": "error (%)",
    "train_loss": "train loss (cross-entropy)",
    "test_err": "test error (%)",
}


def label(key: str) -> str:
    """Words (and unit) for a key: 'weight_decay' -> 'weight decay'."""
    return LABELS.get(key, key.replace("_", " "))


def name(key: str) -> str:
    """The short name of a key, for titles and legends (no unit)."""
    return label(key).split(" (")[0]


def fmt(value) -> str:
    """A grid value as ticks, legends and titles print it (and `audit` looks for it)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return str(value)
    return f"{float(value):g}"


def setting(row, keys) -> str:
    """'width 64, ρ 0.05' for the keys of one grid point."""
    return ", ".join(f"{name(k)} {fmt(row[k])}" for k in keys)


def seeds_note(n: int, band: bool = True) -> str:
    """How many seeds a mean is over; a CI band is claimed only when there are 2 or more."""
    if n <= 1:
        return "1 seed"
    return f"mean over {n} seeds" + (", 95% CI band" if band else "")


def tally(failed: int = 0, missing: int = 0, no_curve: int = 0) -> str:
    parts = [f"{failed} failed" if failed else "", f"{missing} missing" if missing else "",
             f"{no_curve} without curves" if no_curve else ""]
    return ", ".join(p for p in parts if p)


def with_tally(title: str, *counts) -> str:
    note = tally(*counts)
    return f"{title}\n{note}" if note else title


def grid_values(spec: dict, key: str) -> list:
    values = (spec.get("grid") or {}).get(key, [])
    return list(values) if isinstance(values, (list, tuple)) else [values]


def grid_cells(spec: dict, keys: list[str]) -> pd.DataFrame:
    """Every combination of the spec's grid values for `keys` (one row per grid point)."""
    values = [grid_values(spec, k) for k in keys]
    return pd.DataFrame(list(itertools.product(*values)), columns=keys)


def n_missing(trials: pd.DataFrame, spec: dict) -> int:
    """Trials of the spec with no row yet (pending, or the run never wrote them)."""
    ids = spec.get("trial_ids")
    return len(set(ids) - set(trials["trial_id"])) if ids else 0


def absent_cells(trials: pd.DataFrame, spec: dict, keys: list[str]) -> pd.DataFrame:
    """Grid points (over `keys`) that have no trial row at all."""
    cells = grid_cells(spec, keys)
    if cells.empty or trials.empty:
        return cells
    have = trials[keys].drop_duplicates().assign(_have=True)
    merged = cells.merge(have, on=keys, how="left")
    return merged[merged["_have"].isna()].drop(columns="_have")


def value_axis(ax, axis: str, values, keep=()) -> None:
    """Ticks at every run value of a numeric key, log scale when they span 8x or more.

    Labels that would overlap are thinned when the figure is saved (`thin_labels`), keeping the
    ends and the values in `keep` (e.g. the interpolation threshold)."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    if not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
               for v in values):
        target._sam_lab_keep = set()  # categories (e.g. optimizer names): one tick each already
        return
    values = sorted(set(float(v) for v in values))
    if values and values[0] > 0 and values[-1] / values[0] >= 8:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    (ax.set_xticks if axis == "x" else ax.set_yticks)(values, labels=[fmt(v) for v in values])
    target.set_minor_locator(NullLocator())
    target._sam_lab_keep = {fmt(v) for v in keep}  # read by thin_labels


def _overlap(labels, renderer) -> bool:
    boxes = [t.get_window_extent(renderer) for t in labels if t.get_text()]
    return any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))


def thin_labels(fig) -> None:
    """Make tick labels of value axes readable: rotate a categorical axis' labels if they overlap
    (each cell keeps its label), else blank labels that overlap a neighbour, keeping the ends and
    the axis' `keep` values. Ticks keep their marks, so every run value is still findable."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        for target in (ax.xaxis, ax.yaxis):
            keep = getattr(target, "_sam_lab_keep", None)
            if keep is None:
                continue
            labels = target.get_ticklabels()
            if len(labels) < 2:
                continue
            if getattr(target, "_sam_lab_rotate", False) and _overlap(labels, renderer):
                target.set_tick_params(labelrotation=90)
                fig.canvas.draw()
                labels = target.get_ticklabels()
            texts = [t.get_text() for t in labels]
            order = sorted(range(len(labels)), key=lambda i: (
                texts[i] not in keep, i not in (0, len(labels) - 1), i))
            shown = []
            for i in order:
                if not texts[i]:
                    continue
                box = labels[i].get_window_extent(renderer).expanded(1.15, 1.0)
                if any(box.overlaps(b) for b in shown):
                    texts[i] = ""
                else:
                    shown.append(box)
            target.set_ticks(target.get_majorticklocs(), labels=texts)


def mark_failed_missing(ax, failed_x=(), missing_x=()) -> None:
    """Red x for failed trials and grey circles for grid points with no trial, on the x axis."""
    transform = ax.get_xaxis_transform()  # x in data, y in axes fraction
    if len(failed_x):
        ax.scatter(list(failed_x), [0.04] * len(failed_x), transform=transform,
                   label=f"failed trial ({len(failed_x)})", clip_on=False, **FAILED)
    if len(missing_x):
        ax.scatter(list(missing_x), [0.04] * len(missing_x), transform=transform,
                   label=f"grid point with no trial ({len(missing_x)})", clip_on=False, **MISSING)


def save(fig, out_dir: Path | str, stem: str) -> Path:
    """Write `stem`.png and `stem`.svg into out_dir atomically (0644); return the PNG path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    thin_labels(fig)
    for ext in ("svg", "png"):
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{stem}.", suffix=f".{ext}")
        try:
            with os.fdopen(fd, "wb") as f:
                fig.savefig(f, dpi=150, bbox_inches="tight", format=ext)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, MODE)
            os.replace(tmp, out_dir / f"{stem}.{ext}")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    plt.close(fig)
    return out_dir / f"{stem}.png"


def save_all(figures, out_dir) -> list[Path]:
    return [save(fig, out_dir, stem) for stem, fig in figures]


def category_axis(target) -> None:
    """A heatmap axis with one labelled cell per value: rotate its labels if they overlap."""
    target._sam_lab_keep = set()
    target._sam_lab_rotate = True


def panels(n: int, ncols: int = 2, panel=(3.4, 2.6), sharey=False):
    """A grid of n axes wrapped at ncols, each `panel` inches; unused slots hidden."""
    ncols = max(1, min(n, ncols))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows + 0.4),
                             squeeze=False, sharey=sharey, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])

"""Double-descent pictures: error against a size axis, and heatmaps over two axes.

Conventions (documented in the README):
- error = 1 - accuracy, in percent; bands are 95% bootstrap CIs of the mean over seeds (seaborn,
  seeded so figures are reproducible).
- The interpolation threshold is the smallest x whose mean train error is <= 0.1%.
- Heatmaps show the mean test error over seeds; size axes (width, n_train, epochs, rho, ...)
  are sorted numerically and labelled with their values, so a geometric grid reads as a log axis;
  all panels of one figure share one colour scale.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import NullLocator

from analysis.common import save

INTERPOLATED = 0.1  # percent train error counted as "train error reached 0"


def with_errors(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out["train_error"] = 100 * (1 - out["train_acc"])
    out["test_error"] = 100 * (1 - out["test_acc"])
    return out


def interpolation_threshold(df: pd.DataFrame, x: str):
    """Smallest x at which the mean train error over seeds reaches ~0, or None."""
    mean = with_errors(df).groupby(x)["train_error"].mean().sort_index()
    hit = mean[mean <= INTERPOLATED]
    return None if hit.empty else hit.index[0]


def error_curve(trials: pd.DataFrame, spec: dict, out_dir: Path, x: str,
                facet: str | None = None, mark: float | None = None) -> Path:
    """Test (solid) and train (dashed) error against x, mean and 95% CI over seeds.

    Other swept keys become colours; `facet` (e.g. label_noise) splits panels. The
    interpolation threshold is marked on single-setting panels; `mark` adds a reference line
    (e.g. N = n_train for random features)."""
    others = [k for k in spec["grid"] if k not in (x, facet)]
    df = trials.sort_values(others + [x]) if others else trials.copy()
    df["setting"] = (df[others].astype(str).apply(
        lambda r: ", ".join(f"{k}={v}" for k, v in r.items()), axis=1) if others else "")
    long = pd.concat([df.assign(split=split, error=100 * (1 - df[f"{split}_acc"]))
                      for split in ("test", "train")])
    panels = sorted(df[facet].unique()) if facet else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.2), squeeze=False,
                             sharey=True)
    for ax, value in zip(axes[0], panels):
        part = long if value is None else long[long[facet] == value]
        sns.lineplot(data=part, x=x, y="error", hue="setting" if others else None,
                     hue_order=list(dict.fromkeys(df.setting)) if others else None,
                     style="split", style_order=["test", "train"], markers=True,
                     errorbar=("ci", 95), seed=0, ax=ax)
        _log_axis(ax, df[x])
        threshold = None if others else interpolation_threshold(
            df if value is None else df[df[facet] == value], x)
        if threshold is not None:
            ax.axvline(threshold, color="grey", ls=":", label=f"train error 0 from {x}={threshold}")
        if mark is not None:
            ax.axvline(mark, color="tab:red", ls="--", lw=0.8, label=f"{x} = {mark:g}")
        seeds = int(df.groupby([k for k in spec["grid"]] or [x]).seed.nunique().min())
        ax.set(xlabel=x, ylabel="error (%)", title=(f"{facet} = {value}" if facet else
               f"{spec['name']}: mean, 95% CI over {seeds} seed{'s' * (seeds > 1)}"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    return save(fig, out_dir, f"error_vs_{x}")


def _log_axis(ax, values: pd.Series):
    """Log x with the grid's own values as ticks, when the values span a factor of 8 or more."""
    v = pd.to_numeric(values, errors="coerce")
    if v.notna().all() and v.min() > 0 and v.max() / v.min() >= 8:
        ticks = []
        for t in sorted(v.unique()):  # the grid's values, thinned so that labels don't overlap
            if not ticks or t / ticks[-1] >= 1.4:
                ticks.append(t)
        ax.set_xscale("log")
        ax.set_xticks(ticks, labels=[f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())


def heatmap(table: pd.DataFrame, x: str, y: str, value: str, out_dir: Path, stem: str,
            facet: str | None = None, title: str = "", log_color: bool = False) -> Path:
    """Mean of `value` over seeds on an (x, y) grid; one shared colour scale across facets."""
    facets = sorted(table[facet].unique()) if facet else [None]
    means = table.groupby(([facet] if facet else []) + [y, x], observed=True)[value].mean()
    vmin, vmax = float(means.min()), float(means.max())
    fig, axes = plt.subplots(1, len(facets), figsize=(6 * len(facets), 4.5), squeeze=False)
    for ax, f in zip(axes[0], facets):
        grid = (means.loc[f] if f is not None else means).unstack(x).sort_index(ascending=False)
        grid = grid[sorted(grid.columns)]
        norm = None
        if log_color:
            from matplotlib.colors import LogNorm

            norm = LogNorm(vmin=max(vmin, 1e-9), vmax=vmax)
        sns.heatmap(grid, ax=ax, cmap="magma_r", vmin=None if norm else vmin,
                    vmax=None if norm else vmax, norm=norm, cbar_kws=dict(label=value),
                    xticklabels=[_fmt(v) for v in grid.columns],
                    yticklabels=[_fmt(v) for v in grid.index])
        ax.set_title(f"{facet} = {f}" if facet else title)
    if facet and title:
        fig.suptitle(title)
    return save(fig, out_dir, stem)


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)) and not float(v).is_integer():
        return f"{v:g}"
    return str(int(v)) if isinstance(v, (int, float, np.integer, np.floating)) else str(v)


def epochs_table(trials: pd.DataFrame, curves: pd.DataFrame, x: str = "width",
                 max_rows: int = 40) -> pd.DataFrame:
    """Test error (%) per (x, epoch) from the curves, on at most `max_rows` log-spaced epochs.

    The epochs are picked from the unique values first and only the needed columns are merged,
    so a 10^7-row curves table costs seconds, not a full merge."""
    epochs = np.sort(curves["epoch"].unique())
    epochs = epochs[epochs > 0]
    if len(epochs) > max_rows:
        epochs = epochs[np.unique(np.geomspace(1, len(epochs), max_rows).astype(int) - 1)]
    rows = curves.loc[curves["epoch"].isin(epochs), ["trial_id", "epoch", "test_acc"]]
    keys = ["trial_id", x] + [c for c in ("label_noise", "rho") if c in trials.columns]
    df = rows.merge(trials[keys], on="trial_id")
    return df.assign(test_error=100 * (1 - df["test_acc"])).drop(columns="test_acc")

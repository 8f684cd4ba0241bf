"""Double-descent pictures: error against a size axis, and heatmaps over two axes.

Conventions (documented in the README):
- error = 1 - accuracy, in percent; bands are 95% bootstrap CIs of the mean over seeds (seaborn).
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


def error_curve(trials: pd.DataFrame, x: str, out_dir: Path, stem: str, hue: str | None = None,
                facet: str | None = None, title: str = "") -> Path:
    """Test (solid) and train (dashed) error vs x on a log axis, mean and 95% CI over seeds."""
    df = with_errors(trials)
    facets = sorted(df[facet].unique()) if facet else [None]
    fig, axes = plt.subplots(1, len(facets), figsize=(5.5 * len(facets), 4), squeeze=False,
                             sharey=True)
    for ax, value in zip(axes[0], facets):
        part = df if value is None else df[df[facet] == value]
        long = part.melt(id_vars=[c for c in (x, hue, "seed") if c],
                         value_vars=["test_error", "train_error"], var_name="split",
                         value_name="error (%)")
        sns.lineplot(data=long, x=x, y="error (%)", hue=hue, style="split", markers=True,
                     errorbar=("ci", 95), ax=ax, palette="viridis" if hue else None)
        ax.set_xscale("log")
        threshold = interpolation_threshold(part, x) if hue is None else None
        if threshold is not None:
            ax.axvline(threshold, color="grey", ls=":", label=f"train error 0 at {threshold}")
        ax.set_title(f"{facet} = {value}" if facet else title)
        ax.legend(fontsize=7)
    if facet and title:
        fig.suptitle(title)
    return save(fig, out_dir, stem)


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
    """Test error (%) per (x, epoch) from the curves, on at most `max_rows` log-spaced epochs."""
    keys = ["trial_id", x] + [c for c in ("label_noise", "rho") if c in trials.columns]
    df = curves[curves["epoch"] > 0].merge(trials[keys], on="trial_id")
    epochs = np.sort(df["epoch"].unique())
    if len(epochs) > max_rows:
        picks = np.unique(np.geomspace(1, len(epochs), max_rows).astype(int) - 1)
        df = df[df["epoch"].isin(epochs[picks])]
    return df.assign(test_error=100 * (1 - df["test_acc"]))

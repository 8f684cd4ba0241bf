"""Double-descent pictures: error against a size axis, and heatmaps over two axes.

Conventions (docs/figures.md):
- error = 1 - accuracy, in percent; with 2 or more seeds the line is the mean and the band a 95%
  bootstrap CI of it (seaborn, seeded so figures are reproducible); with 1 seed, no band.
- The interpolation threshold is the smallest x whose mean train error is <= 0.1%.
- Heatmaps show the mean test error over seeds; size axes (width, n_train, epochs, rho, ...)
  are sorted numerically and labelled with their values, so a geometric grid reads as a log axis;
  all panels of one figure share one colour scale. A cell with no result is hatched: "failed"
  (its trials failed) or "missing" (no trial or no curve).
- A refined sweep's map is drawn at its own resolution (`refined_figure`): nearest fill, the
  estimated boundary as a line, the points by round, ticks at the grid's values.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm, to_rgb
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from analysis import boundary, common
from analysis.common import FAILED_HATCH, MISSING_HATCH, TEST, TRAIN, label, save

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


def _lighter(colour, amount=0.45):
    return tuple(c + (1 - c) * amount for c in to_rgb(colour))


def n_seeds(trials: pd.DataFrame, spec: dict) -> int:
    seeds = spec.get("seeds")
    if isinstance(seeds, int):
        return seeds
    return len(seeds) if seeds else max(1, trials["seed"].nunique() if "seed" in trials else 1)


def error_figure(trials: pd.DataFrame, spec: dict, x: str, facet: str | None = None,
                 mark: float | None = None, mark_label: str | None = None):
    """Test (solid) and train (dashed) error against x, over all trials of a sweep.

    Other swept keys become colours (train a lighter shade of its setting's colour); `facet`
    (e.g. label_noise) splits panels. The interpolation threshold is marked on single-setting
    panels; `mark` adds a reference line (e.g. N = n_train for random features). Failed trials
    and grid points without a trial are marked on the x axis and counted in the title."""
    grid = [k for k in spec["grid"] if k in trials]
    others = [k for k in grid if k not in (x, facet) and len(common.grid_values(spec, k)) > 1]
    ok = with_errors(trials[trials["status"] == "ok"])
    failed = trials[trials["status"] == "failed"]
    absent = common.absent_cells(trials, spec, grid)
    seeds = n_seeds(trials, spec)
    # one line per setting of the grid: a refined sweep's points between grid values (round 1
    # and later) join the lines they lie on, and draw no lines of their own
    settings = (ok[others].drop_duplicates().sort_values(others) if others
                else pd.DataFrame([{}]))
    for k in others:
        settings = settings[settings[k].isin(common.grid_values(spec, k))]
    palette = sns.color_palette("tab10" if len(settings) <= 10 else "viridis", len(settings))
    facet_values = common.grid_values(spec, facet) if facet else [None]
    fig, axes = common.panels(len(facet_values), ncols=2,
                              panel=(3.4, 2.8) if facet else (4.8, 3.3), sharey=True)
    thresholds = []
    for ax, value in zip(axes, facet_values):
        def part(df, value=value):
            return df if value is None else df[df[facet] == value]
        here = part(ok)
        for (_, row), colour in zip(settings.iterrows(), palette):
            sub = here
            for k in others:
                sub = sub[sub[k] == row[k]]
            single = len(settings) == 1
            for split, style in (("test", TEST), ("train", TRAIN)):
                c = style["color"] if single else (colour if split == "test" else _lighter(colour))
                sns.lineplot(data=sub, x=x, y=f"{split}_error", color=c, ls=style["ls"],
                             marker=style["marker"], markersize=4, ax=ax, seed=0,
                             errorbar=("ci", 95) if seeds > 1 else None, legend=False)
        threshold = None if others or here.empty else interpolation_threshold(here, x)
        if threshold is not None:
            ax.axvline(threshold, color="0.3", ls=":", lw=1)
            thresholds.append(threshold)
        if mark is not None:
            ax.axvline(mark, color="#d62728", ls="-.", lw=0.8)
        common.mark_failed_missing(ax, part(failed)[x].tolist(), part(absent)[x].tolist())
        common.value_axis(ax, "x", common.grid_values(spec, x) or ok[x].unique(),
                          keep=[v for v in (threshold, mark) if v is not None])
        ax.set(xlabel=label(x), ylabel="error (%)")
        if facet:
            ax.set_title(f"{common.name(facet)} {common.fmt(value)}")
        ax.grid(alpha=0.3)
    threshold = thresholds[0] if len(thresholds) == 1 else (True if thresholds else None)
    handles = _legend(settings, others, palette, threshold, x, mark, len(failed), len(absent),
                      mark_label)
    fig.legend(handles=handles, frameon=False, loc="outside lower center",
               ncols=min(len(handles), 3))
    title = f"{spec['name']}: test and train error, {common.seeds_note(seeds)}"
    fig.suptitle(common.with_tally(title, len(failed), common.n_missing(trials, spec)))
    return fig


def _legend(settings, others, palette, threshold, x, mark, n_failed, n_absent, mark_label):
    single = len(settings) == 1
    handles = [Line2D([], [], color=TEST["color"] if single else "0.2", ls="-",
                      marker=TEST["marker"], ms=4, label="test"),
               Line2D([], [], color=TRAIN["color"] if single else "0.6", ls="--",
                      marker=TRAIN["marker"], ms=4, label="train")]
    if not single:
        handles += [Patch(color=c, label=common.setting(row, others))
                    for (_, row), c in zip(settings.iterrows(), palette)]
    if threshold is not None:
        words = ("" if threshold is True
                 else f" from {common.name(x)} {common.fmt(threshold)}")
        handles.append(Line2D([], [], color="0.3", ls=":", label=f"train error 0{words}"))
    if mark is not None:
        handles.append(Line2D([], [], color="#d62728", ls="-.",
                              label=mark_label or f"{common.name(x)} = {common.fmt(mark)}"))
    if n_failed:
        handles.append(Line2D([], [], ls="", marker="x", color="#d62728",
                              label=f"failed trial ({n_failed})"))
    if n_absent:
        handles.append(Line2D([], [], ls="", marker="o", mfc="none", color="0.45",
                              label=f"grid point with no trial ({n_absent})"))
    return handles


def heatmap_figure(table: pd.DataFrame, x: str, y: str, value: str, facet: str | None = None,
                   title: str = "", log_color: bool = False, xs=None, ys=None, failed=(),
                   refine: dict | None = None):
    """Mean of `value` over seeds on an (x, y) grid; one shared colour scale across facets.

    `xs` / `ys`: the values that were run (default: those in the table); a cell without a value
    is hatched and labelled "failed" when it matches one of `failed` ((facet, x, y) tuples, None
    matching any), else "missing". A refined grid (a `round` column above 0, points off the
    tensor grid) is drawn by `refined_figure` (`refine`: the spec's refine block, for the
    boundary line)."""
    if boundary.is_refined(table) and not boundary.is_uniform(table, x, y):
        return refined_figure(table, x, y, value, facet=facet, title=title, log_color=log_color,
                              xs=xs, ys=ys, refine=refine)
    facets = sorted(table[facet].unique()) if facet else [None]
    means = table.groupby(([facet] if facet else []) + [y, x], observed=True)[value].mean()
    vmin, vmax = float(means.min()), float(means.max())
    norm = LogNorm(vmin=max(vmin, 1e-9), vmax=vmax) if log_color else None
    fig, axes = common.panels(len(facets), ncols=2, panel=(3.4, 2.9) if facet else (4.6, 3.6))
    kinds = set()
    for ax, f in zip(axes, facets):
        grid = (means.loc[f] if f is not None else means).unstack(x)
        grid = grid.reindex(index=sorted(ys if ys is not None else grid.index, reverse=True),
                            columns=sorted(xs if xs is not None else grid.columns))
        sns.heatmap(grid, ax=ax, cmap="magma_r", vmin=None if norm else vmin,
                    vmax=None if norm else vmax, norm=norm, cbar=len(facets) == 1,
                    cbar_kws=dict(label=label(value)),
                    xticklabels=[common.fmt(v) for v in grid.columns],
                    yticklabels=[common.fmt(v) for v in grid.index])
        words = grid.shape[0] <= 12  # a word per cell while cells are big enough to hold it
        for i, yv in enumerate(grid.index):
            for j, xv in enumerate(grid.columns):
                if np.isnan(grid.iloc[i, j]):
                    kinds.add(_mark_cell(ax, j, i, _matches(failed, f, xv, yv), words))
        ax.set(xlabel=label(x), ylabel=label(y), title=(f"{common.name(facet)} {common.fmt(f)}"
                                                        if facet else title))
        ax.tick_params(axis="y", labelrotation=0)
        common.category_axis(ax.xaxis)
        common.category_axis(ax.yaxis)
    if len(facets) > 1:  # one colour bar for the shared scale
        fig.colorbar(axes[0].collections[0], ax=axes, label=label(value), shrink=0.8)
    if kinds:
        fig.legend(handles=[Patch(facecolor="white", edgecolor="0.55", label=f"{k} (no result)",
                                  hatch=FAILED_HATCH if k == "failed" else MISSING_HATCH)
                            for k in sorted(kinds)], loc="outside lower center", ncols=2,
                   frameon=False)
    if facet and title:
        fig.suptitle(title)
    return fig


def refined_figure(table: pd.DataFrame, x: str, y: str, value: str, facet: str | None = None,
                   title: str = "", log_color: bool = False, xs=None, ys=None,
                   refine: dict | None = None):
    """A refined grid: each panel filled by the mean `value` of the nearest sampled point, the
    estimated boundary (from `refine`) as a line, the points marked by round, failed points as
    red x, round-0 grid points with no trial as grey circles; ticks at the round-0 values
    (`xs`, `ys`). `table` holds every trial row, failed ones included (status)."""
    facets = sorted(table[facet].unique()) if facet else [None]
    xs = sorted(xs if xs is not None else table[x].unique())
    ys = sorted(ys if ys is not None else table[y].unique())
    ok = table[table["status"] == "ok"] if "status" in table else table
    means = ok.groupby(([facet] if facet else []) + [x, y], observed=True)[value].mean()
    vmin, vmax = float(means.min()), float(means.max())
    norm = LogNorm(vmin=max(vmin, 1e-9), vmax=vmax) if log_color else None
    fig, axes = common.panels(len(facets), ncols=2, panel=(3.4, 3.0) if facet else (4.8, 3.8))
    handles, mesh = {}, None
    for ax, f in zip(axes, facets):
        def part(df, f=f):
            return df if f is None else df[df[facet] == f]
        fill = (means.loc[f] if f is not None else means).reset_index()
        missing = boundary.missing_points(part(table), x, y, xs, ys)
        mesh_here, found = boundary.refined_plane(
            ax, part(table), fill, x, y, value, (xs, ys), refine=refine, missing=missing,
            counts=len(facets) == 1, cmap="magma_r", norm=norm,
            vmin=None if norm else vmin, vmax=None if norm else vmax)
        mesh = mesh if mesh is not None else mesh_here
        handles.update({h.get_label(): h for h in found})
        ax.set_title(f"{common.name(facet)} {common.fmt(f)}" if facet else title)
    if mesh is not None:
        fig.colorbar(mesh, ax=axes, label=label(value), shrink=0.8 if facet else 1.0)
    fig.legend(handles=list(handles.values()), loc="outside lower center", ncols=2,
               frameon=False)
    if facet and title:
        fig.suptitle(title)
    return fig


def _matches(failed, f, xv, yv) -> bool:
    return any(all(a is None or a == b for a, b in zip(cell, (f, xv, yv))) for cell in failed)


def _mark_cell(ax, j, i, failed: bool, words: bool) -> str:
    kind = "failed" if failed else "missing"
    ax.add_patch(Rectangle((j, i), 1, 1, facecolor="white", edgecolor="0.55", lw=0,
                           hatch=FAILED_HATCH if failed else MISSING_HATCH))
    if words:
        ax.text(j + 0.5, i + 0.5, kind, ha="center", va="center", fontsize=6,
                color="#d62728" if failed else "0.3",
                bbox=dict(facecolor="white", edgecolor="none", pad=0.5))
    return kind


def heatmap(table: pd.DataFrame, x: str, y: str, value: str, out_dir, stem: str,
            facet: str | None = None, title: str = "", log_color: bool = False, **cells):
    """`heatmap_figure`, saved as `stem` in out_dir; returns the PNG path."""
    fig = heatmap_figure(table, x, y, value, facet=facet, title=title, log_color=log_color,
                         **cells)
    return save(fig, out_dir, stem)


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


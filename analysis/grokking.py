"""Grokking figures, chosen from what the sweep varied (`spec['grid']` and the seeds).

- grok_curves: test (blue, solid) and train (orange, dashed) accuracy vs log step, one panel per
  grid point wrapped into rows, one line per seed; grok_weight_norm: the weight norm, one line
  per trial, one colour per grid point.
- With two or more numeric grid keys, the first two (x, then y) give
  grok_steps_<x>_<y>: median steps to test accuracy >= threshold over seeds, log colour, cells
  where the median seed never got there marked "never" (the count that did is printed), and
  grok_phase_<x>_<y>: the most common Liu et al. phase per cell in four fixed colours.
  Any further grid keys split these into one figure per value. A refined sweep (points added
  by `refine` rounds) draws both at its own resolution: nearest fill, the estimated boundary,
  points by round (analysis.boundary.refined_plane); the per-point figures show its grid.
- With several seeds: grok_seed_spread, steps to test threshold per cell, a dot per seed and a
  box; seeds that never generalized are drawn as x on the step budget.
Failed trials are counted in the titles and cell captions; a grid cell with no finished trial is
hatched ("failed" or "missing"), and a panel without a curve says so.
"""

from __future__ import annotations

import numbers
import re
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import pyplot as plt
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

from analysis import boundary, common

PHASES = ("comprehension", "grokking", "memorization", "confusion")
PHASE_COLOURS = ("#1b9e77", "#7570b3", "#d95f02", "#bdbdbd")


def build(trials: pd.DataFrame, curves: pd.DataFrame, spec: dict) -> list:
    if trials.empty:
        return []
    grid = list(spec.get("grid") or {})
    trials = trials.sort_values([*grid, "seed"])
    trials = trials.assign(cell=trials.apply(lambda r: _label(r, grid), axis=1),
                           words=trials.apply(lambda r: common.setting(r, grid), axis=1))
    grid_points, grid_spec = _round0(trials, spec)
    ok = trials[trials["status"] == "ok"]
    figures = _curves(grid_points[grid_points["status"] == "ok"],
                      grid_points[grid_points["status"] == "failed"], curves, grid_spec)
    thresholds = ok["threshold"].dropna().unique() if "threshold" in ok else []
    steps_to = (f"steps to test accuracy ≥ {thresholds[0]:g}" if len(thresholds) == 1
                else "steps to test threshold")

    numeric = [k for k in grid if all(isinstance(v, numbers.Number) and not isinstance(v, bool)
                                      for v in common.grid_values(spec, k))]
    if len(numeric) >= 2:
        x, y = numeric[:2]
        rest = [k for k in grid if k not in (x, y)]
        for part, sub in trials.groupby(rest) if rest else [((), trials)]:
            part = part if isinstance(part, tuple) else (part,)
            title = _label(dict(zip(rest, part)), rest)
            words = common.setting(dict(zip(rest, part)), rest)
            suffix = f"_{_slug(title)}" if title else ""
            summary = _summarise(sub, [x, y])
            stem = f"{x}_{y}{suffix}"
            counts = ((sub["status"] == "failed").sum(), common.n_missing(sub, spec)
                      if not rest else 0)
            if boundary.is_refined(sub) and not boundary.is_uniform(sub, x, y):
                ticks = (common.grid_values(spec, x), common.grid_values(spec, y))  # round 0
                figures.append((f"grok_steps_{stem}", _refined_steps(
                    sub, summary, x, y, ticks, spec, steps_to, words, counts)))
                figures.append((f"grok_phase_{stem}", _refined_phase(
                    sub, summary, x, y, ticks, spec, words, counts)))
                continue
            summary = common.grid_cells(spec, [x, y]).merge(summary, on=[x, y], how="left")
            figures.append((f"grok_steps_{stem}", _steps_heatmap(
                summary, x, y, steps_to, words, counts)))
            figures.append((f"grok_phase_{stem}", _phase_map(summary, x, y, words, counts)))
    if ok["seed"].nunique() > 1:
        figures.append(("grok_seed_spread", _seed_spread(
            grid_points[grid_points["status"] == "ok"],
            grid_points[grid_points["status"] == "failed"], steps_to, grid_spec)))
    return figures


def _round0(trials: pd.DataFrame, spec: dict):
    """A refined sweep's grid points (round 0), and its spec with only their trial ids: the
    per-point figures (curve panels, seed spread) show the grid; the refined points are in the
    phase map and the steps map."""
    if "round" not in trials or not (trials["round"] > 0).any():
        return trials, spec
    later = set(trials.loc[trials["round"] > 0, "trial_id"])
    ids = [i for i in spec.get("trial_ids") or [] if i not in later]
    return trials[trials["round"] == 0], {**spec, "trial_ids": ids}


def make_figures(trials: pd.DataFrame, curves: pd.DataFrame, spec: dict, out_dir: Path
                 ) -> list[Path]:
    return common.save_all(build(trials, curves, spec), out_dir)


def _label(row, keys) -> str:
    return ", ".join(f"{k}={row[k]:g}" if isinstance(row[k], float) else f"{k}={row[k]}"
                     for k in keys)


def _slug(text: str) -> str:
    """A file-name-safe form that keeps operations apart (x/y and x*y must not collide)."""
    text = text.replace(", ", "_").translate(str.maketrans({"/": "div", "*": "mul", "^": "pow"}))
    return re.sub(r"[^A-Za-z0-9._=+-]", "", text)


def _summarise(trials: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per cell, over its finished seeds: median steps to test threshold (inf where most never got
    there), how many generalized, the most common phase; and how many trials failed."""
    def cell(g):
        ok = g[g["status"] == "ok"]
        steps = ok["step_test_99"].astype(float).fillna(np.inf).to_numpy()
        phases = ok["phase"].value_counts()
        return pd.Series(dict(
            median_steps=float(np.median(steps)) if len(ok) else np.nan,
            generalized=int(np.isfinite(steps).sum()),
            n=len(ok),
            failed=len(g) - len(ok),
            phase=phases.idxmax() if len(ok) else None,
            phase_count=int(phases.max()) if len(ok) else 0,
        ))
    return trials.groupby(keys).apply(cell, include_groups=False).reset_index()


def _counts(summary, x, y, numerator) -> pd.DataFrame:
    """Cell captions "k/n" (k of n finished seeds), plus a line for failed trials."""
    def text(r):
        lines = [f"{r[numerator]:.0f}/{r['n']:.0f}"] if r["n"] > 0 else []
        return "\n".join(lines + ([f"{r['failed']:.0f} failed"] if r["failed"] > 0 else []))
    captions = summary.assign(text=summary.fillna({"n": 0, "failed": 0}).apply(text, axis=1))
    return _matrix(captions, x, y, "text").fillna("")


def _matrix(summary, x, y, values) -> pd.DataFrame:
    """x across, y up the page (largest on top), tick labels formatted as common.fmt."""
    m = summary.pivot(index=y, columns=x, values=values).sort_index(ascending=False)
    m.index = [common.fmt(v) for v in m.index]
    m.columns = [common.fmt(v) for v in m.columns]
    return m


def _empty_cells(ax, summary, x, y, index, columns):
    """Hatch the cells with no finished trial: failed (their trials failed) or missing."""
    failed = _matrix(summary.fillna({"failed": 0}), x, y, "failed")
    finished = _matrix(summary.fillna({"n": 0}), x, y, "n")
    for i, row in enumerate(index):
        for j, col in enumerate(columns):
            if finished.loc[row, col] > 0:
                continue
            lost = failed.loc[row, col] > 0
            ax.add_patch(Rectangle((j, i), 1, 1, facecolor="white", edgecolor="0.6", lw=0,
                                   hatch=common.FAILED_HATCH if lost else common.MISSING_HATCH))
            ax.text(j + 0.5, i + 0.5, f"{failed.loc[row, col]:.0f} failed" if lost else "missing",
                    ha="center", va="center", fontsize=7, color="#d62728" if lost else "0.3",
                    bbox=dict(facecolor="white", edgecolor="none", pad=1))


def _heat_axes(ax, x, y, title, counts):
    ax.set(xlabel=common.label(x), ylabel=common.label(y),
           title=common.with_tally(title, *counts))
    ax.tick_params(axis="y", labelrotation=0)
    common.category_axis(ax.xaxis)
    common.category_axis(ax.yaxis)


def _steps_heatmap(summary, x, y, steps_to, title, counts):
    steps, captions = _matrix(summary, x, y, "median_steps"), _counts(summary, x, y, "generalized")
    finite = steps.where(np.isfinite(steps))
    lo, hi = np.nanmin(finite.to_numpy(), initial=np.inf), np.nanmax(finite.to_numpy(), initial=0)
    if not np.isfinite(lo):  # nothing generalized anywhere: any range will do
        lo, hi = 1.0, 10.0
    if hi < 10 * lo:  # widen a narrow range to whole decades, so the log colourbar has ticks
        lo, hi = 10 ** np.floor(np.log10(lo)), 10 ** np.ceil(np.log10(hi * 1.0001))
    fig, ax = plt.subplots(figsize=(min(0.8 * steps.shape[1] + 2.6, 7), 0.6 * steps.shape[0] + 1.6),
                           layout="constrained")
    sns.heatmap(finite.astype(float), mask=finite.isna(), norm=LogNorm(lo, hi), cmap="viridis",
                ax=ax, cbar_kws=dict(label=f"{steps_to}\n(median over seeds)"))
    for i, row in enumerate(steps.index):
        for j, col in enumerate(steps.columns):
            value, caption = steps.loc[row, col], captions.loc[row, col]
            if pd.isna(value):  # no finished trial here: hatched below
                continue
            if np.isinf(value):
                ax.add_patch(Rectangle((j, i), 1, 1, facecolor="0.85", hatch="..",
                                       edgecolor="0.6", lw=0))
                text, colour = "never\n", "0.2"
            else:
                text, colour = f"{value:,.0f}\n", "white"
            ax.text(j + 0.5, i + 0.5, text + caption, ha="center", va="center",
                    fontsize=7, color=colour)
    _empty_cells(ax, summary, x, y, steps.index, steps.columns)
    _heat_axes(ax, x, y, f"Steps to generalize{': ' + title if title else ''}", counts)
    return fig


def _phase_map(summary, x, y, title, counts):
    code = summary["phase"].map({p: i for i, p in enumerate(PHASES)})
    codes = _matrix(summary.assign(code=code), x, y, "code")
    captions = _counts(summary, x, y, "phase_count")
    fig, ax = plt.subplots(figsize=(min(0.8 * codes.shape[1] + 3.4, 7), 0.6 * codes.shape[0] + 1.6),
                           layout="constrained")
    sns.heatmap(codes.astype(float), mask=codes.isna(), cmap=ListedColormap(PHASE_COLOURS),
                vmin=-0.5, vmax=len(PHASES) - 0.5, cbar=False, ax=ax, linewidths=0.5,
                linecolor="white")
    for i, row in enumerate(codes.index):
        for j, col in enumerate(codes.columns):
            if not pd.isna(codes.loc[row, col]):
                ax.text(j + 0.5, i + 0.5, captions.loc[row, col], ha="center", va="center",
                        fontsize=7)
    _empty_cells(ax, summary, x, y, codes.index, codes.columns)
    ax.legend(handles=[Patch(color=c, label=p) for p, c in zip(PHASES, PHASE_COLOURS)],
              bbox_to_anchor=(1.02, 1), loc="upper left", title="phase\n(seeds agreeing)")
    _heat_axes(ax, x, y, f"Phase (Liu et al.){': ' + title if title else ''}", counts)
    return fig


def _refined_steps(trials, summary, x, y, ticks, spec, steps_to, title, counts):
    """Median steps to generalize on a refined grid: nearest fill, log colour, "never" grey."""
    fill = summary[summary["n"] > 0]
    finite = fill["median_steps"][np.isfinite(fill["median_steps"])]
    lo, hi = (finite.min(), finite.max()) if len(finite) else (1.0, 10.0)
    if hi < 10 * lo:  # whole decades, so the log colour bar has ticks
        lo, hi = 10 ** np.floor(np.log10(lo)), 10 ** np.ceil(np.log10(hi * 1.0001))
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    fig, ax = plt.subplots(figsize=(6.4, 4.6), layout="constrained")
    mesh, handles = boundary.refined_plane(
        ax, trials, fill, x, y, "median_steps", ticks, refine=spec.get("refine"),
        default_metric="phase", missing=_missing(trials, x, y, ticks), cmap=cmap,
        norm=LogNorm(lo, hi))
    if mesh is not None:
        fig.colorbar(mesh, ax=ax, label=f"{steps_to}\n(median over seeds)")
    handles.append(Patch(color="0.85", label="never (median seed)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    ax.set_title(common.with_tally(f"Steps to generalize{': ' + title if title else ''}",
                                   *counts))
    return fig


def _refined_phase(trials, summary, x, y, ticks, spec, title, counts):
    """The most common phase on a refined grid: nearest fill in the four phase colours."""
    fill = summary[summary["n"] > 0]
    fill = fill.assign(code=fill["phase"].map({p: i for i, p in enumerate(PHASES)}))
    fig, ax = plt.subplots(figsize=(6.4, 4.6), layout="constrained")
    _, handles = boundary.refined_plane(
        ax, trials, fill, x, y, "code", ticks, refine=spec.get("refine"),
        default_metric="phase", missing=_missing(trials, x, y, ticks),
        cmap=ListedColormap(PHASE_COLOURS), vmin=-0.5, vmax=len(PHASES) - 0.5)
    ax.legend(handles=[Patch(color=c, label=p) for p, c in zip(PHASES, PHASE_COLOURS)],
              bbox_to_anchor=(1.02, 1), loc="upper left", title="phase\n(seed majority)")
    fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    ax.set_title(common.with_tally(f"Phase (Liu et al.){': ' + title if title else ''}",
                                   *counts))
    return fig


def _missing(trials, x, y, ticks):
    return boundary.missing_points(trials, x, y, *ticks)


def _curves(trials, failed, curves, spec) -> list:
    data = curves.merge(trials[["trial_id", "cell", "words", "seed"]], on="trial_id")
    if data.empty:  # nothing finished, or no curve files
        return []
    order = list(dict.fromkeys(pd.concat([trials, failed]).sort_values("cell")["words"]))
    by_words = dict(tuple(data.groupby("words")))
    fig, axes = common.panels(len(order), ncols=3 if len(order) > 4 else 2, panel=(2.4, 2.1),
                              sharey=True)
    for ax, words in zip(axes, order):
        here = by_words.get(words)
        no_curve = set(trials.loc[trials["words"] == words, "trial_id"]) - set(
            [] if here is None else here["trial_id"])
        lost = int((failed["words"] == words).sum())
        for split, style in (("test", common.TEST), ("train", common.TRAIN)):
            for _, line in ([] if here is None else here.groupby("trial_id")):
                ax.plot(line["step"], line[f"{split}_acc"], color=style["color"], ls=style["ls"],
                        lw=1.1, alpha=0.85)
        note = common.tally(lost, 0, len(no_curve))
        if here is None:
            ax.text(0.5, 0.5, note or "no curve", transform=ax.transAxes, ha="center",
                    va="center", color="#d62728")
        ax.set(xscale="log", ylim=(-0.02, 1.02), xlabel="optimizer step",
               ylabel="accuracy (fraction)",
               title=(words.replace(", ", "\n") if len(words) > 30 else words)
               + (f"\n{note}" if note else ""))
        ax.grid(alpha=0.3)
    fig.legend(handles=[Line2D([], [], label="test", **{k: common.TEST[k] for k in ("color", "ls")}),
                        Line2D([], [], label="train",
                               **{k: common.TRAIN[k] for k in ("color", "ls")})],
               loc="outside lower center", ncols=2, frameon=False)
    seeds = int(trials.groupby("words")["seed"].nunique().max())
    no_curve = len(set(trials["trial_id"]) - set(data["trial_id"]))
    fig.suptitle(common.with_tally(f"{spec['name']}: accuracy during training, one line per seed "
                                   f"({seeds} seed{'s' * (seeds > 1)})", len(failed),
                                   common.n_missing(pd.concat([trials, failed]), spec), no_curve))
    figures = [("grok_curves", fig)]

    fig, ax = plt.subplots(figsize=(6.0, 3.4), layout="constrained")
    colours = dict(zip(order, sns.color_palette("tab10" if len(order) <= 10 else "viridis",
                                                len(order))))
    for (words, _), line in data.groupby(["words", "trial_id"], sort=False):
        ax.plot(line["step"], line["weight_norm"], color=colours[words], lw=1)
    ax.set(xscale="log", xlabel="optimizer step", ylabel="weight norm ‖w‖₂ (all parameters)",
           title=f"{spec['name']}: weight norm during training, one line per trial")
    ax.legend(handles=[Line2D([], [], color=c, label=w) for w, c in colours.items()],
              bbox_to_anchor=(1.02, 1), loc="upper left")
    ax.grid(alpha=0.3)
    figures.append(("grok_weight_norm", fig))
    return figures


def _seed_spread(trials, failed, steps_to, spec):
    """One row per grid point: a box over its seeds, a dot per seed, x for seeds that never got
    there (drawn at their step budget)."""
    trials = trials.assign(words=trials["words"].str.replace(", ", "\n"))
    order = list(dict.fromkeys(trials["words"]))  # grid order: trials come sorted by grid keys
    reached = trials[trials["step_test_99"].notna()]
    never = trials[trials["step_test_99"].isna()]
    lines = order[0].count("\n") + 1 if order else 1
    # at least 5.5/3 in tall: one grid point (a seeds-only spec) must not become a thin strip
    fig, ax = plt.subplots(figsize=(5.5, max((0.25 + 0.17 * lines) * len(order) + 1.4, 2.0)),
                           layout="constrained")
    sns.boxplot(data=reached, y="words", x="step_test_99", order=order, color="0.9", ax=ax,
                showfliers=False, log_scale=True, orient="h")
    sns.stripplot(data=reached, y="words", x="step_test_99", order=order, hue="seed",
                  palette="tab10", ax=ax, size=5, jitter=0.15, orient="h")
    if not never.empty:
        ax.scatter(never["steps"], [order.index(c) for c in never["words"]], marker="x",
                   color="#d62728", label="never (at step budget)", zorder=3)
    ax.set_yticks(range(len(order)), labels=order)  # every grid point, even if none got there
    ax.set_ylim(len(order) - 0.5, -0.5)
    ax.set(ylabel="grid point", xlabel=steps_to,
           title=common.with_tally(f"{spec['name']}: spread of steps to generalize over seeds",
                                   len(failed)))
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3, axis="x")
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", title="seed")
    return fig

"""Grokking figures, chosen from what the sweep varied (`spec['grid']` and the seeds).

- grok_curves: train (dashed) and test (solid) accuracy vs log step, one panel per grid cell,
  one line per seed; grok_weight_norm: the weight norm, one line per trial.
- With two or more numeric grid keys, the first two (x, then y) give
  grok_steps_<x>_<y>: median steps to test accuracy >= threshold over seeds, log colour, cells
  where the median seed never got there marked "never" (the count that did is printed), and
  grok_phase_<x>_<y>: the most common Liu et al. phase per cell in four fixed colours.
  Any further grid keys split these into one figure per value.
- With several seeds: grok_seed_spread, steps to test threshold per cell, a dot per seed and a
  box; seeds that never generalized are drawn as x on the step budget.
Failed trials (e.g. a loss that went NaN) are counted in the heatmap cells' captions.
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
from matplotlib.patches import Patch, Rectangle

from analysis.common import save

PHASES = ("comprehension", "grokking", "memorization", "confusion")
PHASE_COLOURS = ("#1b9e77", "#7570b3", "#d95f02", "#bdbdbd")


def make_figures(trials: pd.DataFrame, curves: pd.DataFrame, spec: dict, out_dir: Path
                 ) -> list[Path]:
    if trials.empty:
        return []
    grid = list(spec.get("grid") or {})
    trials = trials.sort_values([*grid, "seed"])
    trials = trials.assign(cell=trials.apply(lambda r: _label(r, grid), axis=1))
    ok = trials[trials["status"] == "ok"]
    paths = _curves(ok, curves, out_dir)
    thresholds = trials["threshold"].unique()
    steps_to = (f"steps to test accuracy >= {thresholds[0]:g}" if len(thresholds) == 1
                else "steps to test threshold")

    numeric = [k for k in grid if all(isinstance(v, numbers.Number) and not isinstance(v, bool)
                                      for v in spec["grid"][k])]
    if len(numeric) >= 2:
        x, y = numeric[:2]
        rest = [k for k in grid if k not in (x, y)]
        for part, sub in trials.groupby(rest) if rest else [((), trials)]:
            title = _label(dict(zip(rest, part)), rest)
            suffix = f"_{_slug(title)}" if title else ""
            summary = _summarise(sub, [x, y])
            stem = f"{x}_{y}{suffix}"
            paths.append(_steps_heatmap(summary, x, y, steps_to, title, out_dir,
                                        f"grok_steps_{stem}"))
            paths.append(_phase_map(summary, x, y, title, out_dir, f"grok_phase_{stem}"))
    if ok["seed"].nunique() > 1:
        paths.append(_seed_spread(ok, steps_to, out_dir))
    return paths


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
        lines = [f"{r[numerator]:.0f}/{r['n']:.0f}"] if r["n"] else []
        return "\n".join(lines + ([f"{r['failed']:.0f} failed"] if r["failed"] else []))
    captions = summary.assign(text=summary.apply(text, axis=1))
    return _matrix(captions, x, y, "text").fillna("")


def _matrix(summary, x, y, values) -> pd.DataFrame:
    """x across, y up the page (largest on top), tick labels formatted with :g."""
    m = summary.pivot(index=y, columns=x, values=values).sort_index(ascending=False)
    m.index = [f"{v:g}" for v in m.index]
    m.columns = [f"{v:g}" for v in m.columns]
    return m


def _steps_heatmap(summary, x, y, steps_to, title, out_dir, stem) -> Path:
    steps, captions = _matrix(summary, x, y, "median_steps"), _counts(summary, x, y, "generalized")
    finite = steps.where(np.isfinite(steps))
    lo, hi = np.nanmin(finite.to_numpy(), initial=np.inf), np.nanmax(finite.to_numpy(), initial=0)
    if not np.isfinite(lo):  # nothing generalized anywhere: any range will do
        lo, hi = 1.0, 10.0
    if hi < 10 * lo:  # widen a narrow range to whole decades, so the log colourbar has ticks
        lo, hi = 10 ** np.floor(np.log10(lo)), 10 ** np.ceil(np.log10(hi * 1.0001))
    fig, ax = plt.subplots(figsize=(1.1 * steps.shape[1] + 2.5, 0.8 * steps.shape[0] + 1.5))
    sns.heatmap(finite, mask=finite.isna(), norm=LogNorm(lo, hi), cmap="viridis",
                ax=ax, cbar_kws=dict(label=f"{steps_to} (median over seeds)"))
    for i, row in enumerate(steps.index):
        for j, col in enumerate(steps.columns):
            value, caption = steps.loc[row, col], captions.loc[row, col]
            if pd.isna(value):  # no finished trial here
                text, colour = "", "0.2"
            elif np.isinf(value):
                ax.add_patch(Rectangle((j, i), 1, 1, facecolor="0.85", hatch="//", edgecolor="0.6"))
                text, colour = "never\n", "0.2"
            else:
                text, colour = f"{value:,.0f}\n", "white"
            ax.text(j + 0.5, i + 0.5, text + caption, ha="center", va="center",
                    fontsize=8, color=colour)
    ax.set(xlabel=x, ylabel=y, title=f"Steps to generalize{': ' + title if title else ''}")
    return save(fig, out_dir, stem)


def _phase_map(summary, x, y, title, out_dir, stem) -> Path:
    code = summary["phase"].map({p: i for i, p in enumerate(PHASES)})
    codes = _matrix(summary.assign(code=code), x, y, "code")
    captions = _counts(summary, x, y, "phase_count")
    fig, ax = plt.subplots(figsize=(1.1 * codes.shape[1] + 3.5, 0.8 * codes.shape[0] + 1.5))
    sns.heatmap(codes, mask=codes.isna(), cmap=ListedColormap(PHASE_COLOURS), vmin=-0.5,
                vmax=len(PHASES) - 0.5, cbar=False, ax=ax, linewidths=0.5, linecolor="white")
    for i, row in enumerate(codes.index):
        for j, col in enumerate(codes.columns):
            ax.text(j + 0.5, i + 0.5, captions.loc[row, col], ha="center", va="center",
                    fontsize=8)
    ax.legend(handles=[Patch(color=c, label=p) for p, c in zip(PHASES, PHASE_COLOURS)],
              bbox_to_anchor=(1.02, 1), loc="upper left", title="phase (seeds agreeing)")
    ax.set(xlabel=x, ylabel=y, title=f"Phase (Liu et al.){': ' + title if title else ''}")
    return save(fig, out_dir, stem)


def _curves(trials, curves, out_dir) -> list[Path]:
    data = curves.merge(trials[["trial_id", "cell", "seed"]], on="trial_id")
    if data.empty:  # nothing finished, or no curve files
        return []
    acc = data.melt(id_vars=["trial_id", "cell", "seed", "step"],
                    value_vars=["train_acc", "test_acc"], var_name="split", value_name="accuracy")
    acc["split"] = acc["split"].str.removesuffix("_acc")
    order = list(dict.fromkeys(trials["cell"]))
    g = sns.relplot(data=acc, kind="line", x="step", y="accuracy", hue="seed", style="split",
                    style_order=["test", "train"], units="trial_id", estimator=None, col="cell",
                    col_order=order, col_wrap=min(len(order), 4), height=2.6, aspect=1.3,
                    palette="tab10",
                    facet_kws=dict(sharex=True, sharey=True))
    g.set(xscale="log", ylim=(-0.02, 1.02))
    g.set_titles("{col_name}", size=8)
    paths = [save(g.figure, out_dir, "grok_curves")]

    fig, ax = plt.subplots(figsize=(6.5, 4))
    sns.lineplot(data=data, x="step", y="weight_norm", hue="cell", units="trial_id", estimator=None,
                 ax=ax, lw=1)
    ax.set(xscale="log", ylabel="weight norm ||w||_2")
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=7)
    paths.append(save(fig, out_dir, "grok_weight_norm"))
    return paths


def _seed_spread(trials, steps_to, out_dir) -> Path:
    order = list(dict.fromkeys(trials["cell"]))  # grid order: trials come sorted by grid keys
    reached = trials[trials["step_test_99"].notna()]
    never = trials[trials["step_test_99"].isna()]
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(order) + 2), 4))
    sns.boxplot(data=reached, x="cell", y="step_test_99", order=order, color="0.9", ax=ax,
                showfliers=False, log_scale=True)
    sns.stripplot(data=reached, x="cell", y="step_test_99", order=order, hue="seed",
                  palette="tab10", ax=ax, size=5, jitter=0.15)
    if not never.empty:
        ax.scatter([order.index(c) for c in never["cell"]], never["steps"], marker="x", color="red",
                   label="never (at step budget)", zorder=3)
    ax.set(xlabel="", ylabel=steps_to, title="Spread over seeds")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right", fontsize=8)
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=7, title="seed")
    return save(fig, out_dir, "grok_seed_spread")

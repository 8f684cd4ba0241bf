"""Figures of `classify` sweeps, picked from the swept keys.

- error vs the size key (width, else n_train, else the first swept key): test and train error,
  mean and 95% CI over seeds (no band with 1 seed), interpolation threshold marked, panels by
  label_noise if swept;
- width x epochs heatmap of test error from the curves (epoch-wise double descent, no extra
  training), when width is swept;
- width x n_train and width x rho heatmaps when those are swept with width;
- the sharpness figures (analysis.sharpness) when trials ran with measure_sharpness.
Failed trials and grid points without a trial are marked in every figure (docs/figures.md).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis import common
from analysis import double_descent as dd


def build(trials: pd.DataFrame, curves: pd.DataFrame, spec: dict) -> list:
    ok = trials[trials.status == "ok"]
    if ok.empty:
        return []
    grid = [k for k in spec["grid"] if k in trials]
    swept = [k for k in grid if len(common.grid_values(spec, k)) > 1] or grid
    x = next((k for k in ("width", "n_train") if k in swept), swept[0])
    facet = "label_noise" if "label_noise" in swept and x != "label_noise" else None
    figures = [(f"error_vs_{x}", dd.error_figure(trials, spec, x, facet=facet))]
    if "width" in swept:
        failed = trials[trials.status == "failed"]
        if not curves.empty and curves["epoch"].nunique() > 2:
            figures += _epochs_heatmaps(trials, curves, spec, swept, facet)
        errors = dd.with_errors(trials)
        for y in ("n_train", "rho"):
            if y in swept:
                title = common.with_tally(f"test error by width and {common.name(y)}",
                                          len(failed), common.n_missing(trials, spec))
                figures.append((f"heatmap_width_x_{y}", dd.heatmap_figure(
                    errors, "width", y, "test_error", facet=facet, title=title,
                    xs=common.grid_values(spec, "width"), ys=common.grid_values(spec, y),
                    failed=_failed_cells(trials, ["width", y], facet),
                    refine=spec.get("refine"))))
    if "lambda_max" in ok:  # run with measure_sharpness: its figures too
        from analysis import sharpness

        figures += sharpness.build(trials, curves, spec)
    return figures


def _epochs_heatmaps(trials, curves, spec, swept, facet):
    """Test error by width and epoch: panels by label noise, else by rho; with both swept, one
    figure per rho (stem suffix). Widths whose trials all failed, or have no curve, are hatched.
    A refined sweep shows its round-0 grid here (its refined points are in the width x n_train
    or width x rho map)."""
    missing = common.n_missing(trials, spec)
    if "round" in trials:
        trials = trials[trials["round"].fillna(0) == 0]
    ok, failed = trials[trials.status == "ok"], trials[trials.status == "failed"]
    table = dd.epochs_table(ok, curves)
    facet = facet or ("rho" if "rho" in swept else None)
    split = "rho" if "rho" in swept and facet != "rho" else None
    out = []
    for value in common.grid_values(spec, split) if split else [None]:
        def part(df, value=value):
            return df if split is None else df[df[split] == value]
        no_curve = len(set(part(ok).trial_id) - set(curves.trial_id))
        where = f" ({common.name(split)} {common.fmt(value)})" if split else ""
        title = common.with_tally(f"test error by width and epoch{where}", len(part(failed)),
                                  missing if not split else 0, no_curve)
        cells = _failed_cells(part(trials), ["width"], facet)
        fig = dd.heatmap_figure(part(table), "width", "epoch", "test_error", facet=facet,
                                title=title, xs=common.grid_values(spec, "width"),
                                failed=[(*c, None) for c in cells])
        out.append((f"heatmap_width_x_epochs{f'_{split}{value}' if split else ''}", fig))
    return out


def _failed_cells(trials, keys, facet):
    """(facet, x, y) of the cells whose trials all failed."""
    cols = [facet, *keys] if facet else keys
    status = trials.groupby(cols)["status"].apply(lambda s: (s == "failed").all())
    cells = status[status].index
    cells = [c if isinstance(c, tuple) else (c,) for c in cells]
    return [c if facet else (None, *c) for c in cells]


def make_figures(trials: pd.DataFrame, curves: pd.DataFrame, spec: dict,
                 out_dir: Path) -> list[Path]:
    return common.save_all(build(trials, curves, spec), out_dir)

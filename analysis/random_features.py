"""Random-features double descent: error against the feature count N, peak at N = n_train."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis import common
from analysis import double_descent as dd


def build(trials: pd.DataFrame, curves: pd.DataFrame, spec: dict) -> list:
    ok = trials[trials.status == "ok"]
    if ok.empty:
        return []
    swept = "n_train" in spec["grid"] and len(common.grid_values(spec, "n_train")) > 1
    n_train = ok["n_train"].unique()
    figures = [("error_vs_n_features", dd.error_figure(
        trials, spec, "n_features", facet="n_train" if swept else None,
        mark=float(n_train[0]) if len(n_train) == 1 else None,
        mark_label=f"N = training samples ({n_train[0]})" if len(n_train) == 1 else None))]
    if swept:
        failed = trials[trials.status == "failed"]
        title = common.with_tally("test error by random features and training samples",
                                  len(failed), common.n_missing(trials, spec))
        all_failed = trials.groupby(["n_features", "n_train"])["status"].apply(
            lambda s: (s == "failed").all())
        figures.append(("heatmap_n_features_x_n_train", dd.heatmap_figure(
            dd.with_errors(trials), "n_features", "n_train", "test_error", title=title,
            xs=common.grid_values(spec, "n_features"), ys=common.grid_values(spec, "n_train"),
            failed=[(None, *c) for c in all_failed[all_failed].index],
            refine=spec.get("refine"))))
    return figures


def make_figures(trials: pd.DataFrame, curves: pd.DataFrame, spec: dict,
                 out_dir: Path) -> list[Path]:
    return common.save_all(build(trials, curves, spec), out_dir)

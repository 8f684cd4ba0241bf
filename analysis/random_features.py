"""Random-features double descent: error against the feature count N, peak at N = n_train."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis import double_descent as dd


def make_figures(trials: pd.DataFrame, curves: pd.DataFrame, spec: dict,
                 out_dir: Path) -> list[Path]:
    ok = trials[trials.status == "ok"]
    if ok.empty:
        return []
    swept = set(spec["grid"])
    n_train = ok["n_train"].unique()
    figs = [dd.error_curve(ok, spec, Path(out_dir), "n_features",
                           facet="n_train" if "n_train" in swept else None,
                           mark=float(n_train[0]) if len(n_train) == 1 else None)]
    if "n_train" in swept:
        figs.append(dd.heatmap(dd.with_errors(ok), "n_features", "n_train", "test_error",
                               Path(out_dir), "heatmap_n_features_x_n_train"))
    return figs

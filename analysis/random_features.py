"""Random-features double descent: error against the feature count N, peak at N = n_train."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis import double_descent as dd


def make_figures(trials: pd.DataFrame, curves: pd.DataFrame, spec: dict,
                 out_dir: Path) -> list[Path]:
    ok = trials[trials["status"] == "ok"]
    swept = set(spec.get("grid", {}))
    hue = next((k for k in ("ridge", "label_noise", "features") if k in swept), None)
    figs = [dd.error_curve(ok, "n_features", out_dir, "error_vs_n_features", hue=hue,
                           title=f"{spec['name']}: random features, n_train = "
                                 f"{', '.join(map(str, sorted(ok['n_train'].unique())))}")]
    if "n_train" in swept:
        figs.append(dd.heatmap(dd.with_errors(ok), "n_features", "n_train", "test_error",
                               out_dir, "heatmap_n_features_x_n_train"))
    return figs

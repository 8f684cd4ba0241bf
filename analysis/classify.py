"""Figures of `classify` sweeps, picked from the swept keys.

- error vs the size key (width, else n_train, else the first swept key): test and train error,
  mean and 95% CI over seeds, interpolation threshold marked, panels by label_noise if swept;
- width x epochs heatmap of test error from the curves (epoch-wise double descent, no extra
  training), when width is swept;
- width x n_train and width x rho heatmaps when those are swept with width;
- the sharpness figures (analysis.sharpness) when trials ran with measure_sharpness.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis import double_descent as dd


def make_figures(trials: pd.DataFrame, curves: pd.DataFrame, spec: dict,
                 out_dir: Path) -> list[Path]:
    ok = trials[trials.status == "ok"]
    if ok.empty:
        return []
    out_dir = Path(out_dir)
    swept = [k for k in spec["grid"] if ok[k].nunique() > 1] or list(spec["grid"])
    x = next((k for k in ("width", "n_train") if k in swept), swept[0])
    facet = "label_noise" if "label_noise" in swept and x != "label_noise" else None
    paths = [dd.error_curve(ok, spec, out_dir, x, facet=facet)]
    if "width" in swept:
        if not curves.empty and curves["epoch"].nunique() > 2:
            table = dd.epochs_table(ok, curves)
            paths.append(dd.heatmap(table, "width", "epoch", "test_error", out_dir,
                                    "heatmap_width_x_epochs", facet=facet,
                                    title="test error (%) by width and epoch"))
        errors = dd.with_errors(ok)
        for y in ("n_train", "rho"):
            if y in swept:
                paths.append(dd.heatmap(errors, "width", y, "test_error", out_dir,
                                        f"heatmap_width_x_{y}", facet=facet,
                                        title=f"test error (%) by width and {y}"))
    if "lambda_max" in ok:  # run with measure_sharpness: its figures too
        from analysis import sharpness

        paths += sharpness.make_figures(ok, curves, spec, out_dir)
    return paths

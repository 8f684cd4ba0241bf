"""Figures of `classify` sweeps: test and train error against the swept key (width first).

Mean over seeds with a seeded-bootstrap 95% CI band; other swept keys become colours. Sweeps run
with `measure_sharpness` also get analysis.sharpness's figures.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.ticker import NullLocator

from analysis.common import save


def error_vs_key(trials: pd.DataFrame, spec: dict, out_dir: Path) -> Path:
    swept = list(spec["grid"])
    x = "width" if "width" in swept else swept[0]
    others = [k for k in swept if k != x]
    df = trials.sort_values(others + [x]) if others else trials.copy()
    df["setting"] = (df[others].astype(str).apply(lambda r: ", ".join(f"{k}={v}" for k, v in
                                                                       r.items()), axis=1)
                     if others else "")
    long = pd.concat([df.assign(split=split, error=1 - df[f"{split}_acc"])
                      for split in ("test", "train")])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    sns.lineplot(data=long, x=x, y="error", hue="setting" if others else None,
                 hue_order=list(dict.fromkeys(df.setting)) if others else None, style="split",
                 style_order=["test", "train"], markers=True, errorbar=("ci", 95), seed=0, ax=ax)
    values = pd.to_numeric(df[x], errors="coerce")
    if values.notna().all() and values.min() > 0 and values.max() / values.min() >= 8:
        ax.set_xscale("log")
        ax.set_xticks(sorted(values.unique()), labels=[f"{v:g}" for v in sorted(values.unique())])
        ax.xaxis.set_minor_locator(NullLocator())
    seeds = int(df.groupby(swept).seed.nunique().min())
    ax.set(xlabel=x, ylabel="error (1 - accuracy)",
           title=f"{spec['name']}: mean and 95% CI over {seeds} seed{'s' * (seeds > 1)}")
    ax.grid(alpha=0.3)
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    return save(fig, out_dir, f"error_vs_{x}")


def make_figures(trials, curves, spec, out_dir) -> list[Path]:
    ok = trials[trials.status == "ok"]
    if ok.empty:
        return []
    paths = [error_vs_key(ok, spec, Path(out_dir))]
    if "lambda_max" in ok:  # run with measure_sharpness: its figures too
        from analysis import sharpness

        paths += sharpness.make_figures(ok, curves, spec, Path(out_dir))
    return paths

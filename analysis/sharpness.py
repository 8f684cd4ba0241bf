"""Sharpness against rho and size: figures for a `classify` sweep run with measure_sharpness.

- sharpness: λmax, Hessian trace, ε-sharpness and final test error (%) against the swept size key
  (width by default), one colour per rho, 2 x 2 panels; mean and 95% band over seeds (no band
  with 1 seed). Failed trials are red x on the x axis and counted in the title.
Other keys that vary (besides seed, rho and the size key) split the figures (file stem suffix).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from analysis import common
from analysis.double_descent import n_seeds

MEASURES = {"lambda_max": "Hessian top eigenvalue $\\lambda_{max}$",
            "hessian_trace": "Hessian trace", "eps_sharpness": "ε-sharpness (loss increase)",
            "test_error": "test error (%)"}


def build(trials: pd.DataFrame, curves: pd.DataFrame, spec: dict) -> list:
    done = trials[trials["status"] == "ok"].dropna(subset=["lambda_max"])
    if done.empty:
        return []
    failed = trials[trials["status"] == "failed"]
    grid = spec.get("grid", {})
    varying = [k for k in grid if k in trials and k not in ("seed", "rho")
               and len(common.grid_values(spec, k)) > 1]
    x = "width" if "width" in varying else (varying[0] if varying else "rho")
    hue = "rho" if x != "rho" else None  # a sweep of rho alone puts rho on the x axis
    rest = [k for k in varying if k != x]
    done = done.assign(test_error=100 * (1 - done["test_acc"]))
    rhos = sorted(done["rho"].unique()) if hue else []
    palette = dict(zip(rhos, sns.color_palette("viridis", len(rhos))))
    seeds = n_seeds(trials, spec)
    groups = done.groupby(rest, sort=True) if rest else [((), done)]
    out = []
    for values, sub in groups:
        values = values if isinstance(values, tuple) else (values,)
        suffix = "".join(f"_{k}{v}" for k, v in zip(rest, values))
        lost = failed
        for k, v in zip(rest, values):
            lost = lost[lost[k] == v]
        fig, axes = common.panels(len(MEASURES), ncols=2, panel=(3.3, 2.4))
        for ax, (measure, words) in zip(axes, MEASURES.items()):
            for rho in rhos or [None]:
                line = sub if rho is None else sub[sub["rho"] == rho]
                sns.lineplot(data=line, x=x, y=measure, ax=ax, marker="o", markersize=4,
                             color=palette.get(rho, "C0"), seed=0, legend=False,
                             errorbar=("ci", 95) if seeds > 1 else None)
            common.mark_failed_missing(ax, lost[x].tolist())
            common.value_axis(ax, "x", common.grid_values(spec, x) or sub[x].unique())
            ax.set(xlabel=common.label(x), ylabel=words)
            ax.grid(alpha=0.3)
        handles = [Line2D([], [], color=c, marker="o", ms=4, label=common.fmt(r))
                   for r, c in palette.items()]
        if len(lost):
            handles.append(Line2D([], [], ls="", marker="x", color="#d62728",
                                  label=f"failed trial ({len(lost)})"))
        if handles:
            fig.legend(handles=handles, title=common.label("rho") if hue else None,
                       loc="outside lower center", ncols=min(len(handles), 5), frameon=False)
        where = f" ({common.setting(dict(zip(rest, values)), rest)})" if rest else ""
        title = f"{spec['name']}{where}: sharpness at the end of training, {common.seeds_note(seeds)}"
        fig.suptitle(common.with_tally(title, len(lost)))
        out.append((f"sharpness{suffix}", fig))
    return out


def make_figures(trials: pd.DataFrame, curves: pd.DataFrame, spec: dict,
                 out_dir: Path) -> list[Path]:
    return common.save_all(build(trials, curves, spec), out_dir)

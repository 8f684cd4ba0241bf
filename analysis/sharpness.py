"""Sharpness against rho and size: figures for a `classify` sweep run with measure_sharpness.

- sharpness: lambda_max, Hessian trace, eps-sharpness and final test error against the swept
  size key (width by default), one line per rho, mean and 95% band over seeds.
Other keys that vary (besides seed, rho and the size key) split the figures (file stem suffix).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import seaborn as sns

from analysis.common import save

MEASURES = {"lambda_max": "λ_max (Hessian)", "hessian_trace": "Hessian trace",
            "eps_sharpness": "ε-sharpness", "test_err": "test error"}


def make_figures(trials: pd.DataFrame, curves: pd.DataFrame, spec: dict,
                 out_dir: Path) -> list[Path]:
    trials = trials.dropna(subset=["lambda_max"])  # finished trials that measured sharpness
    if trials.empty:
        return []
    varying = [k for k in spec.get("grid", {})
               if k in trials and k not in ("seed", "rho") and trials[k].nunique() > 1]
    x = "width" if "width" in varying else (varying[0] if varying else "rho")
    hue = "rho" if x != "rho" else None  # a sweep of rho alone puts rho on the x axis
    rest = [k for k in varying if k != x]
    long = trials.assign(test_err=1 - trials["test_acc"]).melt(
        id_vars=list(dict.fromkeys([x, "rho", *rest])), value_vars=list(MEASURES),
        var_name="measure")
    long["measure"] = long["measure"].map(MEASURES)
    if hue:
        rhos = [str(r) for r in sorted(trials["rho"].unique())]
        long["rho"] = pd.Categorical(long["rho"].map(str), rhos)  # distinct colours, not a ramp
    groups = long.groupby(rest, sort=True) if rest else [((), long)]
    out = []
    for values, sub in groups:
        values = values if isinstance(values, tuple) else (values,)
        suffix = "".join(f"_{k}{v}" for k, v in zip(rest, values))
        g = sns.relplot(data=sub, x=x, y="value", hue=hue, col="measure", kind="line",
                        markers=True, dashes=False, errorbar=("ci", 95), height=2.8,
                        facet_kws=dict(sharey=False))
        g.set_titles("{col_name}")
        g.set_ylabels("")
        if pd.api.types.is_numeric_dtype(sub[x]) and (sub[x] > 0).all():
            ticks = sorted(sub[x].unique())
            g.set(xscale="log", xticks=ticks, xticklabels=[str(t) for t in ticks])
            for ax in g.axes.flat:
                ax.minorticks_off()
        out.append(save(g.figure, out_dir, f"sharpness{suffix}"))
    return out

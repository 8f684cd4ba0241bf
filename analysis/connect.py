"""Figures for the `connect` experiment (mode connectivity), from trials.parquet and curves/.

- connect_paths_<metric>: train loss and test error along t, straight line against each curve
  kind, mean and 95% band over seeds.
- connect_barriers: barrier (train loss; test error) against the swept size key, line vs curve.
- connect_plane: train loss on the plane through A, B and the bend with the segment and the curve
  drawn (Garipov et al. Fig. 5); trials run with plane_points > 0, lowest seed.
- connect_landscape / connect_landscape_1d: filter-normalized slices around endpoint A (Li et
  al.), one panel per value of the last swept key (e.g. rho: SGD beside SAM) on one colour scale;
  trials run with landscape_points > 0, lowest seed.

Layout: the config keys that vary across trials (besides seed and curve) are the facets; the last
two become rows and columns, and any before them split the figures (file stem suffix).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm

from analysis.common import save

NOT_FACETS = {"seed", "curve", "seed_b", "endpoint_a", "endpoint_b"}
CMAP = "viridis_r"  # low loss bright


def _facets(trials: pd.DataFrame, spec: dict) -> list[str]:
    keys = [k for k in spec.get("grid", {}) if k not in NOT_FACETS and k in trials]
    return [k for k in keys if trials[k].nunique(dropna=False) > 1]


def _split(frame: pd.DataFrame, keys: list[str]):
    """(stem suffix, sub-frame) per combination of the leading facet keys."""
    lead = keys[:-2]
    if not lead:
        yield "", frame
        return
    for values, sub in frame.groupby(lead, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        yield "_" + "_".join(f"{k}{v}" for k, v in zip(lead, values)), sub


def _row_col(keys):
    tail = keys[-2:]
    return (tail[0] if len(tail) == 2 else None), (tail[-1] if tail else None)


def _categorical(frame: pd.DataFrame, key: str | None) -> pd.DataFrame:
    """A numeric hue key as sorted strings, so seaborn draws distinct colours, not a ramp."""
    if key is None or not pd.api.types.is_numeric_dtype(frame[key]):
        return frame
    order = {v: str(v) for v in sorted(frame[key].unique())}
    return frame.assign(**{key: pd.Categorical(frame[key].map(order), list(order.values()))})


def _size_axis(g, values):
    """Log x axis with a tick at every swept size."""
    values = sorted(values)
    g.set(xscale="log", xticks=values, xticklabels=[str(v) for v in values])
    for ax in g.axes.flat:
        ax.minorticks_off()


def _path_label(frame: pd.DataFrame) -> pd.Series:
    return frame["path"].where(frame["path"] == "linear", frame["curve"]).replace("linear", "line")


def _paths(trials, curves, keys, out_dir):
    cols = ["trial_id", "curve", *keys]
    along = curves[curves["path"].isin(["linear", "curve"])].merge(trials[cols], on="trial_id")
    along = along.assign(label=_path_label(along))
    row, col = _row_col(keys)
    out = []
    for metric in ("train_loss", "test_err"):
        for suffix, sub in _split(along, keys):
            g = sns.relplot(data=sub, x="t", y=metric, hue="label", row=row, col=col, kind="line",
                            errorbar=("ci", 95), height=2.6, aspect=1.3,
                            facet_kws=dict(margin_titles=True))
            g.set_axis_labels("t (A at 0, B at 1)", metric.replace("_", " "))
            g.legend.set_title("path")
            out.append(save(g.figure, out_dir, f"connect_paths_{metric}{suffix}"))
    return out


def _barriers(trials, keys, out_dir):
    value_cols = [f"barrier_{m}_{p}" for m in ("loss", "err") for p in ("linear", "curve")]
    long = trials.melt(id_vars=["curve", *keys], value_vars=value_cols, var_name="which",
                       value_name="barrier")
    long["measure"] = np.where(long["which"].str.contains("_loss_"), "train loss", "test error")
    long["path"] = _path_label(long.assign(path=long["which"].str.rsplit("_", n=1).str[1]))
    x = keys[-2] if len(keys) >= 2 else (keys[-1] if keys else "path")
    hue = keys[-1] if len(keys) >= 2 else None
    out = []
    for suffix, sub in _split(long, keys):
        g = sns.relplot(data=_categorical(sub, hue), x=x, y="barrier", hue=hue, style="path",
                        col="measure", kind="line", markers=True, errorbar=("ci", 95), height=3,
                        facet_kws=dict(sharey=False))
        if x in keys and pd.api.types.is_numeric_dtype(sub[x]) and (sub[x] > 0).all():
            _size_axis(g, sub[x].unique())
        out.append(save(g.figure, out_dir, f"connect_barriers{suffix}"))
    return out


def _lowest_seed(trials, keys):
    """One trial per (keys, curve), the lowest seed, in keys-then-curve order."""
    first = trials.sort_values("seed").groupby([*keys, "curve"], sort=True).head(1)
    return first.sort_values([*keys, "curve"])


def _grid(rows: pd.DataFrame, value="train_loss"):
    table = rows.pivot_table(index="v", columns="u", values=value)
    return table.columns.to_numpy(), table.index.to_numpy(), table.to_numpy()


def _log_levels(values, n=20):
    lo, hi = np.nanmin(values), np.nanmax(values)
    return np.geomspace(max(lo, 1e-4), max(hi, 2e-4), n)


def _panels(n_panels, ncols, aspect=1.0):
    """A grid of n_panels axes, each 3.4 inches wide and aspect (height / width) high."""
    nrows = -(-n_panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, (3.4 * aspect + 0.5) * nrows),
                             squeeze=False, layout="constrained")
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n_panels])


def _colorbar(fig, axes, levels, label):
    norm = LogNorm(levels[0], levels[-1])
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=CMAP), ax=axes, label=label, shrink=0.8)


def _title(trial, keys):
    return ", ".join(f"{k}={trial[k]}" for k in ["curve", *keys])


def _plane(trials, curves, keys, out_dir):
    chosen = _lowest_seed(trials, keys)
    chosen = chosen[chosen["trial_id"].isin(curves.loc[curves["path"] == "plane", "trial_id"])]
    if chosen.empty:
        return []
    by_trial = dict(tuple(curves[curves["trial_id"].isin(chosen["trial_id"])].groupby("trial_id")))
    levels = _log_levels(np.concatenate([_grid(by_trial[t][by_trial[t]["path"] == "plane"])[2]
                                         .ravel() for t in chosen["trial_id"]]))
    first = by_trial[chosen["trial_id"].iloc[0]]
    u, v, _ = _grid(first[first["path"] == "plane"])
    ncols = chosen["curve"].nunique() * (chosen[keys[-1]].nunique() if keys else 1)
    fig, axes = _panels(len(chosen), ncols, aspect=np.ptp(v) / np.ptp(u))
    for ax, (_, trial) in zip(axes, chosen.iterrows()):
        rows = by_trial[trial["trial_id"]]
        u, v, loss = _grid(rows[rows["path"] == "plane"])
        ax.contourf(u, v, np.clip(loss, levels[0], levels[-1]), levels=levels, norm=LogNorm(),
                    cmap=CMAP)
        for path, style in (("linear", "w--"), ("curve", "w-")):
            p = rows[rows["path"] == path].sort_values("t")
            ax.plot(p["u"], p["v"], style, lw=1.5, label=path)
        ends = rows[(rows["path"] == "linear") & rows["t"].isin([0.0, 1.0])]
        ax.plot(ends["u"], ends["v"], "wo", ms=5)
        ax.set_title(_title(trial, keys), fontsize=8)
        ax.set_aspect("equal")
    _colorbar(fig, axes, levels, "train loss")
    return [save(fig, out_dir, "connect_plane")]


def _landscape(trials, curves, keys, out_dir):
    first_kind = sorted(trials["curve"].unique())[0]  # every curve kind shares the endpoints
    chosen = _lowest_seed(trials[trials["curve"] == first_kind], keys)
    rows = curves[(curves["path"] == "landscape") & curves["trial_id"].isin(chosen["trial_id"])]
    if rows.empty:
        return []
    rows = rows.merge(chosen[["trial_id", *keys]], on="trial_id")
    levels = _log_levels(rows["train_loss"].to_numpy())
    side = keys[-1] if keys else None
    out = []
    for suffix, sub in _split(rows, keys):
        ids = list(dict.fromkeys(sub.sort_values([*keys])["trial_id"]))
        fig, axes = _panels(len(ids), ncols=len(sub[side].unique()) if side else 1)
        for ax, trial_id in zip(axes, ids):
            u, v, loss = _grid(sub[sub["trial_id"] == trial_id])
            ax.contourf(u, v, np.clip(loss, levels[0], levels[-1]), levels=levels, norm=LogNorm(),
                        cmap=CMAP)
            ax.plot([0], [0], "w*", ms=8)
            trial = chosen.set_index("trial_id").loc[trial_id]
            ax.set_title(", ".join(f"{k}={trial[k]}" for k in keys), fontsize=8)
            ax.set_aspect("equal")
        _colorbar(fig, axes, levels, "train loss")
        out.append(save(fig, out_dir, f"connect_landscape{suffix}"))

        one_d = sub[sub["v"].abs() == sub["v"].abs().min()]  # the grid row through A
        col = keys[-2] if len(keys) >= 2 else None
        g = sns.relplot(data=_categorical(one_d, side), x="u", y="train_loss", hue=side, col=col,
                        kind="line", height=2.6)
        g.set(yscale="log")
        g.set_axis_labels("filter-normalized step from A", "train loss")
        out.append(save(g.figure, out_dir, f"connect_landscape_1d{suffix}"))
    return out


def make_figures(trials: pd.DataFrame, curves: pd.DataFrame, spec: dict,
                 out_dir: Path) -> list[Path]:
    trials = trials.dropna(subset=["barrier_loss_curve"])  # finished trials only
    curves = curves[curves["trial_id"].isin(trials["trial_id"])]
    if trials.empty:
        return []
    keys = _facets(trials, spec)
    return list(itertools.chain(
        _paths(trials, curves, keys, out_dir),
        _barriers(trials, keys, out_dir),
        _plane(trials, curves, keys, out_dir),
        _landscape(trials, curves, keys, out_dir),
    ))

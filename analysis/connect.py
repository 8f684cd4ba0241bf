"""Figures for the `connect` experiment (mode connectivity), from trials.parquet and curves/.

- connect_paths_<metric>: train loss and test error (%) along t, straight line against each curve
  kind, mean and 95% band over seeds (no band with 1 seed).
- connect_barriers: barrier (train loss; test error in percentage points) against the swept size
  key, line vs curve, one colour per value of the last swept key.
- connect_plane: train loss on the plane through A, B and the bend with the segment and the curve
  drawn and A, B and the bend labelled (Garipov et al. Fig. 5); trials run with plane_points > 0,
  lowest seed.
- connect_landscape / connect_landscape_1d: filter-normalized slices around endpoint A (Li et
  al.), one panel per value of the last swept key (e.g. rho: SGD beside SAM) on one colour scale;
  trials run with landscape_points > 0, lowest seed, first curve kind (all kinds share A).

Layout: the config keys the spec sweeps (besides seed and curve) are the facets; the last two
become rows and columns of panels, and any before them split the figures (file stem suffix).
Failed trials are counted in every title; a panel whose trials all failed says so.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from analysis import common
from analysis.double_descent import n_seeds

NOT_FACETS = {"seed", "curve", "seed_b", "endpoint_a", "endpoint_b"}
CMAP = "viridis_r"  # low loss bright
METRICS = {"train_loss": "train loss (cross-entropy)", "test_err": "test error (%)"}
LOSS_BAR = "train loss (cross-entropy, log colour scale)"


def _facets(trials: pd.DataFrame, spec: dict) -> list[str]:
    return [k for k in spec.get("grid", {}) if k not in NOT_FACETS and k in trials
            and len(common.grid_values(spec, k)) > 1]


def _split(frame: pd.DataFrame, keys: list[str]):
    """(stem suffix, title part, sub-frame) per combination of the leading facet keys."""
    lead = keys[:-2]
    if not lead:
        yield "", "", frame
        return
    for values, sub in frame.groupby(lead, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        yield ("_" + "_".join(f"{k}{v}" for k, v in zip(lead, values)),
               common.setting(dict(zip(lead, values)), lead), sub)


def _cells(frame: pd.DataFrame, keys: list[str], spec: dict) -> list[dict]:
    """The (row, column) facet values of one figure, in grid order, from the spec."""
    tail = keys[-2:]
    return [dict(zip(tail, values)) for values in
            itertools.product(*[common.grid_values(spec, k) for k in tail])]


def _select(frame, cell):
    for k, v in cell.items():
        frame = frame[frame[k] == v]
    return frame


def _path_label(frame: pd.DataFrame) -> pd.Series:
    return frame["path"].where(frame["path"] == "linear", frame["curve"]).replace("linear", "line")


def _title(spec, what, where, seeds_text, failed):
    head = f"{spec['name']}{' (' + where + ')' if where else ''}: {what}"
    return common.with_tally(f"{head}, {seeds_text}" if seeds_text else head, failed)


def _mark_failed_panel(ax, n_failed):
    """A grid cell with no finished trial: hatched, saying whether its trials failed."""
    ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, facecolor="white",
                           edgecolor="0.6", lw=0,
                           hatch=common.FAILED_HATCH if n_failed else common.MISSING_HATCH))
    ax.text(0.5, 0.5, f"{n_failed} failed\n(no result)" if n_failed else "missing\n(no trial)",
            transform=ax.transAxes, ha="center", va="center",
            color="#d62728" if n_failed else "0.3",
            bbox=dict(facecolor="white", edgecolor="none"))


def _paths(trials, failed, curves, keys, spec):
    cols = ["trial_id", "curve", *keys]
    along = curves[curves["path"].isin(["linear", "curve"])].merge(trials[cols], on="trial_id")
    along = along.assign(label=_path_label(along), test_err=100 * along["test_err"])
    labels = ["line", *sorted(trials["curve"].unique())]
    colours = dict(zip(labels, ["0.35", *sns.color_palette("tab10")]))
    seeds = n_seeds(trials, spec)
    out = []
    for metric, words in METRICS.items():
        for suffix, where, sub in _split(along, keys):
            cells = _cells(sub, keys, spec)
            fig, axes = common.panels(len(cells), ncols=min(len(cells), 2), panel=(3.3, 2.3),
                                      sharey=True)
            for ax, cell in zip(axes, cells):
                here = _select(sub, cell)
                for name, line in here.groupby("label"):
                    sns.lineplot(data=line, x="t", y=metric, ax=ax, color=colours[name],
                                 ls="--" if name == "line" else "-", seed=0, legend=False,
                                 errorbar=("ci", 95) if seeds > 1 else None)
                if here.empty:
                    _mark_failed_panel(ax, len(_select(failed, cell)))
                ax.set(xlabel="t along the path (A at 0, B at 1)", ylabel=words,
                       title=common.setting(cell, list(cell)) or None)
                ax.set_xticks([0, 0.25, 0.5, 0.75, 1])
                if metric == "train_loss":
                    ax.set_yscale("log")
                ax.grid(alpha=0.3)
            fig.legend(handles=[Line2D([], [], color=colours[n], ls="--" if n == "line" else "-",
                                       label=n) for n in labels],
                       title="path from A to B", loc="outside lower center",
                       ncols=len(labels), frameon=False)
            fig.suptitle(_title(spec, f"{words.split(' (')[0]} along the paths", where,
                                common.seeds_note(seeds), len(_within(failed, sub, keys))))
            out.append((f"connect_paths_{metric}{suffix}", fig))
    return out


def _within(failed, sub, keys):
    """The failed trials that belong to the figure of `sub` (same leading facet values)."""
    lead = keys[:-2]
    if not lead or sub.empty:
        return failed
    first = sub.iloc[0]
    return _select(failed, {k: first[k] for k in lead})


def _barriers(trials, failed, keys, spec):
    value_cols = [f"barrier_{m}_{p}" for m in ("loss", "err") for p in ("linear", "curve")]
    long = trials.melt(id_vars=["curve", "seed", *keys], value_vars=value_cols, var_name="which",
                       value_name="barrier")
    err = long["which"].str.contains("_err_")
    long["barrier"] = long["barrier"].where(~err, 100 * long["barrier"])
    long["measure"] = np.where(err, "test error", "train loss")
    long["path"] = _path_label(long.assign(path=long["which"].str.rsplit("_", n=1).str[1]))
    long = long.drop_duplicates(["path", "measure", "seed", *keys])  # the line, once per trial
    x = keys[-2] if len(keys) >= 2 else (keys[-1] if keys else None)
    hue = keys[-1] if len(keys) >= 2 else None
    paths = ["line", *sorted(trials["curve"].unique())]
    styles = dict(zip(paths, ["--", "-", ":", "-."]))
    markers = dict(zip(paths, ["s", "o", "^", "D"]))
    seeds = n_seeds(trials, spec)
    out = []
    for suffix, where, sub in _split(long, keys):
        hues = common.grid_values(spec, hue) if hue else [None]
        palette = dict(zip(hues, sns.color_palette("viridis" if len(hues) > 3 else "tab10",
                                                   len(hues))))
        lost = _within(failed, sub, keys)
        fig, axes = common.panels(2, ncols=2, panel=(3.3, 2.6))
        for ax, (measure, words) in zip(axes, (("train loss", "barrier: train loss"),
                                               ("test error", "barrier: test error (% points)"))):
            part = sub[sub["measure"] == measure]
            for (h, path), line in part.groupby([hue or "measure", "path"], sort=True):
                sns.lineplot(data=line, x=x or "path", y="barrier", ax=ax, seed=0, legend=False,
                             color=palette[h] if hue else "C0", ls=styles.get(path, "-"),
                             marker=markers.get(path, "o"), markersize=4,
                             errorbar=("ci", 95) if seeds > 1 else None)
            if x:
                common.mark_failed_missing(ax, lost[x].tolist())
                common.value_axis(ax, "x", common.grid_values(spec, x))
            ax.set(xlabel=common.label(x) if x else "path", ylabel=words, title=measure)
            ax.grid(alpha=0.3)
        handles = [Line2D([], [], color="0.3", ls=styles.get(p, "-"), marker=markers.get(p, "o"),
                          ms=4, label=p) for p in paths]
        handles += [Line2D([], [], color=c, marker="o", ms=4,
                           label=f"{common.name(hue)} {common.fmt(h)}")
                    for h, c in palette.items() if hue]
        if len(lost):
            handles.append(Line2D([], [], ls="", marker="x", color="#d62728",
                                  label=f"failed trial ({len(lost)})"))
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4),
                   frameon=False)
        fig.suptitle(_title(spec, "barrier height (max over t above the endpoints' mean)", where,
                            common.seeds_note(seeds), len(lost)))
        out.append((f"connect_barriers{suffix}", fig))
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


def _colorbar(fig, axes, levels, label):
    norm = LogNorm(levels[0], levels[-1])
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=CMAP), ax=axes, label=label, shrink=0.8)


def _bend(rows, trial):
    """(u, v, name) of the point to label on the curve: its bend where the curve kind makes it
    recoverable from the curve's points, else its middle."""
    curve = rows[rows["path"] == "curve"].sort_values("t")
    if curve.empty:
        return None
    mid = curve.iloc[(curve["t"] - 0.5).abs().argmin()]
    ends = rows[(rows["path"] == "linear") & rows["t"].isin([0.0, 1.0])].sort_values("t")
    bends = trial.get("num_bends", 3)
    if trial["curve"] == "polychain" and bends == 3:
        return mid["u"], mid["v"], "bend"
    if trial["curve"] == "bezier" and bends == 3 and len(ends) == 2:
        # a quadratic Bezier passes c(0.5) = (A + 2 bend + B) / 4
        u = 2 * mid["u"] - ends["u"].mean()
        v = 2 * mid["v"] - ends["v"].mean()
        return u, v, "bend"
    return mid["u"], mid["v"], "t = 0.5"


def _plane(trials, failed, curves, keys, spec):
    has_plane = trials["trial_id"].isin(curves.loc[curves["path"] == "plane", "trial_id"])
    if not has_plane.any():
        return []
    chosen = _lowest_seed(trials[has_plane], keys)
    by_trial = dict(tuple(curves[curves["trial_id"].isin(chosen["trial_id"])].groupby("trial_id")))
    levels = _log_levels(np.concatenate([_grid(by_trial[t][by_trial[t]["path"] == "plane"])[2]
                                         .ravel() for t in chosen["trial_id"]]))
    kinds = sorted(trials["curve"].unique())
    out = []
    for suffix, where, sub in _split(chosen, keys):
        for kind in kinds:
            part = sub[sub["curve"] == kind]
            lost = _within(failed, part, keys)
            cells = _cells(part, keys, spec)
            fig, axes = common.panels(len(cells), ncols=2, panel=(3.2, 2.5))
            for ax, cell in zip(axes, cells):
                here = _select(part, cell)
                ax.set(xlabel="u: distance along A→B (weight space)",
                       ylabel="v: distance toward the bend",
                       title=common.setting(cell, list(cell)) or f"curve {kind}")
                if here.empty:
                    _mark_failed_panel(ax, len(_select(lost, cell)))
                    continue
                _draw_plane(ax, by_trial[here["trial_id"].iloc[0]], here.iloc[0], levels)
            _colorbar(fig, axes, levels, LOSS_BAR)
            fig.legend(handles=[Line2D([], [], color="0.3", ls="--", label="straight line"),
                                Line2D([], [], color="0.3", ls="-", label=f"trained {kind} curve")],
                       loc="outside lower center", ncols=2, frameon=False)
            what = f"train loss on the plane through A, B and the {kind} curve's bend"
            fig.suptitle(_title(spec, what, where, "lowest seed", len(lost)))
            stem = suffix + (f"_{kind}" if len(kinds) > 1 else "")
            out.append((f"connect_plane{stem}", fig))
    return out


def _draw_plane(ax, rows, trial, levels):
    u, v, loss = _grid(rows[rows["path"] == "plane"])
    ax.contourf(u, v, np.clip(loss, levels[0], levels[-1]), levels=levels, norm=LogNorm(),
                cmap=CMAP)
    for path, style in (("linear", "w--"), ("curve", "w-")):
        p = rows[rows["path"] == path].sort_values("t")
        ax.plot(p["u"], p["v"], style, lw=1.5)
    ends = rows[(rows["path"] == "linear") & rows["t"].isin([0.0, 1.0])].sort_values("t")
    points = [(e["u"], e["v"], name) for (_, e), name in zip(ends.iterrows(), "AB")]
    bend = _bend(rows, trial)
    points += [bend] if bend else []
    for pu, pv, name in points:
        ax.plot([pu], [pv], "o", mfc="white", mec="black", ms=5)
        ax.annotate(name, (pu, pv), xytext=(4, 4), textcoords="offset points", weight="bold",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))


def _landscape(trials, failed, curves, keys, spec):
    kinds = sorted(trials["curve"].unique())
    chosen = _lowest_seed(trials[trials["curve"] == kinds[0]], keys)
    rows = curves[(curves["path"] == "landscape") & curves["trial_id"].isin(chosen["trial_id"])]
    if rows.empty:
        return []
    rows = rows.merge(chosen[["trial_id", *keys]], on="trial_id")
    levels = _log_levels(rows["train_loss"].to_numpy())
    side = keys[-1] if keys else None
    shared = "around endpoint A (lowest seed" + (
        f"; the curve kinds {', '.join(kinds)} share A)" if len(kinds) > 1 else ")")
    out = []
    for suffix, where, sub in _split(rows, keys):
        lost = _within(failed, sub, keys)
        cells = _cells(sub, keys, spec)
        fig, axes = common.panels(len(cells), ncols=min(len(cells), 2), panel=(3.0, 2.7))
        for ax, cell in zip(axes, cells):
            ax.set(xlabel="direction 1 (filter-normalized step)",
                   ylabel="direction 2 (filter-normalized step)",
                   title=common.setting(cell, list(cell)) or "endpoint A")
            here = _select(sub, cell)
            if here.empty:
                _mark_failed_panel(ax, len(_select(lost, cell)))
                continue
            u, v, loss = _grid(here)
            ax.contourf(u, v, np.clip(loss, levels[0], levels[-1]), levels=levels, norm=LogNorm(),
                        cmap=CMAP)
            ax.plot([0], [0], "o", mfc="white", mec="black", ms=5)
            ax.annotate("A", (0, 0), xytext=(4, 4), textcoords="offset points", weight="bold",
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
            ax.set_aspect("equal")
        _colorbar(fig, axes, levels, LOSS_BAR)
        fig.suptitle(_title(spec, f"train loss {shared}", where, "", len(lost)))
        out.append((f"connect_landscape{suffix}", fig))

        one_d = sub[sub["v"].abs() == sub["v"].abs().min()]  # the grid row through A
        col = keys[-2] if len(keys) >= 2 else None
        panels_1d = common.grid_values(spec, col) if col else [None]
        hues = common.grid_values(spec, side) if side else [None]
        palette = dict(zip(hues, sns.color_palette("tab10", len(hues))))
        fig, axes = common.panels(len(panels_1d), ncols=2, panel=(3.3, 2.5), sharey=True)
        for ax, value in zip(axes, panels_1d):
            part = one_d if col is None else one_d[one_d[col] == value]
            for h in hues:
                line = part if side is None else part[part[side] == h]
                ax.plot(line["u"], line["train_loss"], color=palette[h], marker=".",
                        label=f"{common.name(side)} {common.fmt(h)}" if side else None)
            if part.empty:
                _mark_failed_panel(ax, len(_select(lost, {col: value})))
            ax.set(yscale="log", xlabel="filter-normalized step from A along direction 1",
                   ylabel="train loss (cross-entropy)",
                   title=f"{common.name(col)} {common.fmt(value)}" if col else None)
            ax.grid(alpha=0.3)
        if side:
            fig.legend(loc="outside lower center", ncols=len(hues), frameon=False,
                       handles=axes[0].get_legend_handles_labels()[0] or None)
        fig.suptitle(_title(spec, f"1-D cut {shared}", where, "", len(lost)))
        out.append((f"connect_landscape_1d{suffix}", fig))
    return out


def build(trials: pd.DataFrame, curves: pd.DataFrame, spec: dict) -> list:
    status = trials["status"] if "status" in trials else pd.Series("ok", index=trials.index)
    failed = trials[status == "failed"]
    done = trials[status == "ok"]
    if "barrier_loss_curve" in done:
        done = done.dropna(subset=["barrier_loss_curve"])  # finished trials only
    if done.empty:
        return []
    curves = curves[curves["trial_id"].isin(done["trial_id"])]
    keys = _facets(done, spec)
    return list(itertools.chain(
        _paths(done, failed, curves, keys, spec),
        _barriers(done, failed, keys, spec),
        _plane(done, failed, curves, keys, spec),
        _landscape(done, failed, curves, keys, spec),
    ))


def make_figures(trials: pd.DataFrame, curves: pd.DataFrame, spec: dict,
                 out_dir: Path) -> list[Path]:
    return common.save_all(build(trials, curves, spec), out_dir)

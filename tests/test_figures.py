"""Figures fit for a reader: `analysis.figures.build` on sweep folders in the trials.parquet /
curves layout, checked with `analysis.figures.audit` (matplotlib objects, not pixels), plus the
marks for failed and missing trials and the mode of the written files."""

import itertools
import stat
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.collections import PathCollection
from matplotlib.patches import Rectangle

from analysis import common, connect, figures, grokking
from sam_lab.trials import random_features as rf

sys.path.insert(0, str(Path(__file__).parent))
from test_grokking import synthetic_sweep  # noqa: E402

N_FEATURES = [25, 50, 100, 200, 300, 380, 400, 420, 500, 1000]


def write_sweep(folder: Path, spec: dict, trials: list[dict], curves: dict) -> Path:
    """A sweep folder as the launcher leaves it: spec.yaml, trials.parquet, curves/<id>.parquet."""
    (folder / "curves").mkdir(parents=True)
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    pd.DataFrame(trials).to_parquet(folder / "trials.parquet")
    for trial_id, rows in curves.items():
        pd.DataFrame(rows).to_parquet(folder / "curves" / f"{trial_id}.parquet")
    return folder


@pytest.fixture(scope="module")
def rf_sweep(tmp_path_factory):
    """Real random-features trials on digits (a second each): N = 420 failed, N = 1000 has no
    trial row yet (missing), seed 1 everywhere but N = 25 and 50."""
    trials, curves, ids = [], {}, []
    for n, seed in itertools.product(N_FEATURES, (0, 1)):
        trial_id = f"n{n}s{seed}"
        ids.append(trial_id)
        if n == 1000 or (seed == 1 and n not in (25, 50)):
            continue
        meta = dict(trial_id=trial_id, sweep="rf", experiment="random_features", seed=seed,
                    n_features=n, n_train=400)
        if n == 420:
            trials.append(dict(meta, status="failed", error="boom"))
            continue
        (row,) = rf.run(dict(n_features=n, n_train=400, seed=seed, threads=1))
        trials.append(dict(meta, status="ok", error=None, **row))
        curves[trial_id] = [dict(trial_id=trial_id, **row)]
    spec = dict(name="rf", experiment="random_features", grid=dict(n_features=N_FEATURES),
                seeds=[0, 1], trial_ids=ids, base=dict(n_train=400))
    return write_sweep(tmp_path_factory.mktemp("rf") / "rf", spec, trials, curves)


def test_random_features_figure_passes_the_audit_and_marks_failures(rf_sweep):
    (stem, fig), = figures.build(rf_sweep)
    assert stem == "error_vs_n_features"
    assert figures.audit(fig, {"n_features": N_FEATURES}) == []
    ax = fig.axes[0]
    assert ax.get_xlabel() == "random features N" and ax.get_ylabel() == "error (%)"
    # every N that was run has a tick, N = 400 (= n_train, the peak) keeps its label
    assert set(N_FEATURES) <= set(ax.xaxis.get_majorticklocs())
    assert "400" in [t.get_text() for t in ax.get_xticklabels()]
    # the failed trial is a red x at N = 420, the grid point with no trial an open circle at 1000
    marks = {tuple(c.get_offsets()[:, 0]) for c in ax.collections if isinstance(c, PathCollection)}
    assert (420.0,) in marks and (1000.0,) in marks
    title = fig._suptitle.get_text()
    assert "1 failed, 9 missing" in title  # 8 seed-1 rows not written, and N = 1000 seed 0
    # errors are percentages: the peak near N = n_train is tens of percent, not a fraction
    test_line = max(ax.get_lines(), key=lambda line: len(line.get_xdata()))
    assert np.nanmax(test_line.get_ydata()) > 10
    plt.close(fig)


def test_make_writes_world_readable_png_and_svg(rf_sweep, tmp_path):
    paths = figures.make(rf_sweep, tmp_path / "figs")
    assert [p.name for p in paths] == ["error_vs_n_features.png"]
    for path in (paths[0], paths[0].with_suffix(".svg")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, oct(path.stat().st_mode)
        assert path.stat().st_size > 5000
    assert not list((tmp_path / "figs").glob(".*"))  # no temp files left


def classify_sweep(folder: Path) -> Path:
    """Synthetic classify trials (no training): width 16 failed for both seeds, width 64 ran but
    wrote no curves, width 256 seed 1 never ran."""
    widths, seeds = [4, 16, 48, 64, 256], [0, 1]
    trials, curves, ids = [], {}, []
    for w, s in itertools.product(widths, seeds):
        trial_id = f"w{w}s{s}"
        ids.append(trial_id)
        if (w, s) == (256, 1):
            continue
        meta = dict(trial_id=trial_id, sweep="q", experiment="classify", seed=s, width=w,
                    label_noise=0.15)
        if w == 16:
            trials.append(dict(meta, status="failed", error="boom"))
            continue
        test_error = 0.5 + 0.1 * np.exp(-np.log(w / 48) ** 2) + 0.01 * s
        trials.append(dict(meta, status="ok", error=None, train_acc=min(1, 0.5 + w / 100),
                           test_acc=1 - test_error))
        if w != 64:
            curves[trial_id] = [dict(trial_id=trial_id, step=e, epoch=e,
                                     test_acc=1 - test_error * (1 + np.exp(-e / 50)) / 1.5)
                                for e in range(0, 101, 10)]
    spec = dict(name="q", experiment="classify", grid=dict(width=widths), seeds=seeds,
                trial_ids=ids, base=dict(label_noise=0.15))
    return write_sweep(folder, spec, trials, curves)


def test_classify_figures_hatch_failed_and_missing_cells(tmp_path):
    built = dict(figures.build(classify_sweep(tmp_path / "q")))
    assert set(built) == {"error_vs_width", "heatmap_width_x_epochs"}
    for fig in built.values():
        assert figures.audit(fig, {"width": [4, 16, 48, 64, 256]}) == []
    heat = built["heatmap_width_x_epochs"]
    ax = heat.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["4", "16", "48", "64", "256"]
    hatched = {(round(p.get_x()), p.get_hatch()) for p in ax.patches
               if isinstance(p, Rectangle) and p.get_hatch()}
    assert {x for x, h in hatched if h == common.FAILED_HATCH} == {1}  # width 16: failed
    assert {x for x, h in hatched if h == common.MISSING_HATCH} == {3}  # width 64: no curves
    assert "2 failed, 1 missing, 2 without curves" in ax.get_title()
    assert heat.axes[-1].get_ylabel() == "test error (%)"  # the colour bar, in words
    assert "over 2 seeds" in built["error_vs_width"]._suptitle.get_text()
    for fig in built.values():
        plt.close(fig)


def test_epoch_heatmap_has_a_panel_per_rho(tmp_path):
    """Width x rho: the width x epoch heatmap must not average SGD and SAM runs together."""
    trials, curves = [], {}
    for i, (w, rho) in enumerate(itertools.product([8, 64], [0.0, 0.05])):
        trials.append(dict(trial_id=f"t{i}", status="ok", seed=0, width=w, rho=rho,
                           train_acc=1.0, test_acc=0.9 - rho))
        curves[f"t{i}"] = [dict(trial_id=f"t{i}", step=e, epoch=e, test_acc=0.9 - rho - 1 / e)
                           for e in (1, 2, 4, 8)]
    grid = dict(width=[8, 64], rho=[0.0, 0.05])
    spec = dict(name="wr", experiment="classify", grid=grid, seeds=[0],
                trial_ids=[t["trial_id"] for t in trials])
    built = dict(figures.build(write_sweep(tmp_path / "wr", spec, trials, curves)))
    heat = built["heatmap_width_x_epochs"]
    titles = [ax.get_title() for ax in heat.axes if ax.get_title()]
    assert titles == ["SAM radius ρ 0", "SAM radius ρ 0.05"]
    for stem, fig in built.items():
        assert figures.audit(fig, grid) == [], stem
        plt.close(fig)


def test_grokking_figures_pass_the_audit_and_count_failures(tmp_path):
    trials, curves, spec = synthetic_sweep(tmp_path)
    curves = curves[curves["trial_id"] != "t4"]  # a finished trial whose curve file is gone
    built = dict(grokking.build(trials, curves, spec))
    for stem, fig in built.items():
        assert figures.audit(fig, spec["grid"]) == [], stem
        width, height = fig.get_size_inches()
        assert width <= figures.MAX_WIDTH and width / height <= figures.MAX_ASPECT, stem
    panels = [ax for ax in built["grok_curves"].axes if ax.get_visible()]
    assert len(panels) == 4 and len({ax.get_position().y0 for ax in panels}) == 2  # a 2x2 grid
    test, train = panels[0].get_lines()[0], panels[0].get_lines()[-1]
    assert test.get_color() != train.get_color() and test.get_linestyle() != \
        train.get_linestyle()
    assert "1 failed" in built["grok_curves"]._suptitle.get_text()
    assert "1 without curves" in built["grok_curves"]._suptitle.get_text()
    assert "1 failed" in built["grok_steps_train_fraction_weight_decay"].axes[0].get_title()
    for fig in built.values():
        plt.close(fig)


def connect_frames():
    """Trials and curve rows in the connect layout (no training): two rho values, one failed
    width-16 trial, plane and landscape grids of 3 x 3."""
    trials, rows = [], []
    for i, rho in enumerate((0.0, 0.05)):
        tid = f"c{i}"
        trials.append(dict(trial_id=tid, status="ok", seed=0, curve="bezier", width=8, rho=rho,
                           num_bends=3, barrier_loss_linear=1.0, barrier_loss_curve=0.1,
                           barrier_err_linear=0.3, barrier_err_curve=0.02))
        grid = list(itertools.product((-1.0, 0.0, 1.0), (-1.0, 0.0, 1.0)))
        rows += [dict(trial_id=tid, path=p, t=np.nan, u=u, v=v, train_loss=0.1 + u * u + v * v,
                      test_err=0.1) for p in ("plane", "landscape") for u, v in grid]
        for t in np.linspace(0, 1, 5):
            rows.append(dict(trial_id=tid, path="linear", t=t, u=4 * t, v=0.0,
                             train_loss=0.1 + t * (1 - t), test_err=0.05 + t * (1 - t)))
            rows.append(dict(trial_id=tid, path="curve", t=t, u=4 * t, v=2 * t * (1 - t),
                             train_loss=0.1, test_err=0.05))
    trials.append(dict(trial_id="c2", status="failed", seed=0, curve="bezier", width=16, rho=0.0))
    spec = dict(name="mc", experiment="connect", seeds=[0],
                grid=dict(width=[8, 16], rho=[0.0, 0.05], curve=["bezier"]))
    return pd.DataFrame(trials), pd.DataFrame(rows), spec


def test_connect_figures_label_axes_and_endpoints():
    trials, rows, spec = connect_frames()
    built = dict(connect.build(trials, rows, spec))
    assert set(built) == {"connect_paths_train_loss", "connect_paths_test_err",
                          "connect_barriers", "connect_plane", "connect_landscape",
                          "connect_landscape_1d"}
    for stem, fig in built.items():
        assert figures.audit(fig, spec["grid"]) == [], stem
        assert "1 failed" in fig._suptitle.get_text(), stem
    plane = built["connect_plane"]
    first = plane.axes[0]
    assert first.get_xlabel().startswith("u:") and first.get_ylabel().startswith("v:")
    assert {t.get_text() for t in first.texts} == {"A", "B", "bend"}
    (u, v), = [t.xy for t in first.texts if t.get_text() == "bend"]
    assert (u, v) == pytest.approx((2.0, 1.0))  # 2 c(0.5) - (A + B) / 2 for a quadratic Bezier
    failed_panel = [ax for ax in plane.axes if "width 16, SAM radius ρ 0" == ax.get_title()]
    assert [t.get_text() for t in failed_panel[0].texts] == ["1 failed\n(no result)"]
    for fig in built.values():
        plt.close(fig)


def test_audit_finds_what_a_reader_would_miss():
    fig, ax = plt.subplots(figsize=(14.3, 2.5))
    ax.plot([4, 8, 16], [1, 2, 3])
    ax.set_xticks([4, 8], labels=["4", "8"])
    ax.set_ylabel("test_error")
    ax.set_title("mean, 95% CI over 1 seed")
    problems = figures.audit(fig, {"width": [4, 8, 16]})
    plt.close(fig)
    assert any(p.startswith("size 14.3x2.5 in") for p in problems), problems
    assert "panel 1 (mean, 95% CI over 1 seed): x axis has no label" in problems
    assert "snake_case in 'test_error'" in problems
    assert any(p.startswith("a CI over 1 seed") for p in problems)
    assert any("width (hidden units) 16" in p for p in problems)  # named nowhere

    fig, ax = plt.subplots()
    ax.plot([4, 8, 16], [1, 2, 3])
    ax.set(xlabel=common.label("width"), ylabel="error (%)")
    ax.set_xticks([4, 8], labels=["4", "8"])
    problems = figures.audit(fig, {"width": [4, 8, 16]})
    plt.close(fig)
    assert problems == ["no title (neither a figure title nor one on every panel)",
                        "width (hidden units) 16: no tick on the x axis of 'a panel'"]


def test_audit_accepts_a_figure_per_value_but_not_a_lost_panel():
    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    for ax, rho in zip(axes, (0.0, 0.05)):
        ax.plot([1, 2], [1, 2])
        ax.set(xlabel="epoch", ylabel="error (%)", title=f"{common.name('rho')} {rho:g}")
    fig.suptitle(f"sweep ({common.name('model')} mlp)")
    grid = {"model": ["mlp", "cnn5"], "rho": [0.0, 0.05, 0.1]}
    problems = figures.audit(fig, grid)
    plt.close(fig)
    assert problems == ["SAM radius ρ 0.1: on no axis and named nowhere in the figure"]

"""Figures of refined (non-uniform) sweeps: a nearest fill at the grid's own resolution, the
estimated boundary as a line (analysis.boundary, the refiner's rule), the sampled points marked by
round, ticks at the round-0 grid. Random-features trials are real (run in-process, seconds), so
the drawn boundary must find the interpolation threshold N = n_train by itself."""

import itertools
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection

from analysis import boundary, figures, grokking
from sam_lab.trials import grokking as grok_trial
from sam_lab.trials import random_features
from sweeps import refine as refiner

sys.path.insert(0, str(Path(__file__).parent))
from test_figures import write_sweep  # noqa: E402

GRID = {"n_features": [25, 50, 100, 200, 400, 800], "n_train": [50, 100, 200, 400]}
REFINE = {"axes": ["n_features", "n_train"], "metric": "train_loss", "threshold": 1e-8,
          "rounds": 3, "spacing": "log"}
FAILED, MISSING = (800, 50), (25, 400)  # far from the boundary: refinement does not depend on them


def refined_trials() -> list[dict]:
    """The rounds of a refined sweep, run as the launcher would: every point of a round, then
    the next round's points from what was recorded."""
    r = refiner.parse(REFINE, GRID, {"train_loss": "numeric"})
    keys, rows = list(GRID), []
    todo = list(itertools.product(*GRID.values()))
    for round_ in range(r.rounds + 1):
        for values in todo:
            point = dict(zip(keys, values))
            (row,) = random_features.run(dict(dataset="digits", label_noise=0.1, seed=0,
                                              threads=1, **point))
            rows.append(dict(point, **row, trial_id=f"n{values[0]}t{values[1]}", sweep="rf",
                             experiment="random_features", seed=0, status="ok", error=None,
                             round=round_))
        table = boundary.labels(pd.DataFrame(rows), keys, r.metric, r.threshold)
        todo = refiner.next_points(r, keys, table, set(keys))
    return rows


@pytest.fixture(scope="module")
def rf_refined(tmp_path_factory):
    rows = refined_trials()
    ids = [row["trial_id"] for row in rows]
    rows = [row for row in rows if (row["n_features"], row["n_train"]) != MISSING]
    for row in rows:
        if (row["n_features"], row["n_train"]) == FAILED:
            for metric in ("train_loss", "train_acc", "test_loss", "test_acc"):
                row[metric] = None
            row.update(status="failed", error="boom")
    spec = dict(name="rf", experiment="random_features", grid=GRID, seeds=[0], trial_ids=ids,
                base=dict(dataset="digits", label_noise=0.1), refine=REFINE)
    curves = {row["trial_id"]: [dict(trial_id=row["trial_id"], step=0)] for row in rows}
    folder = write_sweep(tmp_path_factory.mktemp("rf") / "rf", spec, rows, curves)
    return folder, pd.DataFrame(rows)


def test_refined_heatmap_draws_the_boundary_at_n_equal_n_train(rf_refined):
    folder, trials = rf_refined
    built = dict(figures.build(folder))
    assert set(built) == {"error_vs_n_features", "heatmap_n_features_x_n_train"}
    for stem, fig in built.items():
        assert figures.audit(fig, GRID) == [], stem  # ticks asked at round-0 values only
    heat = built["heatmap_n_features_x_n_train"]
    ax = heat.axes[0]
    # the refined points were sampled between the grid values, the ticks stay on the grid
    assert len(trials) > len(GRID["n_features"]) * len(GRID["n_train"])
    assert sorted(ax.get_xticks()) == GRID["n_features"]
    assert sorted(ax.get_yticks()) == GRID["n_train"]

    lines = [line for line in ax.get_lines() if line.get_gid() == "boundary"]
    assert len(lines) == 1
    n, n_train = lines[0].get_xdata(), lines[0].get_ydata()
    assert n_train.min() <= 55 and n_train.max() >= 380  # spans every original row
    assert np.all(np.abs(n / n_train - 1) <= 0.15), np.column_stack([n, n_train])
    expected = boundary.boundary_lines(trials, REFINE["axes"], "train_loss", 1e-8,
                                       log=REFINE["axes"])
    assert np.allclose(np.column_stack([n, n_train]), expected[0])  # the helper tests use

    marks = {c.get_gid(): c for c in ax.collections if isinstance(c, PathCollection)}
    ok = trials[trials.status == "ok"]
    for round_, group in ok.groupby("round"):
        drawn = marks[f"round{round_}"]
        assert {tuple(p) for p in drawn.get_offsets().tolist()} == \
            set(zip(group.n_features.astype(float), group.n_train.astype(float)))
    sizes = [marks[f"round{r}"].get_sizes()[0] for r in range(4)]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4  # one size per round
    assert marks["failed"].get_offsets().tolist() == [list(map(float, FAILED))]
    assert marks["missing"].get_offsets().tolist() == [list(map(float, MISSING))]
    assert "1 failed, 1 missing" in ax.get_title()
    for fig in built.values():
        plt.close(fig)


FRACTIONS, DECAYS = [0.2, 0.5, 0.8], [0.01, 0.3, 10.0]
GROK_REFINE = {"axes": ["train_fraction", "weight_decay"], "metric": "phase", "rounds": 2,
               "spacing": {"train_fraction": "linear", "weight_decay": "log"}}
GROK_FAILED, GROK_MISSING = (0.2, 0.01), (0.5, 10.0)


def synthetic_steps(fraction: float, decay: float, seed: int):
    """(step_train, step_test) of a made-up phase diagram with all four phases: too much decay
    never fits (confusion), small fractions memorize, a band above them groks."""
    if decay >= 5:
        return None, None
    edge = 0.5 - 0.1 * np.log10(decay)
    if fraction < edge:
        return 200, None
    return 200, (3000 if fraction < edge + 0.15 else 400) + 100 * seed


def refined_grokking() -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    r = refiner.parse(GROK_REFINE, dict(train_fraction=FRACTIONS, weight_decay=DECAYS),
                      {"phase": "categorical"})
    keys, rows, curves = ["train_fraction", "weight_decay"], [], []
    todo = list(itertools.product(FRACTIONS, DECAYS))
    for round_ in range(r.rounds + 1):
        for (f, wd), seed in itertools.product(todo, (0, 1)):
            step_train, step_test = synthetic_steps(f, wd, seed)
            trial_id = f"f{f:g}wd{wd:g}s{seed}"
            rows.append(dict(trial_id=trial_id, experiment="grokking", status="ok", error=None,
                             seed=seed, train_fraction=f, weight_decay=wd, steps=10000,
                             threshold=0.99, step_train_99=step_train, step_test_99=step_test,
                             phase=grok_trial.phase(step_train, step_test), round=round_))
            curves += [dict(trial_id=trial_id, step=s, train_acc=float(s >= (step_train or 1e9)),
                            test_acc=float(s >= (step_test or 1e9)), weight_norm=40.0)
                       for s in (1, 100, 1000, 10000)]
        table = boundary.labels(pd.DataFrame(rows), keys, r.metric, r.threshold)
        todo = refiner.next_points(r, keys, table, set())
    trials = pd.DataFrame(rows)
    ids = trials["trial_id"].tolist()
    at = list(zip(trials.train_fraction, trials.weight_decay))
    trials = trials[[p != GROK_MISSING for p in at]]
    lost = [p == GROK_FAILED for p in zip(trials.train_fraction, trials.weight_decay)]
    trials.loc[lost, ["status", "phase", "step_test_99"]] = ["failed", None, None]
    spec = dict(name="grok", experiment="grokking", seeds=[0, 1], trial_ids=ids,
                grid=dict(train_fraction=FRACTIONS, weight_decay=DECAYS), refine=GROK_REFINE)
    return trials.reset_index(drop=True), pd.DataFrame(curves), spec


def test_refined_phase_map_and_steps_map():
    trials, curves, spec = refined_grokking()
    assert trials["round"].max() == 2 and not boundary.is_uniform(trials, *GROK_REFINE["axes"])
    built = dict(grokking.build(trials, curves, spec))
    for stem, fig in built.items():
        assert figures.audit(fig, spec["grid"]) == [], stem
    # per-point figures keep to the grid: a curve panel per round-0 point with a trial row
    panels = [ax for ax in built["grok_curves"].axes if ax.get_visible()]
    assert len(panels) == len(FRACTIONS) * len(DECAYS) - 1

    phase = built["grok_phase_train_fraction_weight_decay"].axes[0]
    assert sorted(phase.get_xticks()) == FRACTIONS and sorted(phase.get_yticks()) == DECAYS
    ok = trials[trials.status == "ok"]
    mesh = next(c for c in phase.collections if not isinstance(c, PathCollection))
    codes = {grokking.PHASES.index(p) for p in ok.phase}
    assert set(np.unique(mesh.get_array().compressed())) == codes  # every phase is filled
    # several phases per row: the line is the edge between phase regions, and it cuts the
    # segment between every pair of disagreeing neighbours the refiner saw, i.e. passes within
    # half the pair's distance of its midpoint (in the plane: linear fraction, log decay, each
    # scaled to [0, 1]; a raster cell of slack)
    lines = [line for line in phase.get_lines() if line.get_gid() == "boundary"]
    crossings = boundary.boundary(trials, GROK_REFINE["axes"], "phase", log=("weight_decay",))
    assert lines and len(crossings) >= 10

    def plane(xs, ys):
        return np.column_stack([np.asarray(xs) / 0.6, np.log10(np.asarray(ys)) / 3])
    vertices = np.concatenate([plane(line.get_xdata(), line.get_ydata()) for line in lines])
    for c in crossings.itertuples():
        lo, hi = ((c.lo, c.y), (c.hi, c.y)) if c.along == "train_fraction" else \
            ((c.x, c.lo), (c.x, c.hi))
        (a, b), mid = plane(*zip(lo, hi)), plane([c.x], [c.y])[0]
        half = np.linalg.norm(a - b) / 2
        assert np.min(np.linalg.norm(vertices - mid, axis=1)) <= half + 0.01, c

    marks = {c.get_gid(): c for c in phase.collections if isinstance(c, PathCollection)}
    points = ok.drop_duplicates(["train_fraction", "weight_decay"])
    for round_ in range(3):
        assert len(marks[f"round{round_}"].get_offsets()) == (points["round"] == round_).sum()
    assert marks["failed"].get_offsets().tolist() == [list(GROK_FAILED)]
    assert marks["missing"].get_offsets().tolist() == [list(GROK_MISSING)]

    steps = built["grok_steps_train_fraction_weight_decay"]
    mesh = next(c for c in steps.axes[0].collections if not isinstance(c, PathCollection))
    assert np.ma.count_masked(mesh.get_array()) > 0  # memorization and confusion: "never"
    assert steps.axes[-1].get_ylabel().startswith("steps to test accuracy")  # the colour bar
    for fig in built.values():
        plt.close(fig)

    # the grid alone, one point missing, is a plain sweep: today's heatmap, the gap hatched
    plain = dict(grokking.build(trials[trials["round"] == 0], curves.iloc[:0], spec))
    ax = plain["grok_phase_train_fraction_weight_decay"].axes[0]
    assert not [c for c in ax.collections if c.get_gid()]  # no points by round, no line
    assert "missing" in {t.get_text() for t in ax.texts}
    for fig in plain.values():
        plt.close(fig)


def test_refined_classify_map_has_a_boundary_per_label_noise_panel(tmp_path):
    """Width x n_train, refined per label noise (synthetic fits: training data is interpolated
    once width >= n_train / k, k = 10 without noise and 5 with): each panel draws its own
    boundary, on one colour scale, and the error lines stay one per grid n_train."""
    grid = dict(width=[4, 16, 64, 256], n_train=[100, 400, 1600], label_noise=[0.0, 0.2])
    block = dict(axes=["width", "n_train"], metric="train_acc", threshold=0.999, rounds=3)
    r = refiner.parse(block, grid, {"train_acc": "numeric"})
    keys, rows = list(grid), []
    todo = list(itertools.product(*grid.values()))
    for round_ in range(r.rounds + 1):
        for w, n, noise in todo:
            k = 10 if noise == 0 else 5
            rows.append(dict(trial_id=f"w{w}n{n}e{noise}", status="ok", seed=0, width=w,
                             n_train=n, label_noise=noise, round=round_,
                             train_acc=1.0 if w * k >= n else 0.9,
                             test_acc=0.9 - noise - 0.3 * np.exp(-abs(np.log(w * k / n)))))
        table = boundary.labels(pd.DataFrame(rows), keys, r.metric, r.threshold)
        todo = refiner.next_points(r, keys, table, {"width", "n_train"})
    spec = dict(name="wn", experiment="classify", grid=grid, seeds=[0], refine=block,
                trial_ids=[row["trial_id"] for row in rows])
    built = dict(figures.build(write_sweep(tmp_path / "wn", spec, rows, {})))
    assert set(built) == {"error_vs_width", "heatmap_width_x_n_train"}
    for stem, fig in built.items():
        assert figures.audit(fig, grid) == [], stem
    heat = built["heatmap_width_x_n_train"]
    panels = [ax for ax in heat.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["label noise 0", "label noise 0.2"]
    for ax, k in zip(panels, (10, 5)):
        (line,) = [line for line in ax.get_lines() if line.get_gid() == "boundary"]
        ratio = line.get_ydata() / line.get_xdata()
        assert np.all(np.abs(ratio / k - 1) <= 0.15), (k, ratio)
    assert heat.axes[-1].get_ylabel() == "test error (%)"  # one shared colour bar
    legend = [t.get_text() for t in built["error_vs_width"].legends[0].get_texts()]
    assert [t for t in legend if t.startswith("training samples")] == \
        [f"training samples {n}" for n in grid["n_train"]]
    for fig in built.values():
        plt.close(fig)

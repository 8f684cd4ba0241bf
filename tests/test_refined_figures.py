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

"""Adaptive boundary refinement (sweeps/refine.py, analysis/boundary.py) on random features,
where the interpolation threshold is exact: the minimum-norm fit interpolates (train loss at
round-off level) exactly when N >= n_train. (Train accuracy is an argmax accuracy: it reaches 1
before that, so it does not mark the threshold.) Trials run in-process here; the sweep-level rounds are in
tests/test_refine_sweep.py."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest

from analysis.boundary import boundary, labels, midpoint
from sam_lab.trials import random_features
from sweeps import refine as refiner

GRID = {"n_features": [25, 50, 100, 200, 400, 800], "n_train": [50, 100, 200, 400]}
BLOCK = {"axes": ["n_features", "n_train"], "metric": "train_loss", "threshold": 1e-8,
         "rounds": 3, "spacing": "log"}
METRICS = {"train_loss": "numeric", "test_acc": "numeric", "status": "categorical"}


def fit(point: dict) -> dict:
    config = {"dataset": "digits", "label_noise": 0.1, "seed": 0, "threads": 1, **point}
    rows = list(random_features.run(config))
    return {**point, "status": "ok", "train_loss": rows[-1]["train_loss"]}


def test_refinement_brackets_the_interpolation_threshold_with_few_trials():
    r = refiner.parse(BLOCK, GRID, METRICS)
    keys, integer = list(GRID), {"n_features", "n_train"}
    todo = list(itertools.product(*GRID.values()))
    rows, rounds_run = [], 0
    for round_ in range(r.rounds + 1):
        rows += [fit(dict(zip(keys, p))) for p in todo]
        table = labels(pd.DataFrame(rows), keys, r.metric, r.threshold)
        todo = refiner.next_points(r, keys, table, integer)
        rounds_run = round_
        if not todo:
            break
    trials = pd.DataFrame(rows)
    assert len(trials) == len(trials.drop_duplicates(keys))  # no point twice
    dense = refiner.dense_size(r, GRID, integer)
    assert len(trials) <= 0.4 * dense, (len(trials), dense)
    assert rounds_run == r.rounds

    crossings = boundary(trials, r.axes, r.metric, r.threshold, log=r.log_axes())
    along_n = crossings[crossings.along == "n_features"]
    for n_train in GRID["n_train"]:  # every original row
        row = along_n[along_n.y == n_train]
        assert len(row) == 1, row  # one boundary crossing per row
        lo, hi = row.lo.item(), row.hi.item()
        assert lo <= n_train <= hi and hi / lo <= 1.15, (n_train, lo, hi)
        assert row.label_lo.item() is True and row.label_hi.item() is False  # loss > 0 below


def test_unknown_points_do_not_trigger_refinement():
    r = refiner.parse({**BLOCK, "rounds": 1}, GRID, METRICS)
    keys = list(GRID)
    table = {(25, 50): False, (50, 50): None, (100, 50): True}  # the middle point failed
    assert refiner.next_points(r, keys, table, {"n_features", "n_train"}) == []
    table[(50, 50)] = True
    assert refiner.next_points(r, keys, table, {"n_features", "n_train"}) == [(35, 50)]


def test_midpoints_geometric_rounded_and_never_repeated():
    assert midpoint(100, 400, log=True, integer=True) == 200
    assert midpoint(1e-4, 1e-2, log=True, integer=False) == pytest.approx(1e-3)
    assert midpoint(0.2, 0.4, log=False, integer=False) == pytest.approx(0.3)
    assert midpoint(3, 4, log=False, integer=True) is None  # no int strictly between


@pytest.mark.parametrize("block, message", [
    ({"axes": ["n_features", "lr"]}, "'lr' is not a grid key"),
    ({"axes": ["n_features"]}, "a list of two grid keys"),
    ({"metric": "phase"}, "refine.metric: got 'phase'"),
    ({"rounds": -1}, "refine.rounds: got -1"),
    ({"metric": "status", "threshold": 0.5}, "status is categorical"),
    ({"threshold": None}, "refine.threshold: got None"),
    ({"spacing": "cubic"}, "refine.spacing.n_features: got 'cubic'"),
    ({"color": 1}, "refine.color: unknown key"),
])
def test_bad_refine_blocks_name_the_key(block, message):
    with pytest.raises(refiner.RefineError, match=message):
        refiner.parse({**BLOCK, **block}, GRID, METRICS)


def test_log_spacing_needs_positive_values_and_axes_must_be_numeric():
    grid = {**GRID, "n_train": [0, 100], "features": ["relu", "fourier"]}
    with pytest.raises(refiner.RefineError, match="log on n_train needs values > 0"):
        refiner.parse(BLOCK, grid, METRICS)
    with pytest.raises(refiner.RefineError, match="grid.features is not numeric"):
        refiner.parse({**BLOCK, "axes": ["n_features", "features"]}, grid, METRICS)
    assert refiner.parse({**BLOCK, "spacing": {"n_features": "log", "n_train": "linear"}},
                         grid, METRICS).log_axes() == ("n_features",)

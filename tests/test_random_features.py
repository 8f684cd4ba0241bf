"""Random-features regression: the Belkin peak sits at N = n_train."""

import numpy as np
import pytest

from sam_lab.config import ConfigError
from sam_lab.trials import random_features as rf

GRID = [100, 200, 300, 360, 400, 440, 500, 700, 1000, 2000]


def _test_error(n_features, seed, **kw):
    (row,) = rf.run(dict(n_train=400, label_noise=0.1, n_features=n_features, seed=seed,
                         threads=1, **kw))
    return 1 - row["test_acc"]


def test_test_error_peaks_at_n_train_and_descends_again():
    errors = np.array([[_test_error(n, s) for s in range(2)] for n in GRID]).mean(1)
    peak = GRID[int(errors.argmax())]
    assert 360 <= peak <= 440, dict(zip(GRID, errors.round(3)))
    assert errors.max() > 2 * errors[0] and errors.max() > 2 * errors[-1]
    assert errors[-1] < errors[GRID.index(700)]  # second descent


def test_ridge_smooths_the_peak_away():
    assert _test_error(400, 0, ridge=1e-1) < 0.5 * _test_error(400, 0)


def test_fourier_features_and_min_norm_interpolation():
    (row,) = rf.run(dict(n_train=200, n_features=1000, features="fourier", bandwidth=3.0,
                         threads=1))
    assert row["train_acc"] == 1.0  # overparameterised: interpolates the training set
    assert row["test_acc"] > 0.5


def test_bad_config():
    with pytest.raises(ConfigError, match="n_features"):
        next(rf.run(dict(n_features=0)))
    with pytest.raises(ConfigError, match="features"):
        next(rf.run(dict(features="tanh")))

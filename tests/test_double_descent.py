"""Double descent through `sam-lab sweep`: the real studies on reduced grids."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from cifar_format import write_cifar_fixture

ROOT = Path(__file__).resolve().parents[1]
SAM_LAB = str(Path(sys.executable).parent / "sam-lab")


def _sweep(spec, results, *sets):
    args = [SAM_LAB, "sweep", str(ROOT / spec), "--results", str(results)]
    for s in sets:
        args += ["--set", s]
    subprocess.run(args, check=True, cwd=results, timeout=900)
    name = next(p for p in results.iterdir() if p.is_dir() and (p / "trials.parquet").exists())
    subprocess.run([SAM_LAB, "plot", str(name)], check=True, cwd=results, timeout=300)
    trials = pd.read_parquet(name / "trials.parquet")
    assert (trials.status == "ok").all(), trials[["trial_id", "error"]]
    return trials, sorted(p.name for p in (name / "figures").glob("*.png"))


@pytest.mark.slow
def test_random_features_peak_at_n_train(tmp_path):
    trials, figures = _sweep("sweeps/double_descent/random_features.yaml", tmp_path, "seeds=2")
    error = 1 - trials.groupby("n_features").test_acc.mean()
    peak = error.idxmax()
    assert 0.9 * 400 <= peak <= 1.1 * 400, error.round(3).to_dict()
    assert error.max() > 2 * error.loc[100] and error.max() > 2 * error.loc[4000]
    assert figures == ["error_vs_n_features.png"]


@pytest.mark.slow
def test_mnist1d_model_wise_double_descent(tmp_path):
    """Study 1 on 4 widths x 2 seeds (the full spec has 19 widths x 3 seeds)."""
    trials, figures = _sweep("sweeps/double_descent/mnist1d_width.yaml", tmp_path,
                             "width=[16, 47, 64, 128]", "seeds=2", "eval_every=25")
    by_width = trials.groupby("width")[["test_acc", "train_acc"]].mean()
    test_err = 100 * (1 - by_width.test_acc)
    interpolates = by_width.index[(1 - by_width.train_acc) <= 1e-3]
    assert len(interpolates), "no width reached zero train error"
    threshold = interpolates[0]
    classical_best = test_err.loc[:threshold].iloc[:-1].idxmin()  # under-parameterised optimum
    peak = test_err.loc[classical_best:].idxmax()
    curve = test_err.round(1).to_dict()
    assert test_err[peak] >= test_err[classical_best] + 3, curve
    assert test_err[peak] >= test_err.loc[128] + 3, curve
    assert threshold / 2 <= peak <= threshold * 2, (peak, threshold, curve)
    assert "heatmap_width_x_epochs.png" in figures and "error_vs_width.png" in figures


@pytest.mark.slow
def test_resnet18k_cifar10_tiny_variant_runs_on_a_cifar_format_folder(tmp_path):
    data_dir = write_cifar_fixture(tmp_path / "data")
    trials, figures = _sweep("sweeps/double_descent/resnet18k_cifar10.yaml", tmp_path,
                             f"data_dir={data_dir}", "width=[1, 2]", "epochs=1", "seeds=1",
                             "device=cpu", "resources={cpu: 1, gpu: 0}")
    assert sorted(trials.width) == [1, 2] and (trials.n_params > 0).all()
    assert "error_vs_width.png" in figures

"""`pack: [seed, rho]` through `sam-lab sweep`: the same rows, curves and MLflow runs as unpacked.

One spec (digits MLP, 2 widths x 3 rho x 2 seeds; rho 1e6 turns some models NaN) runs packed,
and each trial is compared with a separate `classify` run of its config (test_sweep.py shows an
unpacked sweep records exactly what `classify` yields); then the sweep is resumed with a third
seed. About 60 s on 2 cores (two Ray start-ups).
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import sam_lab, write_spec
from mlflow.tracking import MlflowClient

from sam_lab.config import parse
from sam_lab.train import ClassifyConfig, classify, setup
from sweeps import spec as specs

pytestmark = pytest.mark.slow

DIVERGING = 1.0e6
SPEC = {
    "name": "packed",
    "experiment": "classify",
    "base": {"dataset": "digits", "model": "mlp", "n_train": 300, "label_noise": 0.2,
             "batch_size": 50, "lr": 0.05, "epochs": 3, "eval_every": 1},
    "grid": {"width": [8, 16], "rho": [0.0, 0.05, DIVERGING]},
    "seeds": 2,
    "pack": ["seed", "rho"],
}


def _tables(results):
    d = results / "packed"
    return (pd.read_parquet(d / "trials.parquet").set_index("trial_id").sort_index(),
            pd.read_parquet(d / "curves").sort_values(["trial_id", "step"], ignore_index=True))


def _close(got: pd.Series, want: pd.Series) -> bool:
    return bool(((got - want).abs() <= 1e-4 * want.abs() + 1e-6).all())


def _trial_runs(results):
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("packed")
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'trial'", max_results=1000)
    return client, runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("pack")
    write_spec(work, SPEC, "packed.yaml")
    packed = sam_lab("sweep", "packed.yaml", "--results", "packed", cwd=work)
    assert packed.returncode == 0, packed.stdout + packed.stderr
    before = _tables(work / "packed")
    more = sam_lab("sweep", "packed.yaml", "--set", "seeds=3", "--results", "packed", cwd=work)
    assert more.returncode == 0, more.stdout + more.stderr
    return work, before, more


def _alone(spec):
    """Each trial's config run by itself: (trials, curves) shaped like the sweep's tables."""
    torch.set_num_threads(1)
    rows, curves = [], []
    for t in spec.trials:
        run, curve = classify(t.config), []
        try:
            while True:
                curve.append({"trial_id": t.trial_id, **next(run)})
        except StopIteration:
            row = {"status": "ok", "error": None}
        except FloatingPointError as e:
            row = {"status": "failed", "error": f"FloatingPointError: {e}"}
        rows.append({"trial_id": t.trial_id, **t.config, **curve[-1], **row})
        curves += curve
    return (pd.DataFrame(rows).set_index("trial_id").sort_index(),
            pd.DataFrame(curves).sort_values(["trial_id", "step"], ignore_index=True))


def test_packed_sweep_records_every_trial_as_if_run_alone(runs):
    work, (trials, curves), _ = runs
    spec = specs.load(work / "packed.yaml")
    alone, alone_curves = _alone(spec)
    assert list(trials.index) == list(alone.index) == sorted(t.trial_id for t in spec.trials)
    assert (trials.pack_size == 6).all()  # 3 rho x 2 seeds per width
    assert trials.status.tolist() == alone.status.tolist()

    ok = trials.status == "ok"
    assert ok.sum() >= 8
    for key in ("train_loss", "test_loss"):  # rho 1e6 models that survive have losses ~1e11
        assert _close(trials[key][ok], alone[key][ok])
    n_test = len(setup(parse(ClassifyConfig, spec.trials[0].config))[0].y_test)
    assert (trials.test_acc[ok] - alone.test_acc[ok]).abs().max() <= 1.01 / n_test

    # a NaN model fails alone, with the error a separate run gives; its pack-mates finish
    failed = trials[~ok]
    assert (failed.rho == DIVERGING).all() and len(failed) >= 1
    assert failed.error.str.startswith("FloatingPointError: train loss is nan").all()
    assert failed.error.tolist() == alone.error[~ok].tolist()

    assert curves.trial_id.value_counts().to_dict() == alone_curves.trial_id.value_counts().to_dict()
    assert _close(curves.test_loss, alone_curves.test_loss)


def test_each_packed_trial_has_its_own_mlflow_run_with_its_curve(runs):
    work, (trials, curves), _ = runs
    client, trial_runs = _trial_runs(work / "packed")
    first_launch = [r for r in trial_runs if r.data.tags["trial_id"] in trials.index]
    assert sorted(r.data.tags["trial_id"] for r in first_launch) == sorted(trials.index)
    for run in first_launch:
        row = trials.loc[run.data.tags["trial_id"]]
        assert run.info.status == ("FINISHED" if row.status == "ok" else "FAILED")
        assert float(run.data.params["rho"]) == row.rho and int(run.data.params["seed"]) == row.seed
        history = client.get_metric_history(run.info.run_id, "test_loss")
        curve = curves[curves.trial_id == row.name]
        assert sorted((m.step, m.value) for m in history) == list(zip(curve.step, curve.test_loss))


def test_a_resumed_packed_sweep_runs_only_the_new_seed(runs):
    work, (trials, _), more = runs
    n_failed = (trials.status == "failed").sum()
    assert f"12 finished ({n_failed} failed; --rerun-failed retries them), 6 to run" in more.stdout
    after, _ = _tables(work / "packed")
    assert len(after) == 18 and set(trials.index) < set(after.index)
    pd.testing.assert_frame_equal(after.loc[trials.index], trials)  # earlier rows untouched
    new = after.drop(trials.index)
    assert (new.seed == 2).all() and (new.pack_size == 3).all()  # the 3 rho of a width, packed
    _, trial_runs = _trial_runs(work / "packed")
    assert len(trial_runs) == 18  # no duplicates

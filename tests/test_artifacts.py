"""A results folder copied elsewhere keeps its MLflow artifacts to itself (sweeps/artifacts.py)."""

from __future__ import annotations

import shutil

from mlflow.tracking import MlflowClient

from sweeps import artifacts


def test_a_copied_results_folder_writes_artifacts_into_the_copy_only(tmp_path):
    original, copy = tmp_path / "orig" / "results", tmp_path / "copy" / "results"
    original.mkdir(parents=True)
    uri = f"sqlite:///{original / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("tiny", artifact_location=(original / "mlartifacts" / "tiny")
                                   .resolve().as_uri())
    run = client.create_run(exp)
    before = client.get_run(run.info.run_id).info.artifact_uri
    assert str(original) in before
    assert artifacts.rebase(original) == 0  # in place: nothing to move

    shutil.copytree(original, copy)
    assert artifacts.rebase(copy) == 1
    moved = MlflowClient(tracking_uri=f"sqlite:///{copy / 'mlflow.db'}")
    info = moved.get_run(run.info.run_id).info
    assert info.artifact_uri.endswith(f"/copy/results/mlartifacts/tiny/{run.info.run_id}/artifacts")
    assert str(copy) in moved.get_experiment(exp).artifact_location
    figure = tmp_path / "fig.png"
    figure.write_bytes(b"png")
    moved.log_artifact(run.info.run_id, str(figure), artifact_path="figures")
    assert (copy / "mlartifacts" / "tiny" / run.info.run_id / "artifacts" / "figures"
            / "fig.png").exists()
    assert not (original / "mlartifacts").exists()  # the original is untouched
    assert client.get_run(run.info.run_id).info.artifact_uri == before
    assert artifacts.rebase(copy) == 0  # idempotent

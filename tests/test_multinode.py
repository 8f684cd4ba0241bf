"""A sweep on a real 2-node Ray cluster started with `ray start`, joined with --address.

Both nodes run on this machine with 1 CPU each (own --temp-dir, own token), so two trials of
1 CPU run at once only if one runs on each node. About 40 s on 2 idle cores.
"""

from __future__ import annotations

import re

import pandas as pd
import pytest
from conftest import RayNodes, sam_lab, write_spec

pytestmark = pytest.mark.slow

SPEC = {
    "name": "spread",
    "experiment": "classify",
    "base": {"dataset": "digits", "model": "mlp", "n_train": 1000, "batch_size": 50,
             "epochs": 20},  # about 1-2 s a trial, so the second node gets work too
    "grid": {"width": [8, 16, 32, 64]},
    "seeds": 1,
    "resources": {"cpu": 1},
}


def test_trials_run_on_both_nodes(tmp_path, ray_nodes):
    write_spec(tmp_path, SPEC, "spread.yaml")
    done = sam_lab("sweep", "spread.yaml", "--address", ray_nodes.address, cwd=tmp_path,
                   env=ray_nodes.env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"on Ray at {ray_nodes.address} (2 CPUs, 0 GPUs)" in done.stdout
    trials = pd.read_parquet(tmp_path / "results" / "spread" / "trials.parquet")
    assert len(trials) == 4 and trials.trial_id.is_unique and (trials.status == "ok").all()
    assert set(trials.node) == {ray_nodes.node_id("head"), ray_nodes.node_id("worker")}


def _most_at_once(stdout: str) -> int:
    """The most trials running at once, from the driver's line per finished trial (which
    counts the others still running; MLflow's run times lag behind, being logged off-line)."""
    return 1 + max(int(n) for n in re.findall(r"(\d+) running", stdout))


def test_gpu_auto_shares_one_gpu_between_small_trials(tmp_path):
    """`gpu: auto` asks each trial for a share sized from its model (1/16 for these MLPs), so
    several run on one GPU at once; `gpu: 1` runs them one at a time. The head offers 1 GPU that
    does not exist: the trials train on the CPU, but Ray schedules them by the GPU request."""
    head = RayNodes()
    try:
        head.start("head", cpus=2, gpus=1)
        spec = {**SPEC, "name": "shared", "resources": {"cpu": 0.25, "gpu": "auto"}}
        write_spec(tmp_path, spec, "shared.yaml")
        most = {}
        for gpu in ("auto", 1):
            done = sam_lab("sweep", "shared.yaml", "--address", head.address, "--results",
                           f"gpu-{gpu}", "--set", f"resources={{gpu: {gpu}}}", cwd=tmp_path,
                           env=head.env, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            results = tmp_path / f"gpu-{gpu}"
            trials = pd.read_parquet(results / "shared" / "trials.parquet")
            assert (trials.status == "ok").all() and len(trials) == 4
            assert (trials.gpu_share == (1 / 16 if gpu == "auto" else 1.0)).all()
            most[gpu] = _most_at_once(done.stdout)
    finally:
        head.stop()
    assert most[1] == 1 and most["auto"] >= 2, most

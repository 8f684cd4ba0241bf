"""A sweep on a real 2-node Ray cluster started with `ray start`, joined with --address.

Both nodes run on this machine with 1 CPU each (own --temp-dir, own token), so two trials of
1 CPU run at once only if one runs on each node. About 40 s on 2 idle cores.
"""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import sam_lab, write_spec

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

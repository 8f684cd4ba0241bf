"""Read a sweep folder's tables (plain pyarrow/pandas; no sam-lab, Ray or MLflow needed).

    spec = load.spec("results/quickstart")          # the resolved spec of the latest launch
    trials = load.trials("results/quickstart")      # one row per trial of that spec
    curves = load.curves("results/quickstart")      # one row per evaluation point

`trials` keeps only the trials of the latest launch's spec (a rerun with other `--set` values
leaves older trials in trials.parquet; pass `latest=False` to see them all).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import yaml


def spec(sweep_dir) -> dict:
    return yaml.safe_load((Path(sweep_dir) / "spec.yaml").read_text())


def trials(sweep_dir, latest: bool = True) -> pd.DataFrame:
    path = Path(sweep_dir) / "trials.parquet"
    if not path.exists():
        return pd.DataFrame(columns=["trial_id", "status"])
    df = pd.read_parquet(path)
    if latest:
        df = df[df.trial_id.isin(spec(sweep_dir)["trial_ids"])].reset_index(drop=True)
    return df


def curves(sweep_dir, trial_ids=None, columns=None) -> pd.DataFrame:
    """All curve files as one table (columns missing in some files are null there). `columns`
    reads only those (trial_id is always kept): much less memory on large sweeps."""
    files = sorted((Path(sweep_dir) / "curves").glob("*.parquet"))
    if trial_ids is not None:
        wanted = set(trial_ids)
        files = [f for f in files if f.stem in wanted]
    if not files:
        return pd.DataFrame(columns=["trial_id", "step", "epoch"])
    schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")
    if columns is not None:
        columns = ["trial_id"] + [c for c in columns if c != "trial_id"]
    return ds.dataset(files, schema=schema, format="parquet").to_table(columns=columns).to_pandas()

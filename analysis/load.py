"""Read a sweep folder's tables (plain pyarrow/pandas; no sam-lab, Ray or MLflow needed).

    spec = load.spec("results/quickstart")          # the resolved spec of the latest launch
    trials = load.trials("results/quickstart")      # one row per trial of that spec
    curves = load.curves("results/quickstart")      # one row per evaluation point

`trials` keeps only the trials of the latest launch's spec (a rerun with other `--set` values
leaves older trials in trials.parquet; pass `latest=False` to see them all). It reads
trials.parquet plus the parts a running (or killed) sweep appended in trials.parts/, the latest
row per trial; `sam-lab status` compacts the parts into trials.parquet for other readers.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import yaml

TRIALS, PARTS = "trials.parquet", "trials.parts"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: a spec of 10^5 trial ids


def spec(sweep_dir) -> dict:
    return yaml.load((Path(sweep_dir) / "spec.yaml").read_text(), Loader=_LOADER)


def trials(sweep_dir, latest: bool = True) -> pd.DataFrame:
    table = read_trials(sweep_dir)
    if table is None:
        return pd.DataFrame(columns=["trial_id", "status"])
    df = table.to_pandas()
    if latest:
        df = df[df.trial_id.isin(spec(sweep_dir)["trial_ids"])].reset_index(drop=True)
    return df


def latest_rows(table: pa.Table) -> pa.Table:
    """One row per trial_id: the last one (parts are read in the order they were written)."""
    if table.num_rows == 0:
        return table
    order = pa.array(range(table.num_rows), type=pa.int64())
    last = table.append_column("_order", order).group_by("trial_id").aggregate(
        [("_order", "max")])["_order_max"]
    return table.take(last.take(pc.sort_indices(last)))  # in the order of their last rows


def read_trials(sweep_dir, columns: list[str] | None = None) -> pa.Table | None:
    """trials.parquet plus its parts as one table, latest row per trial (None: nothing yet).
    Parts may differ in columns: types are unified the way pyarrow promotes them."""
    sweep_dir = Path(sweep_dir)
    for _ in range(10):  # a compaction may remove a part between listing and reading it
        files = [sweep_dir / TRIALS] if (sweep_dir / TRIALS).exists() else []
        files += sorted((sweep_dir / PARTS).glob("*.parquet"))
        try:
            tables = [_read(f, columns) for f in files]
        except FileNotFoundError:
            continue
        if not tables:
            return None
        return latest_rows(pa.concat_tables(tables, promote_options="permissive"))
    raise RuntimeError(f"{sweep_dir}: trials.parquet kept changing while being read")


def _read(path: Path, columns):
    if columns is not None:
        present = set(pq.read_schema(path).names)
        columns = [c for c in columns if c in present]
    return pq.read_table(path, columns=columns)



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

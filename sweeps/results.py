"""The Parquet tables of a sweep, written by the driver as each trial finishes.

    RESULTS/NAME/trials.parquet        one row per trial (the source of truth for resume)
    RESULTS/NAME/curves/<id>.parquet   one row per evaluation point of that trial
    RESULTS/NAME/spec.yaml             the resolved spec of the latest launch, with its trial_ids

Every file is written to a temp file in the same folder, fsynced, then renamed over the old one,
so a reader or a crash never sees half a file. trials.parquet is rewritten whole after each trial
(small: a few KB per hundred trials); a driver killed mid-sweep loses only the trials in flight.
Column types are explicit: config columns take their dataclass types, `step` is int64, and the
other columns are inferred from the values (int64 if all ints, else float64; string; bool).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

META = ("trial_id", "sweep", "experiment", "status", "error", "seed")
FINAL = ("step", "epoch", "train_loss", "train_acc", "test_loss", "test_acc")
TAIL = ("wall_s", "node", "gpu_share")
KNOWN = {"trial_id": pa.string(), "sweep": pa.string(), "experiment": pa.string(),
         "status": pa.string(), "error": pa.string(), "seed": pa.int64(), "step": pa.int64(),
         "wall_s": pa.float64(), "node": pa.string(), "gpu_share": pa.float64()}
PY_TO_ARROW = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}


def config_types(config_cls) -> dict:
    """Arrow types of a family's config fields (Optional[x] -> nullable x)."""
    out = {}
    for name, hint in typing.get_type_hints(config_cls).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        out[name] = PY_TO_ARROW[args[0]]
    return {f.name: out[f.name] for f in dataclasses.fields(config_cls)}


def infer_type(values) -> pa.DataType:
    kinds = {type(v) for v in values if v is not None}
    if not kinds or kinds <= {float, int}:
        return pa.int64() if kinds == {int} else pa.float64()
    if len(kinds) == 1:
        return PY_TO_ARROW.get(kinds.pop(), pa.string())
    return pa.string()


def to_table(rows: list[dict], columns: list[str], types: dict) -> pa.Table:
    fields = [pa.field(c, types.get(c) or infer_type([r.get(c) for r in rows])) for c in columns]
    schema = pa.schema(fields)
    data = {c: [_cast(r.get(c), schema.field(c).type) for r in rows] for c in columns}
    return pa.table(data, schema=schema)


def _cast(value, kind):
    if value is None:
        return None
    if kind == pa.string():
        return str(value)
    if kind == pa.float64():
        return float(value)
    return value


def write_atomic(table: pa.Table, path: Path):
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        pq.write_table(table, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text_atomic(text: str, path: Path):
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_statuses(sweep_dir: Path) -> dict[str, str]:
    """{trial_id: status} of the trials recorded so far (empty if none)."""
    path = Path(sweep_dir) / "trials.parquet"
    if not path.exists():
        return {}
    table = pq.read_table(path, columns=["trial_id", "status"])
    return dict(zip(table["trial_id"].to_pylist(), table["status"].to_pylist()))


class Results:
    """The tables of one sweep folder. `record` one finished trial at a time."""

    def __init__(self, sweep_dir: Path, config_cls):
        self.dir = Path(sweep_dir)
        self.config_columns = [f.name for f in dataclasses.fields(config_cls) if f.name not in META]
        self.types = {**config_types(config_cls), **KNOWN}
        path = self.dir / "trials.parquet"
        rows = pq.read_table(path).to_pylist() if path.exists() else []
        self.rows = {r["trial_id"]: r for r in rows}

    def write_spec(self, resolved: dict):
        self.dir.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(resolved, sort_keys=False, width=100)
        write_text_atomic(text, self.dir / "spec.yaml")

    def record(self, row: dict, curve: list[dict]):
        """Save one finished trial: its curve file first, so an `ok` row always has its curve."""
        if curve:
            curves_dir = self.dir / "curves"
            curves_dir.mkdir(parents=True, exist_ok=True)
            columns = ["trial_id", "step", "epoch"]
            columns += [k for k in dict.fromkeys(k for r in curve for k in r) if k not in columns]
            tagged = [{"trial_id": row["trial_id"], **r} for r in curve]
            write_atomic(to_table(tagged, columns, KNOWN), curves_dir / f"{row['trial_id']}.parquet")
        self.rows[row["trial_id"]] = row
        self._write_trials()

    def _write_trials(self):
        rows = list(self.rows.values())
        present = {k for r in rows for k in r}
        fixed = [*META, *self.config_columns, *FINAL, *TAIL]
        extra = sorted(present - set(fixed))
        columns = [*META, *self.config_columns, *FINAL, *extra, *TAIL]
        write_atomic(to_table(rows, columns, self.types), self.dir / "trials.parquet")

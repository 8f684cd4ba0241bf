"""The Parquet tables of a sweep, written append-only by a background thread of the driver.

    RESULTS/NAME/trials.parquet             one row per trial, compacted (the documented path)
    RESULTS/NAME/trials.parts/<seq>.parquet the rows recorded since the last compaction
    RESULTS/NAME/curves/<id>.parquet        one row per evaluation point of that trial
    RESULTS/NAME/spec.yaml                  the resolved spec of the latest launch, with its trial_ids

Each batch of finished trials becomes one new part (its curve files first), so recording a trial
costs the same next to 10 rows or 10^5. `compact` merges the parts into trials.parquet and then
deletes them; it runs at the end of a sweep, at the next launch and in `sam-lab status`, so a
finished sweep is one file. Until then `read_trials` (and `analysis.load.trials`) read the file
plus the parts; a trial recorded twice (--rerun-failed, a `lost` trial retried) keeps its latest
row. Every file is written to a temp file in the same folder, fsynced, then renamed, so a reader
or a crash never sees half a file, and a driver killed at any moment loses only the trials in
flight (and those still queued for the writer: at most one batch).

Column types come from pyarrow: config columns take their dataclass types, the known columns
(KNOWN) theirs, and any other column is whatever pyarrow infers from its values.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import queue
import sys
import threading
import time
import typing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from analysis.load import PARTS, TRIALS, latest_rows, read_parquet, read_trials

META = ("trial_id", "sweep", "experiment", "status", "error", "seed")
FINAL = ("step", "epoch", "train_loss", "train_acc", "test_loss", "test_acc")
TAIL = ("wall_s", "node", "gpu_share", "code_version")
STATUSES = ("ok", "failed", "lost")
KNOWN = {"trial_id": pa.string(), "sweep": pa.string(), "experiment": pa.string(),
         "status": pa.string(), "error": pa.string(), "seed": pa.int64(), "step": pa.int64(),
         "wall_s": pa.float64(), "node": pa.string(), "gpu_share": pa.float64(),
         "code_version": pa.string(), "resumed_step": pa.int64(), "extended_from": pa.string()}
PY_TO_ARROW = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: 10^5 trial ids in < 1 s


def config_types(config_cls) -> dict:
    """Arrow types of a family's config fields (Optional[x] -> nullable x)."""
    out = {}
    for name, hint in typing.get_type_hints(config_cls).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        out[name] = PY_TO_ARROW[args[0]]
    return {f.name: out[f.name] for f in dataclasses.fields(config_cls)}


def _column(values: list, kind: pa.DataType | None) -> pa.Array:
    if kind is not None:
        return pa.array(values, type=kind)
    try:
        array = pa.array(values)  # pyarrow's own inference: ints and floats mixed -> double
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # e.g. str and float in one column
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())
    return array.cast(pa.float64()) if pa.types.is_null(array.type) else array


def to_table(rows: list[dict], columns: list[str], types: dict) -> pa.Table:
    return pa.table({c: _column([r.get(c) for r in rows], types.get(c)) for c in columns})


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


# ----------------------------------------------------------------------------- reading


def read_statuses(sweep_dir) -> dict[str, str]:
    """{trial_id: status} of the trials recorded so far (empty if none)."""
    table = read_trials(sweep_dir, ["trial_id", "status"])
    if table is None:
        return {}
    return dict(zip(table["trial_id"].to_pylist(), table["status"].to_pylist()))


def compact(sweep_dir) -> int:
    """Merge the parts into trials.parquet (atomically), then delete them; returns how many
    parts were merged. Safe beside a running sweep: parts written meanwhile stay for next time."""
    sweep_dir = Path(sweep_dir)
    parts = sorted((sweep_dir / PARTS).glob("*.parquet"))
    if not parts:
        return 0
    with open(sweep_dir / ".compact.lock", "a") as lock:  # two compactions would lose a part
        fcntl.flock(lock, fcntl.LOCK_EX)
        parts = sorted((sweep_dir / PARTS).glob("*.parquet"))
        files = ([sweep_dir / TRIALS] if (sweep_dir / TRIALS).exists() else []) + parts
        if parts:
            table = pa.concat_tables([read_parquet(f) for f in files],  # names a corrupt file
                                     promote_options="permissive")
            write_atomic(latest_rows(table), sweep_dir / TRIALS)
            for part in parts:
                part.unlink()
    return len(parts)


# ----------------------------------------------------------------------------- writing


class Results:
    """The tables of one sweep folder. `record` queues a finished trial; a background thread
    writes the queued trials as one part, then calls each one's `then` (MLflow's run end)."""

    def __init__(self, sweep_dir: Path, config_cls):
        self.dir = Path(sweep_dir)
        self.config_columns = [f.name for f in dataclasses.fields(config_cls) if f.name not in META]
        self.types = {**config_types(config_cls), **KNOWN}
        self.queue: queue.Queue = queue.Queue()  # unbounded: a result is never dropped
        self.thread: threading.Thread | None = None
        self.error: str | None = None
        self.written = 0
        self._seq = 0

    def write_spec(self, resolved: dict):
        self.dir.mkdir(parents=True, exist_ok=True)
        text = yaml.dump(resolved, Dumper=YAML_DUMPER, sort_keys=False, width=100)
        write_text_atomic(text, self.dir / "spec.yaml")

    def record(self, row: dict, curve: list[dict], then=None):
        """Queue one finished trial (never blocks); `then()` runs once it is on disk."""
        if self.thread is None:
            self.thread = threading.Thread(target=self._write_loop, name="sam-lab-parquet",
                                           daemon=True)
            self.thread.start()
        self.queue.put((row, curve, then))

    def close(self):
        """Write what is queued, then compact the parts into trials.parquet."""
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
            self.thread = None
        compact(self.dir)

    def _write_loop(self):
        while True:
            batch, stop = [self.queue.get()], False
            while True:  # everything queued meanwhile goes into the same part
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            if None in batch:
                stop = True
                batch = [b for b in batch if b is not None]
            if batch:
                self._write_batch(batch)
            if stop:
                return

    def _write_batch(self, batch):
        try:
            for row, curve, _ in batch:  # curves first, so an `ok` row always has its curve
                if curve:
                    self._write_curve(row["trial_id"], curve)
            self._write_part([row for row, _, _ in batch])
        except Exception as e:  # a full disk: say so, keep the sweep going (rerun resumes)
            self.error = f"{type(e).__name__}: {e}"
            print(f"sam-lab: could not write results ({self.error}); these trials will run "
                  "again on the next launch", file=sys.stderr, flush=True)
            return
        self.written += len(batch)
        for _, _, then in batch:
            if then is not None:
                try:
                    then()
                except Exception as e:  # noqa: BLE001 - bookkeeping must not stop the writer
                    print(f"sam-lab: {type(e).__name__}: {e}", file=sys.stderr, flush=True)

    def _write_curve(self, trial_id: str, curve: list[dict]):
        curves_dir = self.dir / "curves"
        curves_dir.mkdir(parents=True, exist_ok=True)
        columns = ["trial_id", "step", "epoch"]
        columns += [k for k in dict.fromkeys(k for r in curve for k in r) if k not in columns]
        tagged = [{"trial_id": trial_id, **r} for r in curve]
        write_atomic(to_table(tagged, columns, KNOWN), curves_dir / f"{trial_id}.parquet")

    def _write_part(self, rows: list[dict]):
        present = {k for r in rows for k in r}
        fixed = [*META, *self.config_columns, *FINAL, *TAIL]
        extra = sorted(present - set(fixed))
        columns = [*META, *self.config_columns, *FINAL, *extra, *TAIL]
        parts = self.dir / PARTS
        parts.mkdir(parents=True, exist_ok=True)
        self._seq += 1  # names sort in writing order, across launches too
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.parquet"
        write_atomic(to_table(rows, columns, self.types), parts / name)

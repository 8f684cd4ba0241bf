"""Re-analysis from saved weights: measure finished trials again, without training them.

    sam-lab measure results/sam_sharpness --what sharpness --where rho=0.05

Each selected `ok` trial's final weights (RESULTS/NAME/weights/<trial_id>.pt, from `keep:
final`) are read on the driver with `torch.load(weights_only=True)` and measured by a Ray task
on the trial's own data, exactly as the trial's `measure_sharpness` would have measured its final
model (sharpness: lambda_max, hessian_trace, eps_sharpness on the same training subset and ball).
Rows go to RESULTS/NAME/measures.parquet keyed by trial_id, `what` and the settings (the ball's
`sharpness_rho` and `sam_p`); a rerun measures only what is missing.

Bad flags -> exit 2; a missing or unreadable weight file -> exit 3 (a data fault, not a bad
command): one line each, before any measuring, and measures.parquet is left as it was.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from analysis.load import read_trials
from sam_lab import trials as families
from sweeps import weights
from sweeps.spec import InputError

MEASURES = "measures.parquet"
WHAT = {"sharpness": ("sharpness_rho", "sam_p")}  # what -> its settings (config keys)
KEY = ("trial_id", "what")


class DataError(Exception):
    """A weight file is missing or cannot be read: exit 3."""


def parse_where(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--where {item!r}: expected KEY=VALUE, e.g. rho=0.05")
        out[key.strip()] = yaml.safe_load(value)
    return out


def select(sweep_dir: Path, what: str, where: dict) -> list[dict]:
    """The ok trials matching every KEY=VALUE, as rows of trials.parquet."""
    if what not in WHAT:
        raise InputError(f"--what {what}: unknown; allowed: {', '.join(WHAT)}")
    table = read_trials(sweep_dir)
    if table is None:
        raise InputError(f"{sweep_dir}: no trials.parquet (run the sweep first)")
    for key in where:
        if key not in table.column_names:
            raise InputError(f"--where {key}: not a column of {sweep_dir}/trials.parquet")
    rows = [r for r in table.to_pylist() if r["status"] == "ok"
            and all(r.get(k) == v for k, v in where.items())]
    if not rows:
        raise InputError(f"--where {where}: no ok trial of {sweep_dir} matches")
    experiment = rows[0]["experiment"]
    if not hasattr(families.get(experiment), f"{what}_of"):
        raise InputError(f"--what {what}: experiment {experiment} cannot measure it from weights")
    return rows


def _settings(row: dict, what: str) -> dict:
    return {key: row[key] for key in WHAT[what]}


def _done(sweep_dir: Path) -> tuple[pa.Table | None, set]:
    path = sweep_dir / MEASURES
    if not path.exists():
        return None, set()
    table = pq.read_table(path)
    return table, {_key(r, r["what"]) for r in table.to_pylist()}


def _key(row: dict, what: str) -> tuple:
    settings = _settings(row, what)
    return (row["trial_id"], what, *(settings[k] for k in sorted(settings)))


def load_weights(sweep_dir: Path, rows: list[dict]) -> dict:
    """{trial_id: state_dict}; DataError names the first missing or unreadable file."""
    from sam_lab import state as training_state

    out = {}
    for row in rows:
        path = weights.weights_path(sweep_dir, row["trial_id"])
        if not path.exists():
            raise DataError(f"{path}: missing (trial {row['trial_id']}; was the sweep run with "
                            "keep: final?); nothing measured")
        try:
            out[row["trial_id"]] = training_state.load(path)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same fault
            raise DataError(f"{path}: cannot be read ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]}); nothing measured") from None
    return out


def _measure_one(experiment: str, what: str, config: dict, model_state) -> dict:
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    values = getattr(families.get(experiment), f"{what}_of")(config, model_state)
    return {**values, "wall_s": time.perf_counter() - start}


def run(sweep_dir: Path, what: str, where: dict, address: str | None = None) -> tuple[int, int]:
    """Measure the selected trials that have no row yet; returns (measured, already there)."""
    from sweeps.results import write_atomic

    rows = select(sweep_dir, what, where)
    table, done = _done(sweep_dir)
    todo = [r for r in rows if _key(r, what) not in done]
    if not todo:
        return 0, len(rows)
    states = load_weights(sweep_dir, todo)  # every file checked before any work

    import ray

    from sweeps import launcher

    family = families.get(rows[0]["experiment"])
    config_keys = [f for f in family.Config.__dataclass_fields__]
    launcher.connect(address, {"cpu": 1, "gpu": 0})
    try:
        task = ray.remote(num_cpus=1)(_measure_one)
        futures = []
        for row in todo:
            config = launcher._with_absolute_paths({k: row[k] for k in config_keys if k in row})
            futures.append(task.remote(row["experiment"], what, config,
                                       ray.put(states.pop(row["trial_id"]))))
        results = ray.get(futures)
    finally:
        launcher.disconnect()
    new = [{"trial_id": r["trial_id"], "what": what, **_settings(r, what), **values}
           for r, values in zip(todo, results)]
    merged = pa.Table.from_pylist(new)
    if table is not None:
        merged = pa.concat_tables([table, merged], promote_options="permissive")
    write_atomic(merged, sweep_dir / MEASURES)
    return len(new), len(rows) - len(new)

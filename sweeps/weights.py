"""A sweep's saved networks, written by the driver from each trial's final Tune checkpoint.

    RESULTS/NAME/weights/<trial_id>.pt        the final model's state_dict
    RESULTS/NAME/weights/<trial_id>.state.pt  its full training state (optimizer, random
                                              generators, step): what an extension starts from

Both load with `torch.load(path, weights_only=True)` (sam_lab.state.load). Every file is
copied to a temp file in the same folder, fsynced and renamed, so a reader never sees half a
file. A trial's checkpoint folder holds `weights-<k>.pt` and `state-<k>.pt` for member k of
its unit (a pack's members are saved separately).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

WEIGHTS = "weights"


def weights_path(sweep_dir, trial_id: str) -> Path:
    return Path(sweep_dir) / WEIGHTS / f"{trial_id}.pt"


def state_path(sweep_dir, trial_id: str) -> Path:
    return Path(sweep_dir) / WEIGHTS / f"{trial_id}.state.pt"


def copy_atomic(src: Path, dst: Path):
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 22)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def keep(checkpoint_dir, sweep_dir, member_ids: list[str]) -> list[str]:
    """Copy the members' final weights and states out of a checkpoint folder; returns the ids
    whose weights were there."""
    kept = []
    for k, trial_id in enumerate(member_ids):
        for name, dst in ((f"state-{k}.pt", state_path(sweep_dir, trial_id)),
                          (f"weights-{k}.pt", weights_path(sweep_dir, trial_id))):
            src = Path(checkpoint_dir) / name
            if src.exists():
                copy_atomic(src, dst)
        if (Path(checkpoint_dir) / f"weights-{k}.pt").exists():
            kept.append(trial_id)
    return kept

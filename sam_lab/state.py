"""Training state that outlives a process: what a resumed or extended trial starts from.

A family whose `run` takes `state=None, checkpoint=None` can be stopped and resumed:
  - `checkpoint(get_state)` is called at every safe point (after a step or an epoch, its row
    yielded). The caller decides whether to take a snapshot now (by time) and calls
    `get_state()` only then. The last call comes after the last step, so the caller's last
    `get_state` gives the final state.
  - `run(config, state=get_state())` goes on from there and ends bit-for-bit where an
    uninterrupted run ends (CPU, same threads): the state holds model, optimizer, filters, every
    random generator, the step and the bookkeeping the loop needs.
  - With a longer duration (`steps`, `epochs`) the same state extends a finished trial, where
    the family's `extendable(config)` allows it.

A state is a dict of tensors and plain Python values, so `torch.load(weights_only=True)` reads
it: nothing of ours is ever unpickled.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch


def rng_state(*generators: torch.Generator) -> dict:
    """Every random stream a training loop may draw from, as tensors and ints."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": [version, list(py_state), py_gauss],
            "generators": [g.get_state() for g in generators]}


def set_rng_state(state: dict, *generators: torch.Generator):
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    for g, saved in zip(generators, state["generators"]):
        g.set_state(saved)


def filter_state(grad_filter) -> list | None:
    """A Grokfast filter's memory (sam_lab.grokfast.GradFilter), as lists of tensors."""
    if grad_filter is None or grad_filter.slow is None:
        return None
    if grad_filter.kind == "ema":
        return [h.clone() for h in grad_filter.slow]
    return [[list(past), total.clone()] for past, total in grad_filter.slow]


def load_filter_state(grad_filter, saved: list | None):
    if grad_filter is None or saved is None:
        return
    if grad_filter.kind == "ema":
        grad_filter.slow = list(saved)
    else:
        from collections import deque

        grad_filter.slow = [(deque(past, maxlen=grad_filter.window), total)
                            for past, total in saved]


def save(obj, path: str | os.PathLike):
    """torch.save to a temp file in the same folder, fsync, rename: never half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | os.PathLike):
    """A saved state or state_dict, on the CPU; `weights_only`: tensors and plain values only."""
    return torch.load(path, map_location="cpu", weights_only=True)

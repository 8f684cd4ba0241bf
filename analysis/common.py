"""Shared figure plumbing: every plot module saves through `save` (PNG + SVG, atomic)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window
import matplotlib.pyplot as plt  # noqa: E402


def save(fig, out_dir: Path | str, stem: str) -> Path:
    """Write `stem`.png and `stem`.svg into out_dir atomically; return the PNG path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for ext in ("svg", "png"):
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{stem}.", suffix=f".{ext}")
        os.close(fd)
        fig.savefig(tmp, dpi=150, bbox_inches="tight", format=ext)
        os.replace(tmp, out_dir / f"{stem}.{ext}")
    plt.close(fig)
    return out_dir / f"{stem}.png"

"""The code version a trial ran with: recorded in trials.parquet and as an MLflow tag."""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          timeout=10, check=True)
    return done.stdout.strip()


def code_version() -> str:
    """`git:<sha>` (with `-dirty` when tracked files differ from it) in a checkout of sam-lab,
    otherwise `sam-lab==<version>` of the installed package."""
    try:
        if Path(_git("rev-parse", "--show-toplevel")).resolve() == ROOT:
            dirty = _git("status", "--porcelain", "--untracked-files=no")
            return f"git:{_git('rev-parse', 'HEAD')[:12]}" + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass  # no git, or not a checkout
    try:
        return f"sam-lab=={importlib.metadata.version('sam-lab')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"

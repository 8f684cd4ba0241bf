"""The code version a trial ran with: recorded in trials.parquet and as an MLflow tag.

A tree without git (a cluster's synced copy, a `ray job submit --working-dir` upload) reads it
from CODE_VERSION at the project root, written from a checkout with

    python -m sweeps.provenance --write

which records `git:<sha>[-dirty]` with a hash of the code files; if the code has changed since,
the version read is `<recorded>+modified`, never a stale one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERSION_FILE = "CODE_VERSION"
CODE = ("sam_lab", "sweeps", "analysis")  # the folders cluster.yaml syncs


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          timeout=10, check=True)
    return done.stdout.strip()


def _from_git() -> str | None:
    try:
        if Path(_git("rev-parse", "--show-toplevel")).resolve() == ROOT:
            dirty = _git("status", "--porcelain", "--untracked-files=no")
            return f"git:{_git('rev-parse', 'HEAD')[:12]}" + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass  # no git, or not a checkout
    return None


def tree_hash(root: Path = ROOT) -> str:
    """sha256 over the project's Python files and pyproject.toml (paths and contents)."""
    digest = hashlib.sha256()
    files = [root / "pyproject.toml"] + sorted(
        p for folder in CODE for p in (root / folder).rglob("*.py")
        if "__pycache__" not in p.parts)
    for path in files:
        if path.exists():
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _from_file(root: Path = ROOT) -> str | None:
    try:
        recorded = json.loads((root / VERSION_FILE).read_text())
        version, tree = recorded["version"], recorded["tree"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return version if tree == tree_hash(root) else f"{version}+modified"


def code_version() -> str:
    """`git:<sha>` (with `-dirty` when tracked files differ from it) in a checkout of sam-lab,
    else the version recorded in CODE_VERSION, else `sam-lab==<version>` of the package."""
    version = _from_git() or _from_file()
    if version:
        return version
    try:
        return f"sam-lab=={importlib.metadata.version('sam-lab')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def write(root: Path = ROOT) -> str:
    """Record the checkout's version and code hash in ROOT/CODE_VERSION (atomically)."""
    version = _from_git()
    if version is None:
        raise ValueError(f"{root} is not a git checkout: no version to record")
    text = json.dumps({"version": version, "tree": tree_hash(root)}) + "\n"
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{VERSION_FILE}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / VERSION_FILE)
    return version


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        print("usage: python -m sweeps.provenance --write", file=sys.stderr)
        raise SystemExit(2)
    try:
        print(f"{write()} -> {ROOT / VERSION_FILE}")
    except ValueError as e:
        print(e, file=sys.stderr)
        raise SystemExit(2) from None

"""Keep a local results folder self-contained: its MLflow artifacts live under RESULTS/mlartifacts.

MLflow stores absolute artifact paths (it resolves a relative one when the experiment is made),
so a results folder copied off a cluster or moved would still point into the original: `plot`
on the copy would write its figures there. `rebase(root)` rewrites the paths of sam-lab's
experiments (those under a `.../mlartifacts/<name>` folder) onto this root. Every command that
opens a local store calls it first; it is a no-op when nothing moved.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

MARKER = "/mlartifacts/"


def _split(location: str) -> tuple[str, str] | None:
    """('file://' or '', the path up to and including /mlartifacts/) of a sam-lab location."""
    scheme = "file://" if location.startswith("file://") else ""
    if not scheme and "://" in location:  # s3://, mlflow-artifacts:/ ... : not ours to move
        return None
    path = location[len(scheme):]
    cut = path.rfind(MARKER)
    return (scheme, path[:cut + len(MARKER)]) if cut >= 0 else None


def rebase(root: Path) -> int:
    """Point the artifact paths of RESULTS/mlflow.db at RESULTS/mlartifacts; returns how many
    experiments were moved."""
    db = Path(root) / "mlflow.db"
    if not db.is_file():
        return 0
    here = str((Path(root) / "mlartifacts").resolve()) + "/"
    con = sqlite3.connect(db, timeout=30)
    try:
        moved = 0
        try:
            experiments = con.execute(
                "SELECT experiment_id, artifact_location FROM experiments").fetchall()
        except sqlite3.OperationalError as e:  # an empty file: MLflow has not made the tables
            if "no such table" in str(e):
                return 0
            raise
        with con:  # one transaction: all paths move, or none
            for eid, location in experiments:
                split = _split(location or "")
                if split is None or split[1] == here:
                    continue
                scheme, old = split
                con.execute("UPDATE experiments SET artifact_location = ? "
                            "WHERE experiment_id = ?", (scheme + here + location[len(scheme +
                                                                                   old):], eid))
                con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                            "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                            (scheme + here, len(scheme + old) + 1, eid, len(scheme + old),
                             scheme + old))
                moved += 1
        return moved
    finally:
        con.close()

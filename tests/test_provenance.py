"""The code version recorded where there is no git: CODE_VERSION, written from a checkout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from sweeps import provenance

ROOT = Path(__file__).resolve().parents[1]


def _project(tmp: Path) -> Path:
    """A minimal project tree whose provenance module is this one (ROOT = tmp)."""
    (tmp / "sweeps").mkdir(parents=True)
    shutil.copy(ROOT / "sweeps" / "provenance.py", tmp / "sweeps" / "provenance.py")
    (tmp / "sweeps" / "__init__.py").touch()
    (tmp / "sam_lab").mkdir()
    (tmp / "sam_lab" / "model.py").write_text("WIDTH = 128\n")
    (tmp / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return tmp


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from sweeps import provenance; "
            "print(provenance.code_version())")
    if args:
        return subprocess.run([sys.executable, str(root / "sweeps" / "provenance.py"), *args],
                              capture_output=True, text=True)
    return subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True,
                          text=True, check=True)


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t",
                           *args], capture_output=True, text=True, check=True).stdout.strip()


def test_version_written_in_a_checkout_is_read_where_git_is_gone(tmp_path):
    root = _project(tmp_path / "repo")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "x")
    sha = _git(root, "rev-parse", "HEAD")[:12]
    written = _run(root, "--write")
    assert written.returncode == 0, written.stderr
    assert json.loads((root / "CODE_VERSION").read_text())["version"] == f"git:{sha}"

    shutil.rmtree(root / ".git")  # what a cluster's synced tree looks like
    assert _run(root).stdout.strip() == f"git:{sha}"
    (root / "sam_lab" / "model.py").write_text("WIDTH = 256\n")  # changed after recording
    assert _run(root).stdout.strip() == f"git:{sha}+modified"


def test_write_outside_a_checkout_is_one_line_exit_2_nothing_written(tmp_path):
    root = _project(tmp_path / "plain")
    done = _run(root, "--write")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "not a git checkout" in done.stderr
    assert not (root / "CODE_VERSION").exists()
    assert not _run(root).stdout.strip().startswith("git:")  # falls back to the package


def test_unreadable_version_file_is_ignored(tmp_path):
    root = _project(tmp_path / "bad")
    assert provenance._from_file(root) is None
    (root / "CODE_VERSION").write_text("git:abc\n")  # not the recorded format
    assert provenance._from_file(root) is None
    (root / "CODE_VERSION").write_text(json.dumps({"version": "git:abc",
                                                   "tree": provenance.tree_hash(root)}))
    assert provenance._from_file(root) == "git:abc"

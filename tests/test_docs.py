"""The README and docs/ work as written: every shell block fenced as ```bash runnable runs, from
the repo root, with the venv's `sam-lab` on PATH (as after `. .venv/bin/activate`). Only cheap
commands (--help, --dry-run, bad input) are marked runnable; the rest is covered by the tests of
what they run (test_variants.py for the tiny variants)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```bash runnable\n(.*?)^```$", re.M | re.S)


def _blocks():
    for page in PAGES:
        for i, match in enumerate(FENCE.finditer(page.read_text())):
            yield pytest.param(match.group(1), id=f"{page.relative_to(ROOT)}#{i + 1}")


BLOCKS = list(_blocks())


def test_the_readme_is_short_and_has_runnable_blocks():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
    assert any(b.id.startswith("README.md") for b in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS)
def test_runnable_block_runs(block, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    before = sorted(p.name for p in ROOT.iterdir())
    done = subprocess.run(["bash", "-e", "-c", block], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"{block}\n{done.stdout}{done.stderr}"
    assert sorted(p.name for p in ROOT.iterdir()) == before  # runnable blocks write nothing


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_images_exist(page):
    for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
        assert (page.parent / target).is_file(), f"{page.name}: {target}"

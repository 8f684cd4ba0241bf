"""Every shipped spec's `tiny` variant runs as a user runs it: `sam-lab sweep SPEC --variant tiny`,
then `sam-lab plot`. One Ray head serves the whole module (`--address`), and a few sweeps run
at once, each into a results root of its own: most of a tiny sweep's time is process start-up
and Tune's bookkeeping, which overlap well. The plots run through the same CLI entry point in
this process, one after another (matplotlib is not thread-safe), so its imports are paid once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from cifar_format import write_cifar_fixture
from conftest import RayNodes, sam_lab

from analysis import figures
from sweeps import cli
from sweeps import spec as specs

pytestmark = pytest.mark.slow

SHIPPED = sorted((Path(__file__).parents[1] / "sweeps").rglob("*.yaml"))
AT_ONCE = 3


def _label(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{label: (results root, spec, the sweep's CompletedProcess)} for every spec."""
    work = tmp_path_factory.mktemp("variants")
    write_cifar_fixture(work / "cifar")
    head = RayNodes()

    def run(path: Path):
        extra = ["--set", f"data_dir={work / 'cifar'}"] if "cifar10" in path.name else []
        spec = specs.load(path, extra[1:], variant="tiny")
        root = work / path.stem
        done = sam_lab("sweep", str(path), "--variant", "tiny", *extra, "--results", str(root),
                       "--address", head.address, cwd=work, env=head.env, timeout=600)
        return _label(path), (root, spec, done)

    try:
        head.start("head", cpus=2)
        with ThreadPoolExecutor(AT_ONCE) as pool:
            yield dict(pool.map(run, SHIPPED))
    finally:
        head.stop()


@pytest.mark.parametrize("path", SHIPPED, ids=_label)
def test_tiny_variant_sweeps_and_plots(path, runs, capsys):
    root, spec, done = runs[_label(path)]
    assert done.returncode == 0, done.stdout + done.stderr
    data = [f"data_dir={spec.base['data_dir']}"] if "cifar10" in path.name else []
    assert len(spec.trials) < len(specs.load(path, data).trials)  # tiny is smaller
    trials = pd.read_parquet(root / spec.name / "trials.parquet")
    grid = {t.trial_id for t in spec.trials}  # round 0; a refined spec adds rounds after it
    assert grid <= set(trials.trial_id) and trials.trial_id.is_unique
    if spec.refine is None:
        assert set(trials.trial_id) == grid
    else:
        assert (trials[~trials.trial_id.isin(grid)]["round"] > 0).all()
    assert (trials.status == "ok").all(), trials[["trial_id", "error"]].to_string()
    for stem, fig in figures.build(root / spec.name):  # labelled axes, title, a tick per value
        assert figures.audit(fig, spec.grid) == [], stem
        plt.close(fig)
    assert cli.main(["plot", str(root / spec.name)]) == 0
    printed = {Path(line).name for line in capsys.readouterr().out.splitlines()}
    pngs = sorted((root / spec.name / "figures").glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    assert {p.name for p in pngs} <= printed

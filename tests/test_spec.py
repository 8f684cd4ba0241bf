"""Spec loading, expansion, trial ids and overrides (no Ray, no training). The bad-input corpus
(malformed specs and CLI calls) is tests/test_bad_input.py."""

from __future__ import annotations

import pytest
from conftest import TINY, write_spec

from sweeps import cli
from sweeps import spec as specs
from sweeps.spec import SpecError


def load(tmp_path, changes=None, overrides=(), drop=()):
    raw = {**TINY, **(changes or {})}
    for key in drop:
        raw.pop(key)
    return specs.load(write_spec(tmp_path, raw), overrides)


def test_expands_grid_times_seeds_with_stable_unique_ids(tmp_path):
    s = load(tmp_path, {"seeds": 3})
    assert len(s.trials) == 2 * 2 * 3
    ids = [t.trial_id for t in s.trials]
    assert len(set(ids)) == len(ids) and all(len(i) == 16 for i in ids)
    assert ids == [t.trial_id for t in load(tmp_path, {"seeds": [0, 1, 2]}).trials]
    first = s.trials[0]
    assert first.point == {"width": 8, "lr": 0.1} and first.seed == 0
    assert first.config["dataset"] == "digits" and first.config["momentum"] == 0.9  # defaulted
    assert s.grid["lr"] == [0.1, 1e6]


def test_trial_id_ignores_execution_knobs_and_listed_defaults(tmp_path):
    ids = [t.trial_id for t in load(tmp_path).trials]
    same = {"base": {**TINY["base"], "device": "cpu", "data_dir": "elsewhere", "momentum": 0.9},
            "resources": {"cpu": 2}}
    again = load(tmp_path, same)
    assert [t.trial_id for t in again.trials] == ids
    assert again.trials[0].config["threads"] == 2  # the CPU allotment, not part of the id
    other = load(tmp_path, {"base": {**TINY["base"], "momentum": 0.5}})
    assert not set(t.trial_id for t in other.trials) & set(ids)


def test_threads_follow_the_cpu_allotment(tmp_path):
    s = load(tmp_path, {"base": {**TINY["base"], "threads": 2}, "resources": {"cpu": 2.5}})
    assert {t.config["threads"] for t in s.trials} == {2}
    with pytest.raises(SpecError, match=r"threads: each trial uses its CPU allotment, "
                                        r"floor\(resources.cpu\) = 1"):
        load(tmp_path, {"base": {**TINY["base"], "threads": 4}})


def test_set_overrides_base_and_replaces_grid_axes(tmp_path):
    s = load(tmp_path, overrides=["epochs=5", "width=[4, 32]", "lr=0.05"])
    assert {t.config["epochs"] for t in s.trials} == {5}
    assert s.grid == {"width": [4, 32], "lr": [0.05]}
    assert len(s.trials) == 2
    assert len(load(tmp_path, overrides=["seeds=3"]).trials) == 4 * 3
    with pytest.raises(SpecError, match=r"--set epochs: got 0; allowed: >= 1"):
        load(tmp_path, overrides=["epochs=0"])
    with pytest.raises(SpecError, match=r"--set epochs: expected key=value"):
        load(tmp_path, overrides=["epochs"])


def test_argparse_errors_are_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "spec" in err


def test_dry_run_prints_the_trials_and_writes_nothing(tmp_path, capsys):
    path = write_spec(tmp_path, TINY)
    code = cli.main(["sweep", str(path), "--results", str(tmp_path / "results"), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "tiny: 4 trials, 0 finished, 4 to run (dry run: nothing written)" in out
    ids = [t.trial_id for t in specs.load(path).trials]
    assert all(i in out for i in ids)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]

"""A refined spec through `sam-lab sweep` (real Ray): rounds of ordinary trials with a `round`
column, a driver killed in round 1 resumed and deepened (`--set rounds=2`) without repeating or
skipping a trial, the dry run, and bad refine blocks refused as bad input."""

from __future__ import annotations

import signal

import pandas as pd
import pytest
from conftest import wait_for, write_spec
from test_faults import Cli, finished_state

from analysis import load
from sam_lab.trials import random_features
from sweeps import cli, rounds
from sweeps import spec as specs
from sweeps.spec import SpecError

SPEC = {
    "name": "rf-refined",
    "experiment": "random_features",
    "base": {"dataset": "digits", "label_noise": 0.1},
    "grid": {"n_features": [25, 50, 100, 200], "n_train": [50, 100, 200]},
    "seeds": 1,
    "refine": {"axes": ["n_features", "n_train"], "metric": "train_loss", "threshold": 1e-8,
               "rounds": 1, "spacing": "log"},
}


def expected_trials(path, n_rounds: int) -> dict:
    """trial_id -> round of an uninterrupted refined run, with trials run in-process."""
    spec, recorded = specs.load(path, [f"rounds={n_rounds}"]), {}
    while todo := rounds.plan(spec, recorded, {"ok", "failed"})[0]:
        for t in todo:
            row = list(random_features.run({**t.config, "threads": 1}))[-1]
            recorded[t.trial_id] = ("ok", row["train_loss"])
    return {t.trial_id: t.round for t in spec.trials}


@pytest.mark.slow
def test_rounds_resume_after_a_kill_and_deepen_without_repeats(tmp_path):
    path = write_spec(tmp_path, SPEC, "rf.yaml")
    sweep_dir = tmp_path / "results" / "rf-refined"
    first = Cli(tmp_path, "rf.yaml", "--results", "results", "--max-concurrent", "1")
    wait_for(lambda: "refine round 1 of 1" in first.out.read_text()
             or first.proc.poll() is not None, "round 1 to start")
    died = first.sigkill()
    assert died.returncode == -signal.SIGKILL, died.stdout + died.stderr
    before = finished_state(sweep_dir)
    assert len(before) >= 12  # round 0 (12 points, 1 seed) was recorded before round 1 began

    last = Cli(tmp_path, "rf.yaml", "--results", "results", "--set", "rounds=2").wait()
    assert last.returncode == 0, last.stdout + last.stderr
    want = expected_trials(path, 2)
    trials = load.trials(sweep_dir)
    assert sorted(trials.trial_id) == sorted(want)  # nothing skipped, nothing extra
    assert dict(zip(trials.trial_id, trials["round"])) == want
    assert set(trials["round"]) == {0, 1, 2} and (trials.status == "ok").all()
    after = finished_state(sweep_dir)
    assert {t: after[t] for t in before} == before, "a finished trial ran again"
    ran = sum(line.startswith("ok ") for line in last.stdout.splitlines())
    assert ran == len(want) - len(before)  # each missing trial exactly once
    assert "refine round 2 of 2" in last.stdout

    again = Cli(tmp_path, "rf.yaml", "--results", "results", "--set", "rounds=2").wait()
    assert again.returncode == 0 and "nothing to do" in again.stdout
    refined = trials[trials["round"] > 0]  # every added point lies between two round-0 values
    assert refined.n_features.between(25, 200).all() and refined.n_train.between(50, 200).all()


def test_dry_run_shows_round_0_and_says_later_rounds_depend_on_results(tmp_path, capsys):
    path = write_spec(tmp_path, SPEC, "rf.yaml")
    assert cli.main(["sweep", str(path), "--results", str(tmp_path / "r"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "12 trials, 0 finished, 12 to run, refine round 0 of 1" in out
    assert "later refine rounds (up to 1) depend on the results" in out
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("change, message", [
    ({"axes": ["n_features", "ridge"]}, "refine.axes: 'ridge' is not a grid key"),
    ({"metric": "phase"}, "refine.metric: got 'phase'; allowed: a column the experiment reports"),
    ({"rounds": -1}, "refine.rounds: got -1"),
    ({"metric": "status", "threshold": 0.5}, "refine.threshold: status is categorical"),
])
def test_bad_refine_blocks_are_one_spec_error(tmp_path, change, message):
    path = write_spec(tmp_path, {**SPEC, "refine": {**SPEC["refine"], **change}}, "rf.yaml")
    with pytest.raises(SpecError, match=message):
        specs.load(path)


def test_rounds_override_needs_a_refine_block(tmp_path):
    plain = {k: v for k, v in SPEC.items() if k != "refine"}
    with pytest.raises(SpecError, match="--set rounds: this spec has no `refine` block"):
        specs.load(write_spec(tmp_path, plain, "plain.yaml"), ["rounds=2"])
    deeper = specs.load(write_spec(tmp_path, SPEC, "rf.yaml"), ["rounds=3"])
    assert deeper.refine.rounds == 3 and len(deeper.trials) == 12
    assert deeper.resolved()["refine"]["rounds"] == 3
    assert pd.Series([t.round for t in deeper.trials]).eq(0).all()

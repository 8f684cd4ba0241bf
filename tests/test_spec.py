"""Spec loading, expansion, trial ids, overrides, and bad input (no Ray, no training)."""

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


BAD_SPECS = {
    "unknown top-level key": ({"gird": {"width": [4]}}, "gird: unknown spec key; allowed: name"),
    "unknown config key": ({"base": {"dataset": "digits", "widht": 4}},
                           "widht: unknown key for experiment classify; allowed:"),
    "wrong type": ({"base": {"dataset": "digits", "epochs": "many"}},
                   "epochs: expected int, got str"),
    "negative rho": ({"base": {"dataset": "digits", "rho": -0.1}}, "rho: got -0.1; allowed: >= 0"),
    "width 0 in the grid": ({"grid": {"width": [0, 8]}},
                            "width: got 0; allowed: >= 1 (grid point width=0)"),
    "empty grid axis": ({"grid": {"width": []}}, "grid.width: expected a non-empty list"),
    "unknown experiment": ({"experiment": "regress"}, "experiment: unknown 'regress'; allowed:"),
    "unknown dataset": ({"base": {"dataset": "imagenet"}},
                        "dataset: got 'imagenet'; allowed: one of mnist1d"),
    "label noise 1.5": ({"base": {"dataset": "digits", "label_noise": 1.5}},
                        "label_noise: got 1.5; allowed: >= 0.0 and < 1.0"),
    "bad seeds": ({"seeds": 0}, "seeds: got 0; allowed: an int >= 1"),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_spec_names_file_key_and_allowed_values(tmp_path, case):
    change, message = BAD_SPECS[case]
    with pytest.raises(SpecError) as e:
        load(tmp_path, change)
    assert str(e.value).startswith(str(tmp_path / "spec.yaml") + ": ")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_duplicate_yaml_keys_and_non_yaml_are_rejected(tmp_path):
    dup = write_spec(tmp_path, "name: a\nexperiment: classify\ngrid: {width: [4]}\n"
                               "grid: {width: [8]}\nseeds: 1\n", "dup.yaml")
    with pytest.raises(SpecError, match=r"dup.yaml: line 4: grid: duplicate key"):
        specs.load(dup)
    junk = write_spec(tmp_path, "name: [unclosed\n", "junk.yaml")
    with pytest.raises(SpecError, match=r"junk.yaml: not valid YAML: line"):
        specs.load(junk)


CLI_BAD = {
    "unknown key": (TINY | {"colour": "red"}, [], "colour: unknown spec key"),
    "width 0": (TINY | {"grid": {"width": [0]}}, [], "width: got 0"),
    "empty grid": (TINY | {"grid": {}}, [], "grid: expected a mapping"),
    "bad --set": (TINY, ["--set", "lr"], "--set lr: expected key=value"),
    "missing spec": (None, [], "spec file not found"),
    "non-YAML": ("{{{:", [], "not valid YAML"),
    "ray:// address": (TINY, ["--address", "ray://10.0.0.1:10001"], "--address ray://"),
    "unreachable address": (TINY, ["--address", "127.0.0.1:9"], "--address 127.0.0.1:9: cannot"),
    "bad --max-concurrent": (TINY, ["--max-concurrent", "0"], "--max-concurrent: got 0"),
    "tracking server down": (TINY, ["--tracking-uri", "http://127.0.0.1:9"],
                             "--tracking-uri http://127.0.0.1:9: tracking server unreachable"),
}


@pytest.mark.parametrize("case", list(CLI_BAD))
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, case):
    spec, flags, message = CLI_BAD[case]
    path = tmp_path / "bad.yaml" if spec is None else write_spec(tmp_path, spec, "bad.yaml")
    before = sorted(tmp_path.iterdir())
    code = cli.main(["sweep", str(path), "--results", str(tmp_path / "results"), *flags])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("sam-lab: error: ") and message in err
    assert sorted(tmp_path.iterdir()) == before  # no results folder, no mlflow.db
    ray = __import__("sys").modules.get("ray")
    assert ray is None or not ray.is_initialized()


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

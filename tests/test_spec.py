"""Spec loading, expansion, trial ids and overrides (no Ray, no training). The bad-input corpus
(malformed specs and CLI calls) is tests/test_bad_input.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from cifar_format import write_cifar_fixture
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


SHIPPED = sorted((Path(__file__).parents[1] / "sweeps").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_spec_loads_and_its_packs_are_valid(path, tmp_path):
    overrides = []
    if "cifar10" in path.name:  # its data dir must exist: a CIFAR-format stand-in
        write_cifar_fixture(tmp_path)
        overrides = [f"data_dir={tmp_path}"]
    spec = specs.load(path, overrides)
    assert spec.trials and spec.description
    units = spec.units(spec.trials)
    assert sorted(t.trial_id for u in units for t in u) == sorted(t.trial_id for t in spec.trials)
    for unit in units:  # a pack holds only trials that differ in the pack keys
        rest = [{k: v for k, v in t.config.items() if k not in spec.pack} for t in unit]
        assert all(r == rest[0] for r in rest) and len(unit) <= spec.pack_size


def test_pack_groups_trials_that_differ_only_in_the_pack_keys(tmp_path):
    s = load(tmp_path, {"seeds": 3, "grid": {"width": [8, 16], "rho": [0.0, 0.05]},
                        "pack": "seeds", "pack_size": 2})
    units = s.units(s.trials)
    assert [len(u) for u in units] == [2, 1] * 4  # 4 grid points, 3 seeds, at most 2 per pack
    assert all(len({(t.config["width"], t.config["rho"]) for t in u}) == 1 for u in units)
    both = load(tmp_path, {"seeds": 3, "grid": {"width": [8, 16], "rho": [0.0, 0.05]},
                           "pack": ["rho"]})  # seed is always packable
    assert both.pack == ("seed", "rho") and [len(u) for u in both.units(both.trials)] == [6, 6]
    assert [t.trial_id for t in both.trials] == [t.trial_id for t in s.trials]  # ids unchanged
    plain = load(tmp_path, {"pack": "seeds"}, overrides=["pack=none"])
    assert plain.pack == () and all(len(u) == 1 for u in plain.units(plain.trials))


def test_dry_run_shows_which_trials_share_a_pack(tmp_path, capsys):
    path = write_spec(tmp_path, {**TINY, "seeds": 2, "pack": "seeds"})
    assert cli.main(["sweep", str(path), "--results", str(tmp_path / "r"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "pack"
    packs = [line.split()[-1] for line in lines[1:9]]
    assert packs == ["0", "0", "1", "1", "2", "2", "3", "3"]  # the two seeds of each point


@pytest.mark.parametrize("grid", ["missing", {}, None])
def test_a_spec_without_grid_is_the_base_config_times_the_seeds(tmp_path, grid):
    changes = {"seeds": [0, 3]} if grid == "missing" else {"seeds": [0, 3], "grid": grid}
    s = load(tmp_path, changes, drop=("grid",) if grid == "missing" else ())
    assert [(t.seed, t.point) for t in s.trials] == [(0, {}), (3, {})]
    assert s.trials[0].config["width"] == 64 and s.trials[0].config["epochs"] == 2  # base
    assert s.trials[1].label == "seed=3" and s.grid == {}
    gridded = load(tmp_path, {"seeds": [0, 3], "grid": {"width": [64]}})
    assert [t.trial_id for t in gridded.trials] == [t.trial_id for t in s.trials]


# ----------------------------------------------------------------------------- variants, names


VARIANTS = {"small": {"width": 4, "epochs": 1, "seeds": 2, "resources": {"cpu": 2}},
            "wide": {"width": [32, 64]}}


def test_a_variant_applies_with_the_set_rules_and_set_refines_it(tmp_path):
    s = specs.load(write_spec(tmp_path, {**TINY, "variants": VARIANTS}), variant="small")
    assert s.grid["width"] == [4] and {t.config["epochs"] for t in s.trials} == {1}
    assert s.seeds == [0, 1] and s.resources["cpu"] == 2 and len(s.trials) == 2 * 2
    plain = specs.load(write_spec(tmp_path, TINY), ["width=4", "epochs=1", "seeds=2",
                                                    "resources={cpu: 2}"])
    assert [t.trial_id for t in s.trials] == [t.trial_id for t in plain.trials]
    both = specs.load(write_spec(tmp_path, {**TINY, "variants": VARIANTS}),
                      ["width=[8, 16]", "resources={gpu: 0}"], variant="small")
    assert both.grid["width"] == [8, 16] and both.resources["cpu"] == 2  # --set wins, merged
    assert len(specs.load(write_spec(tmp_path, {**TINY, "variants": VARIANTS})).trials) == 4


def test_bad_variants_are_one_line_errors(tmp_path):
    path = write_spec(tmp_path, {**TINY, "variants": VARIANTS})
    with pytest.raises(SpecError, match=r"--variant tiny: not in this spec; allowed: small, wide"):
        specs.load(path, variant="tiny")
    with pytest.raises(SpecError, match=r"--variant tiny: .*allowed: none"):
        specs.load(write_spec(tmp_path, TINY), variant="tiny")
    broken = {**TINY, "variants": {"wide": {"widht": [32]}}}  # checked even when not chosen
    with pytest.raises(SpecError, match=r"variants.wide.widht: unknown key for experiment"):
        specs.load(write_spec(tmp_path, broken))
    with pytest.raises(SpecError, match=r"variants: expected a mapping"):
        specs.load(write_spec(tmp_path, {**TINY, "variants": ["tiny"]}))


@pytest.mark.parametrize("name", ["mlflow.db", "MLflow.db-wal", "mlartifacts", "mlruns",
                                  ".hidden", "x" * 300])
def test_reserved_and_overlong_names_are_refused(tmp_path, name):
    with pytest.raises(SpecError, match=r"name: .*(reserved|at most 100)") as e:
        load(tmp_path, {"name": name})
    assert len(str(e.value)) < 300  # one readable line, not the 300 characters back


def test_a_name_used_by_another_family_is_refused(tmp_path):
    s = load(tmp_path)
    (tmp_path / "r" / "tiny").mkdir(parents=True)
    specs.check_name_free(s, tmp_path / "r")  # an empty folder: free
    (tmp_path / "r" / "tiny" / "spec.yaml").write_text("experiment: classify\n")
    specs.check_name_free(s, tmp_path / "r")  # the same family: a resume
    (tmp_path / "r" / "tiny" / "spec.yaml").write_text("experiment: grokking\n")
    with pytest.raises(SpecError, match=r"name: 'tiny' already holds a sweep of experiment "
                                        r"grokking"):
        specs.check_name_free(s, tmp_path / "r")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_variant_expands(path, tmp_path):
    import yaml

    overrides = []
    if "cifar10" in path.name:
        write_cifar_fixture(tmp_path)
        overrides = [f"data_dir={tmp_path}"]
    variants = yaml.safe_load(path.read_text())["variants"]
    assert "tiny" in variants
    full = specs.load(path, overrides)
    for name in variants:
        spec = specs.load(path, overrides, variant=name)
        assert spec.trials and spec.name == full.name
    tiny = specs.load(path, overrides, variant="tiny")
    assert len(tiny.trials) <= 4 and len(tiny.trials) < len(full.trials)

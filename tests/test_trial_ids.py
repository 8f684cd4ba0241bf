"""A trial_id is a promise: new config keys leave finished trials' ids alone, and a fix that
changes results gives the configs it touches new ids. tests/golden/trial_ids.json holds the ids
of every shipped spec as the code before issue 16 computed them (label -> id)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sam_lab import trials as families
from sam_lab.config import identity
from sweeps import spec as specs

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = json.loads((ROOT / "tests/golden/trial_ids.json").read_text())

# Fixes that change results on purpose, and so the ids of the shipped trials they touch
# (docs/science.md): connect's endpoint B from its own seed stream (every trial of the spec,
# none sets seed_b), and BN statistics weighted by batch size (its cnn5 trials, already counted).
CHANGED_ON_PURPOSE = {"sweeps/mode_connectivity.yaml": set(GOLDEN["sweeps/mode_connectivity.yaml"])}
NEW_SPECS = {"sweeps/grokking/grokfast.yaml",  # specs added after the golden list was made
             "sweeps/double_descent/random_features_refined.yaml"}


def _ids(path: str, tmp_path: Path) -> dict:
    overrides = []
    if "cifar" in path:  # the spec checks that its data folder exists; data_dir is no identity
        (tmp_path / "cifar-10-batches-py").mkdir(exist_ok=True)
        overrides = [f"data_dir={tmp_path}"]
    return {t.label: t.trial_id for t in specs.load(ROOT / path, overrides).trials}


def test_golden_covers_every_shipped_spec():
    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / "sweeps").rglob("*.yaml")}
    assert shipped - NEW_SPECS == set(GOLDEN)


@pytest.mark.parametrize("path", sorted(GOLDEN))
def test_shipped_ids_change_only_where_a_fix_changed_results(path, tmp_path):
    now = _ids(path, tmp_path)
    assert set(now) == set(GOLDEN[path])  # same trials
    changed = {label for label, tid in GOLDEN[path].items() if now[label] != tid}
    assert changed == CHANGED_ON_PURPOSE.get(path, set())


def _tid(experiment, **config):
    family = families.get(experiment)
    return specs.trial_id(experiment, dataclasses.asdict(family.Config(**config)))


@pytest.mark.parametrize("experiment, key, value", [
    ("classify", "sam_m", 32), ("classify", "grokfast", "ema"),
    ("grokking", "beta2", 0.999), ("grokking", "grokfast", "ma"),
    ("grokking", "grok_delay_steps", 500), ("connect", "sam_m", 8),
])
def test_a_new_key_counts_only_away_from_its_legacy_value(experiment, key, value):
    extra = {"rho": 0.05} if key == "sam_m" else {}
    legacy = dataclasses.fields(families.get(experiment).Config)
    legacy = next(f for f in legacy if f.name == key).metadata["legacy"]
    assert _tid(experiment, **extra, **{key: legacy}) == _tid(experiment, **extra)
    assert _tid(experiment, **extra, **{key: value}) != _tid(experiment, **extra)


def test_conditional_keys_count_only_where_they_act():
    # asam_eta: only ASAM trials (adaptive with rho > 0)
    assert _tid("classify", asam_eta=0.1) == _tid("classify")
    assert _tid("classify", rho=0.05, asam_eta=0.1) == _tid("classify", rho=0.05)
    assert (_tid("classify", rho=0.05, adaptive=True, asam_eta=0.1)
            != _tid("classify", rho=0.05, adaptive=True))
    # grokfast_*: only with the filter that reads them
    assert _tid("grokking", grokfast_alpha=0.5, grokfast_window=7) == _tid("grokking")
    assert _tid("grokking", grokfast="ema", grokfast_window=7) == _tid("grokking", grokfast="ema")
    assert _tid("grokking", grokfast="ema", grokfast_alpha=0.5) != _tid("grokking", grokfast="ema")
    assert _tid("grokking", grokfast="ma", grokfast_alpha=0.5) == _tid("grokking", grokfast="ma")
    # sam_m: only with SAM on
    assert _tid("classify", sam_m=16) == _tid("classify")
    # modulus: not for the S5 tasks
    assert _tid("grokking", operation="s5:x*y", modulus=5) == _tid("grokking", operation="s5:x*y")


def test_id_changes_mark_only_the_configs_a_fix_touched():
    from sam_lab.trials import connect

    config = dataclasses.asdict(connect.Config())
    assert identity(connect.Config, config)["id_changes"] == ["seed_b_independent"]
    explicit = dataclasses.asdict(connect.Config(seed_b=5))
    assert "id_changes" not in identity(connect.Config, explicit)
    cnn = dataclasses.asdict(connect.Config(seed_b=5, model="cnn5"))
    assert identity(connect.Config, cnn)["id_changes"] == ["bn_recompute_by_size"]

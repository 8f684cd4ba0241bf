"""Sweep specs: load a YAML file, validate every trial against its family's Config, expand.

    spec = load("sweeps/quickstart.yaml", overrides=["epochs=5"])
    for t in spec.trials: print(t.trial_id, t.label, t.config)

A spec is a study: `name` (the results folder and MLflow experiment), `experiment` (a family in
`sam_lab.trials`), `description`, `base` (config shared by all trials), `grid` (a cartesian
product of config values; missing or {} = the base config alone), `seeds` (a list, or n meaning
0..n-1), `resources` (per trial), `failure_retries` (how often a trial lost to a dead worker or
node is restarted), `pack` with `pack_size` (train up to pack_size trials that differ only in the
`pack` keys in one process, vmapped; see `Spec.units`), and `variants`: named sets of overrides
(`tiny: {epochs: 5}`), applied by `load(..., variant="tiny")` with the `--set` rules, before any
--set value, `refine`: adaptive boundary refinement of two grid axes (sweeps/refine.py; the
grid is round 0, later rounds are added by `sweeps.rounds` from what is recorded, and
`--set rounds=N` changes how many), `checkpoint_s` (seconds between a trial's checkpoints, from
which a restarted trial resumes; 0 = none) and `keep` (final: each ok trial's weights and
training state in RESULTS/NAME/weights; none). Resources, retries, packing, rounds, checkpoints
and keep say how trials run and what is kept, not what they compute: no trial_id depends on them.

Everything is checked here, before Ray or MLflow start, and any problem is one `SpecError` line
naming the file, the key and what is allowed.

trial_id is a hash of the experiment name and the *fully defaulted* config's identity (seed
included; see `sam_lab.config.identity`), minus EXECUTION_KEYS: knobs that say where and how a
trial runs, not what it computes. So listing a default value in base does not change ids, a trial
finished on 1 thread or on a GPU counts as done when the sweep is resumed with other resources,
a new key at its `legacy` value leaves every id alone, and any change of what a trial computes (a
new default in code, a fix listed in a Config's ID_CHANGES) gives new ids, never a stale result.
tests/golden/trial_ids.json pins the ids of every shipped spec.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from sam_lab import trials as families
from sam_lab.config import ConfigError, identity, parse

EXECUTION_KEYS = frozenset({"threads", "device", "data_dir", "download"})
REQUIRED = ("name", "experiment", "seeds")
OPTIONAL = {"description": "", "base": {}, "grid": {}, "resources": {"cpu": 1, "gpu": 0},
            "failure_retries": 2, "pack": None, "pack_size": 16, "variants": {},
            "refine": None, "checkpoint_s": 600, "keep": "final"}
KEEP = ("final", "none")
RESOURCE_KEYS = ("cpu", "gpu", "gpu_memory_gb")
MIN_GPU_SHARE = 1 / 16  # `gpu: auto` never packs more trials than this onto one GPU
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME = 100  # a folder, an MLflow experiment and part of every artifact path
# Entries of a results root that are not sweeps: a sweep named so would overwrite or hide them
# (compared lower-cased, for case-insensitive filesystems; mlflow.db also has -wal/-journal files).
RESERVED_NAMES = ("mlflow.db", "mlartifacts", "mlruns")
# Keys a variant or --set may hold besides the family's config keys.
SPEC_OVERRIDES = ("seeds", "resources", "pack", "pack_size", "refine", "rounds", "checkpoint_s",
                  "keep")


class InputError(ValueError):
    """Bad user input (spec, flag, address, tracking URI): exit code 2 with str(e) as the one
    line shown, and nothing written. Every check that raises it runs before any write."""


class SpecError(InputError):
    """A bad spec or --set override."""


@dataclass(frozen=True)
class Trial:
    trial_id: str
    seed: int
    point: dict  # the grid values of this trial, for labels
    config: dict  # the fully defaulted, validated config
    round: int = 0  # refinement round that added this trial (0: the grid)

    @property
    def label(self) -> str:
        return " ".join([f"{k}={v}" for k, v in self.point.items()] + [f"seed={self.seed}"])


@dataclass
class Spec:
    path: str
    name: str
    experiment: str
    description: str
    base: dict
    grid: dict
    seeds: list
    resources: dict
    failure_retries: int
    trials: list
    pack: tuple = ()  # config keys a pack's trials may differ in (seed first); () = no packing
    pack_size: int = 16
    refine: object = None  # a sweeps.refine.Refine, or None
    grid_trials: list = None  # round 0 (= trials without refine; trials grows by rounds)
    checkpoint_s: float = 600  # seconds between a trial's checkpoints; 0 = none
    keep: str = "final"  # final: each ok trial's weights and state in RESULTS/NAME/weights

    @property
    def threads(self) -> int:
        return threads_for(self.resources)

    def resolved(self) -> dict:
        """The spec as run (overrides applied, seeds expanded), plus the trial ids it expands to."""
        keys = ("name", "experiment", "description", "base", "grid", "seeds", "resources",
                "failure_retries", "checkpoint_s", "keep")
        packing = {"pack": list(self.pack), "pack_size": self.pack_size} if self.pack else {}
        refine = {"refine": dataclasses.asdict(self.refine)} if self.refine else {}
        return {k: getattr(self, k) for k in keys} | packing | refine | {
            "trial_ids": [t.trial_id for t in self.trials]}

    def expand(self, points: list[dict], round_: int) -> list[Trial]:
        """Trials (every seed) of extra grid points, e.g. a refinement round's midpoints."""
        return _expand(self.path, self.experiment, self.base, points, self.seeds,
                       self.resources, round_=round_)

    def units(self, todo: list[Trial]) -> list[list[Trial]]:
        """What each Ray trial runs: one trial, or with `pack` up to pack_size trials whose
        configs are equal outside the pack keys (e.g. the seeds of one grid point), trained
        together by the family's `run_packed`. Each still becomes its own row, curve and run."""
        if not self.pack:
            return [[t] for t in todo]
        groups: dict[str, list[Trial]] = {}
        for t in todo:
            groups.setdefault(_pack_key(t.config, self.pack), []).append(t)
        return [g[i:i + self.pack_size] for g in groups.values()
                for i in range(0, len(g), self.pack_size)]


def threads_for(resources: dict) -> int:
    """Torch threads of a trial: its CPU allotment, at least one."""
    return max(1, math.floor(resources["cpu"]))


def _pack_key(config: dict, pack: tuple) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in pack}, sort_keys=True)


def _pack(path, value, size, family, experiment) -> tuple:
    """The `pack` option as a tuple of config keys (seed first), checked against the family."""
    if value is None or value == "none":
        return ()
    keys = ["seed"] if value == "seeds" else value
    packable = getattr(family, "PACKABLE_KEYS", ())
    allowed = (f"seeds, or a list of keys from {', '.join(packable)}" if packable
               else f"none (experiment {experiment} has no packed runner)")
    if not isinstance(keys, list) or not keys or any(k not in packable for k in keys):
        raise SpecError(f"{path}: pack: got {value!r}; allowed: {allowed}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise SpecError(f"{path}: pack_size: got {size!r}; allowed: an int >= 1")
    return tuple(dict.fromkeys(["seed", *keys]))


def _show(point: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def trial_id(experiment: str, config: dict) -> str:
    """A hash of the experiment and the config's identity (`sam_lab.config.identity`: keys at
    their `legacy` value or outside their `applies` condition left out, so a new key leaves the
    ids of finished trials alone), minus EXECUTION_KEYS."""
    kept = identity(families.get(experiment).Config, config)
    kept = {k: v for k, v in kept.items() if k not in EXECUTION_KEYS}
    blob = json.dumps({"experiment": experiment, "config": kept}, sort_keys=True,
                      separators=(",", ":"), allow_nan=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a spec must not."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise SpecError(f"line {key_node.start_mark.line + 1}: {key}: duplicate key; "
                                "allowed: each key once")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found; allowed: the path of a YAML spec, e.g. "
                        "sweeps/quickstart.yaml")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        line = f"line {where.line + 1}: " if where else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"{path}: not valid YAML: {line}{problem}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping with keys {', '.join(REQUIRED)}; "
                        f"got {type(raw).__name__}")
    return raw


def parse_overrides(overrides: list[str]) -> dict:
    """`--set key=value` strings into {key: value}; values are read as YAML (5 -> int, [4, 8])."""
    out = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(f"--set {item}: expected key=value, e.g. --set epochs=5")
        try:
            out[key] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise SpecError(f"--set {item}: value is not valid YAML; allowed: a YAML value, "
                            "e.g. --set width=[4, 8]") from None
    return out


def _check_top(path, raw: dict):
    allowed = ", ".join((*REQUIRED, *OPTIONAL))
    for key in raw:
        if key not in REQUIRED and key not in OPTIONAL:
            raise SpecError(f"{path}: {key}: unknown spec key; allowed: {allowed}")
    for key in REQUIRED:
        if key not in raw:
            raise SpecError(f"{path}: {key}: missing; a spec needs {', '.join(REQUIRED)}")
    name = raw["name"]
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or len(name) > MAX_NAME:
        shown = name if not isinstance(name, str) or len(name) <= 40 else f"{name[:40]}..."
        raise SpecError(f"{path}: name: got {shown!r}; allowed: letters, digits, '.', '_', '-', "
                        f"starting with a letter or digit, at most {MAX_NAME} (it names a folder)")
    if name.lower().startswith(RESERVED_NAMES):
        raise SpecError(f"{path}: name: {name!r} is reserved for the results root's own files; "
                        f"allowed: a name not starting with {', '.join(RESERVED_NAMES)}")
    if raw["experiment"] not in families.names():
        raise SpecError(f"{path}: experiment: unknown {raw['experiment']!r}; allowed: "
                        f"{', '.join(families.names())}")
    if not isinstance(raw.get("description") or "", str):
        raise SpecError(f"{path}: description: expected text")


def _seeds(path, value) -> list:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise SpecError(f"{path}: seeds: got {value}; allowed: an int >= 1 (n seeds 0..n-1) "
                            "or a list of distinct ints >= 0")
        return list(range(value))
    ok = (isinstance(value, list) and value
          and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value))
    if not ok or len(set(value)) != len(value):
        raise SpecError(f"{path}: seeds: got {value!r}; allowed: an int >= 1 (n seeds 0..n-1) "
                        "or a list of distinct ints >= 0")
    return list(value)


def _checkpoint_s(path, value) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < 0:
        raise SpecError(f"{path}: checkpoint_s: got {value!r}; allowed: a number of seconds "
                        ">= 0 (0 = no checkpoints)")
    return value


def _resources(path, value) -> dict:
    if not isinstance(value, dict):
        raise SpecError(f"{path}: resources: expected a mapping like {{cpu: 1, gpu: 0}}")
    out = dict(OPTIONAL["resources"])
    for key, amount in value.items():
        if key not in RESOURCE_KEYS:
            raise SpecError(f"{path}: resources.{key}: unknown; allowed: "
                            f"{', '.join(RESOURCE_KEYS)}")
        if key == "gpu" and amount == "auto":
            out[key] = amount
            continue
        bound = ">= 0" if key == "gpu" else "> 0"
        bound += ", or auto (a share sized from the model)" if key == "gpu" else ""
        number = isinstance(amount, (int, float)) and not isinstance(amount, bool)
        if not number or not (amount >= 0 if key == "gpu" else amount > 0):
            raise SpecError(f"{path}: resources.{key}: got {amount!r}; allowed: a number {bound}")
        out[key] = amount
    if "gpu_memory_gb" in out and out["gpu"] != "auto":
        raise SpecError(f"{path}: resources.gpu_memory_gb: only used with gpu: auto")
    return out


def gpu_share(family, configs: list[dict], resources: dict) -> float:
    """A unit's GPU request: the number given, or for `gpu: auto` its estimated memory over one
    GPU's (`gpu_memory_gb`, 16 by default: the smallest common card), rounded up to 1/n so that
    n units tile a GPU, at least MIN_GPU_SHARE and at most one GPU."""
    if resources["gpu"] != "auto":
        return resources["gpu"]
    share = family.gpu_memory(configs) / (resources.get("gpu_memory_gb", 16) * 2**30)
    return 1.0 if share >= 1 else 1 / math.floor(1 / max(share, MIN_GPU_SHARE))


def _grid(path, value) -> dict:
    """The grid as a mapping; none (a missing or empty `grid`) means the base config x seeds."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{path}: grid: expected a mapping of config keys to lists of values, "
                        "e.g. {width: [4, 16]}, or {} for the base config alone")
    for key, values in value.items():
        if not isinstance(values, list) or not values:
            raise SpecError(f"{path}: grid.{key}: expected a non-empty list of values, "
                            f"got {values!r}")
        if any(isinstance(v, (list, dict)) for v in values):
            raise SpecError(f"{path}: grid.{key}: values must be scalars, got {values!r}")
        if len({json.dumps(v) for v in values}) != len(values):
            raise SpecError(f"{path}: grid.{key}: duplicate values in {values!r}")
    return value


def _variant(path, variants, chosen: str | None, experiment: str) -> dict:
    """The overrides of the chosen variant ({} for none). Every variant is checked, not just the
    chosen one, so a broken `tiny` fails on any load of its spec."""
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise SpecError(f"{path}: variants: expected a mapping of names to overrides, e.g. "
                        "{tiny: {epochs: 5, seeds: 1}}")
    fields = {f.name for f in dataclasses.fields(families.get(experiment).Config)} - {"seed"}
    for name, overrides in variants.items():
        for key in overrides:
            if key not in fields and key not in SPEC_OVERRIDES:
                raise SpecError(f"{path}: variants.{name}.{key}: unknown key for experiment "
                                f"{experiment}; allowed: {', '.join(SPEC_OVERRIDES)}, "
                                f"{', '.join(sorted(fields))}")
    if chosen is None:
        return {}
    if chosen not in variants:
        have = ", ".join(map(str, variants)) if variants else "none (it has no `variants`)"
        raise SpecError(f"{path}: --variant {chosen}: not in this spec; allowed: {have}")
    return dict(variants[chosen])


def check_name_free(spec: Spec, results_root: str | Path):
    """A sweep folder belongs to one experiment family: reusing its name with another would mix
    two schemas in one trials.parquet and one MLflow experiment and hide the older trials."""
    recorded = Path(results_root) / spec.name / "spec.yaml"
    try:
        earlier = yaml.safe_load(recorded.read_text())["experiment"]
    except FileNotFoundError:
        return
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        raise SpecError(f"{recorded}: unreadable record of an earlier sweep named {spec.name}; "
                        "allowed: another name, or move that folder away") from None
    if earlier != spec.experiment:
        raise SpecError(f"{spec.path}: name: {spec.name!r} already holds a sweep of experiment "
                        f"{earlier} in {recorded.parent}; allowed: another name, or another "
                        "--results")


def load(path: str | Path, overrides: list[str] = (), variant: str | None = None) -> Spec:
    path = Path(path)
    raw = _read_yaml(path)
    _check_top(path, raw)
    spec = {**OPTIONAL, **raw}
    if not isinstance(spec["base"], dict):
        raise SpecError(f"{path}: base: expected a mapping of config keys to values")
    base, grid = dict(spec["base"]), dict(_grid(path, spec["grid"]))
    seeds = _seeds(path, spec["seeds"])
    resources = _resources(path, spec["resources"])
    retries = spec["failure_retries"]
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise SpecError(f"{path}: failure_retries: got {retries!r}; allowed: an int >= 0")

    rounds = None  # (where, n) from a variant or --set: refine.rounds
    layers = [(f"variants.{variant}", _variant(path, spec["variants"], variant,
                                               spec["experiment"]))]
    try:
        layers.append(("--set", parse_overrides(list(overrides))))
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None
    setted = dict(layers[-1][1])  # the keys given by --set, for the messages below
    for where, layer in layers:  # the variant first, so that --set refines it
        if "seeds" in layer:
            seeds = _seeds(f"{path}: {where}", layer.pop("seeds"))
        if "resources" in layer:  # e.g. a GPU spec's tiny CPU variant: resources: {gpu: 0}
            given = layer.pop("resources")
            resources = _resources(f"{path}: {where}",
                                   {**resources, **given} if isinstance(given, dict) else given)
        for key in ("pack", "pack_size", "checkpoint_s", "keep"):  # how trials run and what
            if key in layer:                                       # is kept: ids unchanged
                spec[key] = layer.pop(key)
        if "refine" in layer:  # e.g. a `refined` variant of a dense study
            spec["refine"] = layer.pop("refine")
        if "rounds" in layer:  # refinement depth: which trials exist, not what one computes
            rounds = (where, layer.pop("rounds"))
        for key, value in layer.items():  # a swept key is replaced by the value(s) given
            if key in grid:
                grid[key] = value if isinstance(value, list) else [value]
            else:
                base[key] = value
    for key in SPEC_OVERRIDES:
        setted.pop(key, None)
    checkpoint_s, keep = _checkpoint_s(path, spec["checkpoint_s"]), spec["keep"]
    if keep not in KEEP:
        raise SpecError(f"{path}: keep: got {keep!r}; allowed: {', '.join(KEEP)}")
    grid = _grid(path, grid)

    family = families.get(spec["experiment"])
    fields = {f.name for f in dataclasses.fields(family.Config)}
    pack = _pack(path, spec["pack"], spec["pack_size"], family, spec["experiment"])
    for key in [*base, *grid]:
        where = f"--set {key}" if key in setted else key
        if key == "seed":
            raise SpecError(f"{path}: {where}: set seeds with the top-level `seeds`, not a config "
                            "key")
        if key == "threads" and (key in grid or base[key] != threads_for(resources)):
            raise SpecError(f"{path}: {where}: each trial uses its CPU allotment, "
                            f"floor(resources.cpu) = {threads_for(resources)}; set resources.cpu "
                            "instead")
        if key in base and key in grid and key not in setted:
            raise SpecError(f"{path}: {key}: in both base and grid; keep one")
        if key not in fields:
            raise SpecError(f"{path}: {where}: unknown key for experiment {spec['experiment']}; "
                            f"allowed: {', '.join(sorted(fields - {'seed'}))}")

    points = (dict(zip(grid, values)) for values in itertools.product(*grid.values()))
    trials = _expand(path, spec["experiment"], base, points, seeds, resources, setted, grid)
    grid = {k: list(dict.fromkeys(t.config[k] for t in trials)) for k in grid}  # typed: 1e-3 str
    result = Spec(path=str(path), name=spec["name"], experiment=spec["experiment"],
                  description=(spec["description"] or "").strip(), base=base, grid=grid,
                  seeds=seeds, resources=resources, failure_retries=retries, trials=trials,
                  pack=pack, pack_size=spec["pack_size"], checkpoint_s=checkpoint_s, keep=keep)
    result.grid_trials = list(trials)
    result.refine = _refine(path, spec["refine"], rounds, result, family)
    if resources["gpu"] == "auto" and not hasattr(family, "gpu_memory"):
        raise SpecError(f"{path}: resources.gpu: auto needs an estimate of a trial's memory, "
                        f"which experiment {spec['experiment']} lacks; allowed: a number")
    for unit in result.units(trials) if pack else ():  # e.g. a model it cannot stack
        try:
            family.check_packable([t.config for t in unit])
        except ConfigError as e:
            raise SpecError(f"{path}: pack: {e}") from None
    return result


def _expand(path, experiment: str, base: dict, points, seeds: list, resources: dict,
            setted=(), grid=(), round_: int = 0) -> list[Trial]:
    """Every seed of every grid point, parsed once per point (the seeds change nothing else)."""
    family = families.get(experiment)
    fields = {f.name for f in dataclasses.fields(family.Config)}
    trials, seen = [], {}
    names = [f.name for f in dataclasses.fields(family.Config)]  # flat configs: no asdict
    for point in points:
        raw_config = {**base, **point, "seed": seeds[0]}
        if "threads" in fields:
            raw_config["threads"] = threads_for(resources)
        try:  # once per grid point: the seeds (checked by _seeds) change nothing else
            parsed = parse(family.Config, raw_config)
        except ConfigError as e:
            where = "--set " if e.key in setted else ""
            at = f" (grid point {_show(point)})" if e.key in grid else ""
            raise SpecError(f"{path}: {where}{e}{at}") from None
        first = {name: getattr(parsed, name) for name in names}
        typed_point = {k: first[k] for k in point}  # shared by the point's seeds (read-only)
        for seed in seeds:
            config = {**first, "seed": seed}
            tid = trial_id(experiment, config)
            if tid in seen:  # 1 and 1.0, or a grid over an execution key such as device
                raise SpecError(f"{path}: grid: points {_show(seen[tid])} and {_show(point)} "
                                f"give the same trial ({', '.join(sorted(EXECUTION_KEYS))} do not "
                                "define a trial)")
            seen[tid] = point
            trials.append(Trial(tid, seed, typed_point, config, round_))
    return trials


def _refine(path, value, rounds, spec: Spec, family):
    """The checked `refine` block (None without one), with `rounds` from a variant or --set."""
    from sweeps import refine as refiner

    if value is None:
        if rounds:
            raise SpecError(f"{path}: {rounds[0]} rounds: this spec has no `refine` block")
        return None
    value = dict(value) if isinstance(value, dict) else value
    if rounds and isinstance(value, dict):
        value["rounds"] = rounds[1]
    metrics = {"status": "categorical", **getattr(family, "METRICS", {})}
    try:
        return refiner.parse(value, spec.grid, metrics)
    except refiner.RefineError as e:
        raise SpecError(f"{path}: {e}") from None

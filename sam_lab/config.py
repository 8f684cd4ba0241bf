"""Typed, flat trial configs.

Every trial config is a dataclass whose fields are the pinned config keys. `parse` checks a
plain dict against it (unknown key, wrong type, value out of range) and raises one
`ConfigError` naming the key and the allowed values, before any data or model is built.

Range checks live in field metadata so the error message can state what is allowed:
    width: int = field(default=64, metadata=dict(ge=1))
    model: str = field(default="mlp", metadata=dict(choices=("mlp", "cnn5")))
Floats must be finite unless the field says `allow_inf=True` (SAM's p = inf); nan never passes.

`identity(cls, config)` is the part of a config that defines its result, which a sweep hashes
into a trial_id. Two field declarations keep finished results valid when a key is added:
    legacy=v        the value that reproduces the behaviour from before the key existed; the key
                    is left out of the identity at that value
    applies=f       f(config dict) -> bool: the key matters only where f is true (grokfast_alpha
                    only with a grokfast filter); left out elsewhere
and a Config class may list `ID_CHANGES = {name: f}`: behaviour changed on purpose for the
configs where f(config) is true, so their identity carries the name and their ids change.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import field  # re-exported for config modules

__all__ = ["ConfigError", "parse", "field", "as_dict", "identity"]


class ConfigError(ValueError):
    """A bad config value. `key` names the offending key."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


def _allowed(meta: dict) -> str:
    if "choices" in meta:
        return "one of " + ", ".join(map(str, meta["choices"]))
    parts = []
    for op, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if op in meta:
            parts.append(f"{sym} {meta[op]}")
    return " and ".join(parts)


def _check_type(key: str, value, hint):
    """Coerce YAML-ish scalars to the field's type, or raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
    name = getattr(hint, "__name__", str(hint))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # 1e5 in YAML is a float
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported config field type {hint!r} for {key}")
    raise ConfigError(key, f"expected {name}, got {type(value).__name__} {value!r}")


def _check_range(key: str, value, meta: dict):
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(key, f"got {value!r}; allowed: {_allowed(meta)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and math.isnan(value):
            raise ConfigError(key, "got nan")
        if isinstance(value, float) and math.isinf(value) and not meta.get("allow_inf"):
            raise ConfigError(key, f"got {value!r}; allowed: a finite number"
                              + (f" {_allowed(meta)}" if _allowed(meta) else ""))
        ok = all(
            (
                "ge" not in meta or value >= meta["ge"],
                "gt" not in meta or value > meta["gt"],
                "le" not in meta or value <= meta["le"],
                "lt" not in meta or value < meta["lt"],
            )
        )
        if not ok:
            raise ConfigError(key, f"got {value!r}; allowed: {_allowed(meta)}")


@functools.cache  # get_type_hints evaluates every annotation: most of a parse, were it per call
def _schema(cls) -> tuple[dict, dict]:
    return {f.name: f for f in dataclasses.fields(cls)}, typing.get_type_hints(cls)


def parse(cls, raw: dict | None = None, **overrides):
    """Build and check a `cls` config from a flat dict. Raises ConfigError on the first bad key."""
    raw = {**(raw or {}), **overrides}
    if isinstance(raw, cls):
        return raw
    fields, hints = _schema(cls)
    for key in raw:
        if key not in fields:
            raise ConfigError(key, f"unknown key for {cls.__name__}; allowed: {', '.join(fields)}")
    values = {}
    for key, value in raw.items():
        values[key] = _check_type(key, value, hints[key])
        _check_range(key, values[key], fields[key].metadata)
    cfg = cls(**values)
    for key, f in fields.items():  # defaults are checked too: cheap, and catches bad defaults
        if key not in values:
            _check_range(key, getattr(cfg, key), f.metadata)
    check = getattr(cfg, "check", None)
    if check is not None:
        check()  # cross-field rules, raising ConfigError
    return cfg


def as_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def identity(cls, config: dict) -> dict:
    """The keys of a (fully defaulted) config that define its result: every field except those
    at their `legacy` value or outside their `applies` condition, plus `id_changes`, the names
    of the class's ID_CHANGES that hold for it (omitted when none do)."""
    out = {}
    for f in _schema(cls)[0].values():
        if f.name not in config:
            continue
        value = config[f.name]
        if "legacy" in f.metadata and value == f.metadata["legacy"]:
            continue
        if "applies" in f.metadata and not f.metadata["applies"](config):
            continue
        out[f.name] = value
    changes = [name for name, holds in getattr(cls, "ID_CHANGES", {}).items() if holds(config)]
    if changes:
        out["id_changes"] = changes
    return out

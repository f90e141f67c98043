"""Frozen config dataclasses: presets, then a YAML file, then `key=value` overrides.

Every command owns one frozen dataclass. `resolve_config` builds it in that order and
`save_config` writes the result beside the command's outputs, so a run can be repeated.
Values in overrides are parsed as YAML scalars/lists (``iterations=30``, ``levels=[c3,c5]``,
``amp=bf16``) and then coerced to the field's declared type.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from md.errors import ConfigError

T = TypeVar("T")


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Coerce a YAML-parsed value to the annotated type `tp` (simple types only)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        last_err: Exception | None = None
        for a in non_none:
            try:
                return _coerce(value, a, name)
            except ConfigError as e:
                last_err = e
        raise last_err or ConfigError(f"config key {name!r}: cannot use {value!r}")
    if origin is typing.Literal:
        if value not in args:
            choices = ", ".join(map(str, args))
            raise ConfigError(f"config key {name!r}: {value!r} is not one of {choices}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        item_t = args[0] if args else Any
        items = [_coerce(v, item_t, name) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"config key {name!r}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"config key {name!r}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"config key {name!r}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"config key {name!r}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key {name!r}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key {name!r}: expected text, got {value!r}")
        return str(value)
    return value


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are YAML scalars or lists."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not key=value (e.g. iterations=30)")
        key, raw = pair.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def apply(cfg: T, values: Mapping[str, Any], source: str) -> T:
    """Return a copy of dataclass `cfg` with `values` applied (names checked, types coerced)."""
    types_ = _field_types(type(cfg))
    unknown = sorted(set(values) - set(types_))
    if unknown:
        known = ", ".join(sorted(types_))
        raise ConfigError(f"{source}: unknown config key(s) {', '.join(unknown)}; known: {known}")
    coerced = {k: _coerce(v, types_[k], k) for k, v in values.items()}
    return dataclasses.replace(cfg, **coerced)  # type: ignore[type-var]


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config file must be a mapping of key: value")
    return data


def resolve_config(
    cls: type[T],
    *,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
    **explicit: Any,
) -> T:
    """Build `cls` from defaults <- preset <- YAML file <- explicit CLI options <- key=value."""
    cfg = cls()
    if preset is not None:
        if not presets or preset not in presets:
            names = ", ".join(sorted(presets or {})) or "none"
            raise ConfigError(f"unknown preset {preset!r}; available: {names}")
        cfg = apply(cfg, presets[preset], f"preset {preset!r}")
    if config_file is not None:
        cfg = apply(cfg, load_yaml(config_file), str(config_file))
    given = {k: v for k, v in explicit.items() if v is not None}
    if given:
        cfg = apply(cfg, given, "command-line option")
    over = parse_overrides(overrides)
    if over:
        cfg = apply(cfg, over, "key=value override")
    check_limits(cfg)
    return cfg


@dataclasses.dataclass(frozen=True)
class Limit:
    """A numeric bound on a config field: ``low <= v`` (``low < v`` if `open_low`), ``v < high``."""

    low: float
    open_low: bool = False
    high: float = math.inf

    def ok(self, v: float) -> bool:
        return (v > self.low if self.open_low else v >= self.low) and v < self.high

    def __str__(self) -> str:
        text = f"{'>' if self.open_low else '>='} {self.low:g}"
        return text if self.high == math.inf else f"{text} and < {self.high:g}"


POSITIVE = Limit(0, open_low=True)  # sizes, rates, widths: > 0
AT_LEAST_1 = Limit(1)  # counts of things that must exist: batches, shards, intervals
NON_NEGATIVE = Limit(0)  # counts where 0 means off / default


def check_limits(cfg: Any) -> None:
    """Refuse out-of-range values in one line, at load time, before any work starts.

    Every float field must be finite; fields named in the class's ``LIMITS`` (merged along
    its bases, `Limit` per name; a tuple field is checked item by item) must be in range.
    """
    limits: dict[str, Limit] = {}
    for klass in reversed(type(cfg).__mro__):
        limits.update(getattr(klass, "LIMITS", {}))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        items = value if isinstance(value, tuple) else (value,)
        for v in items:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"config key {f.name!r}: {v} is not a finite number")
            limit = limits.get(f.name)
            if limit is not None and not limit.ok(v):
                raise ConfigError(
                    f"config key {f.name!r}: {v:g} must be {limit}; fix it in the preset, "
                    f"--config file or {f.name}=... override"
                )


def config_to_dict(cfg: Any) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    return json.loads(json.dumps(d, default=str))


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (loadable again with --config)."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))

"""RunConfig to and from TOML: building the dataclass tree from a dict with one clear message per bad
name or value, `--set section.key=value` assignments, and the atomic write of config.toml."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from trainer_core.config.sections import ParamGroup
from trainer_core.errors import UserError


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to a temp file beside `path`, fsync, rename: a crash never leaves a torn file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"Config file {path} does not exist.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"Config file {path} is not valid TOML: {e}. Fix the line named or start from a saved config.toml.") from None


def apply_assignments(data: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """`data` (RunConfig.to_dict()) with `section.key=value` strings applied (values parsed as TOML, else text)."""
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip()
        key = data_alias(key)
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected section.key=value, e.g. --set lora.rank=16.")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        target = data
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(target.get(part), dict):
                raise UserError(f"--set {item!r}: {key} is not a config field (sections: lora, dpo, grpo, diffusion).", field=key)
            target = target[part]
        if leaf not in target and parents != ["data_columns"]:
            raise UserError(f"--set {item!r}: {key} is not a config field.", field=key)
        target[leaf] = value
    return data


# DESIGN.md spells the data settings as a [data] table (columns, format, kind), but `data` has always been
# the top-level data path, which config.toml files hold; so the fields are data_columns / data_format /
# data_kind, and the [data] spelling is accepted as an alias (`--set data.columns.prompt=question`, or a
# [data] table with `path`).
DATA_TABLE = {"path": "data", "columns": "data_columns", "format": "data_format", "kind": "data_kind"}


def data_alias(key: str) -> str:
    """'data.columns.prompt' -> 'data_columns.prompt', 'data.format' -> 'data_format'; others unchanged."""
    head, _, rest = key.partition(".")
    if head != "data" or not rest:
        return key
    name, _, tail = rest.partition(".")
    return DATA_TABLE.get(name, key) + (f".{tail}" if tail and name in DATA_TABLE else "")


def unfold_data_table(data: dict[str, Any]) -> dict[str, Any]:
    """A [data] table (path/columns/format/kind) as the top-level data fields."""
    table = data.get("data")
    if not isinstance(table, dict):
        return data
    data = {k: v for k, v in data.items() if k != "data"}
    for name, value in table.items():
        data[DATA_TABLE.get(name, f"data.{name}")] = value
    return data


def leaves(obj, prefix: str = ""):
    """(dotted name, value) for every non-dataclass field, param groups included."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from leaves(value, f"{prefix}{f.name}.")
        elif f.name == "param_groups":
            for i, group in enumerate(value):
                if dataclasses.is_dataclass(group):
                    yield from leaves(group, f"{prefix}{f.name}.{i}.")
        else:
            yield prefix + f.name, value


def build(cls, data: Any, source: str, prefix: str):
    """Build dataclass `cls` from a dict, checking names and types with clear messages."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: [{prefix.rstrip('.')}] must be a table of settings.", field=prefix.rstrip("."))
    if not prefix:
        data = unfold_data_table(data)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        name = prefix + unknown[0]
        raise UserError(f"{source}: unknown setting {name!r}. Check the spelling against a saved config.toml.", field=name)
    kwargs = {}
    defaults = cls()
    for name, value in data.items():
        full = prefix + name
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = build(type(default), value, source, full + ".")
        elif name == "param_groups":
            if not isinstance(value, list):
                raise UserError(f"{source}: {full} must be a list of {{pattern, lr_multiplier}} tables.", field=full)
            kwargs[name] = [build(ParamGroup, g, source, f"{full}.{i}.") for i, g in enumerate(value)]
        else:
            kwargs[name] = coerce(value, default, source, full)
    return cls(**kwargs)


def coerce(value: Any, default: Any, source: str, name: str) -> Any:
    kind = type(default)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(default, dict):
        if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return dict(value)
    elif isinstance(default, list):
        if isinstance(value, list):
            return list(value)
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
    expected = {bool: "true or false", int: "a whole number", float: "a number", str: "text", list: "a list",
                dict: "a table of names to texts"}.get(kind, kind.__name__)
    raise UserError(f"{source}: {name} must be {expected} (got {value!r}).", field=name)

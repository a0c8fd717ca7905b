""""Copy as CLI": the `finetune train ...` line that reproduces a RunConfig (with the Distributed section
ticked: `python -m trainer_core.launch --hostfile H --backend B -- train ...`, launch_cli_command).

Top-level fields with a flag in DESIGN.md use it; every other non-default
value becomes `--set section.key=VALUE` with VALUE written as TOML, which is
how `RunConfig.with_overrides` reads it. `--method`, `--model` and `--data`
are always written. Parsing the line with `trainer_core.cli` gives back an
equal RunConfig.
"""

from __future__ import annotations

import json
import math
import shlex
from typing import Any

from trainer_core.cli import TRAIN_FLAGS
from trainer_core.config import RunConfig

ALWAYS = ("method", "model", "data")


def toml_value(value: Any) -> str:
    """A TOML literal for a config value (inline tables for dicts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _flag_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _differences(data: dict, defaults: dict, prefix: str = ""):
    """(dotted name, value) of every leaf that differs from the default."""
    for name, value in data.items():
        default = defaults.get(name)
        if isinstance(value, dict) and isinstance(default, dict):
            yield from _differences(value, default, f"{prefix}{name}.")
        elif value != default:
            yield prefix + name, value


def cli_arguments(config: RunConfig) -> list[str]:
    """The argument list after `finetune` (unquoted)."""
    data, defaults = config.to_dict(), RunConfig().to_dict()
    flags = {name: flag for flag, (name, _) in TRAIN_FLAGS.items()}
    args = ["train"]
    for name in ALWAYS:
        args += [flags[name], str(data[name])]
    assignments = []
    for name, value in _differences(data, defaults):
        if name in ALWAYS:
            continue
        if name in flags:
            args += [flags[name], _flag_value(value)]
        else:
            assignments.append(f"{name}={toml_value(value)}")
    for assignment in assignments:
        args += ["--set", assignment]
    return args


def cli_command(config: RunConfig) -> str:
    """One shell line: `finetune train --method lora --model demo --data ... [--set ...]`."""
    return shlex.join(["finetune", *cli_arguments(config)])


def launch_cli_command(config: RunConfig, hostfile, backend: str) -> str:
    """The terminal line that trains `config` data-parallel on the processes of `hostfile` (one entry per rank)."""
    return shlex.join(["python", "-m", "trainer_core.launch", "--hostfile", str(hostfile), "--backend", backend,
                       "--", *cli_arguments(config)])

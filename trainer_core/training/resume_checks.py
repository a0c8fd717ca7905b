"""What must not change between a run and its resume.

A checkpoint records a fingerprint of the model (resolved path, weight-file
names and sizes) and of the data (SHA-256 of each split file) plus the full
config. Resuming refuses, naming what changed, when the model, the data or a
config field that shapes the maths differs; fields in RESUMABLE_CHANGES
(max_steps, save/eval intervals, ...) may change and are reported as events.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from trainer_core.config import RESUMABLE_CHANGES, RunConfig
from trainer_core.errors import UserError
from trainer_core.models.loading import resolve_model_path

MODEL_SUFFIXES = (".safetensors", ".gguf", ".json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(config: RunConfig, data_files: dict[str, str]) -> dict:
    """{"model": {...}, "data": {split: sha256}} for the run's model and data files."""
    model_path = resolve_model_path(config.model)
    files = [model_path] if model_path.is_file() else sorted(
        p for p in model_path.iterdir() if p.suffix in MODEL_SUFFIXES)
    model = {"path": str(model_path), "files": {p.name: p.stat().st_size for p in files}}
    data = {split: _sha256(Path(path)) for split, path in sorted(data_files.items()) if path}
    return {"model": model, "data": data}


def config_changes(saved: dict, current: RunConfig) -> dict[str, tuple]:
    """{field: (saved, current)} for every top-level or section field that differs."""
    now = current.to_dict()
    changes = {}
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    changes[f"{key}.{sub}"] = (a.get(sub), b.get(sub))
        elif a != b:
            changes[key] = (a, b)
    return changes


def check_resumable(checkpoint: Path, state: dict, config: RunConfig, current_fingerprint: dict) -> dict[str, tuple]:
    """Raise UserError when the run cannot continue exactly; return the harmless config changes."""
    saved_fp = state.get("fingerprint") or {}
    if saved_fp.get("model") and saved_fp["model"] != current_fingerprint["model"]:
        raise UserError(f"Cannot resume from {checkpoint}: the model changed since the run started "
                        f"(was {saved_fp['model'].get('path')}, now {current_fingerprint['model']['path']}, or its "
                        "files differ). Resume with the original model, or start a new run.", field="model")
    for split, digest in (saved_fp.get("data") or {}).items():
        if current_fingerprint["data"].get(split) != digest:
            raise UserError(f"Cannot resume from {checkpoint}: the {split} data file changed since the run started "
                            "(its contents differ), so the data order would not match. Restore the original file or "
                            "start a new run.", field="data")
    changes = config_changes(state.get("config") or {}, config) if state.get("config") else {}
    blocking = {k: v for k, v in changes.items() if k not in RESUMABLE_CHANGES}
    if blocking:
        listed = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in blocking.items())
        raise UserError(f"Cannot resume from {checkpoint}: these settings changed and would alter the training maths: "
                        f"{listed}. Put them back in config.toml, or start a new run with the new settings.",
                        field=next(iter(blocking)))
    return changes

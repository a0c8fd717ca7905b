"""What must not change between a run and its resume.

A checkpoint records a fingerprint of the model (resolved path, weight-file
names, sizes and SHA-256 of their contents), of the data (SHA-256 of each split
file) and of a GRPO reward file, plus the full config. Resuming refuses, naming
what changed, when the model, the data, the reward code or a config field that
shapes the maths differs; fields in RESUMABLE_CHANGES (max_steps, save/eval
intervals, ...) may change, are honoured, and are reported as events. The
checks run before any user code (a reward file) is imported.

Hashing a large model takes a while once: digests are cached in
paths.cache_dir()/fingerprints.json by (path, size, mtime), so a model is read
again only when its files change.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from trainer_core import paths
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


def content_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, cached by (resolved path, size, mtime_ns)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = paths.cache_dir() / "fingerprints.json"
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if not isinstance(cache, dict):
        cache = {}
    if key in cache:
        return cache[key]
    digest = _sha256(path)
    cache = {k: v for k, v in cache.items() if not k.startswith(f"{path}|")}
    cache[key] = digest
    try:  # a cache only: a read-only home is no reason to fail
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache), encoding="utf-8")
        os.replace(tmp, cache_file)
    except OSError:
        pass
    return digest


def fingerprint(config: RunConfig, data_files: dict[str, str]) -> dict:
    """{"model": {path, files, sha256}, "data": {split: sha256}[, "reward_file": sha256]} of the run's inputs."""
    model_path = resolve_model_path(config.model)
    files = [model_path] if model_path.is_file() else sorted(
        p for p in model_path.iterdir() if p.suffix in MODEL_SUFFIXES)
    model = {"path": str(model_path), "files": {p.name: p.stat().st_size for p in files},
             "sha256": {p.name: content_digest(p) for p in files}}
    data = {split: _sha256(Path(path)) for split, path in sorted(data_files.items()) if path}
    found = {"model": model, "data": data}
    if config.method == "grpo" and config.grpo.reward_file:
        reward = Path(config.grpo.reward_file).expanduser()
        found["reward_file"] = _sha256(reward) if reward.is_file() else None
    return found


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


def model_differs(saved: dict, current: dict) -> bool:
    """Same path, names and sizes, and (when the checkpoint recorded them) the same contents."""
    if saved.get("path") != current.get("path") or saved.get("files") != current.get("files"):
        return True
    return bool(saved.get("sha256")) and saved["sha256"] != current.get("sha256")


def check_resumable(checkpoint: Path, state: dict, config: RunConfig, current_fingerprint: dict, *,
                    allow_model_change: bool = False) -> dict[str, tuple]:
    """Raise UserError when the run cannot continue exactly; return the harmless config changes
    (plus `model` when allow_model_change let a changed model through)."""
    saved_fp = state.get("fingerprint") or {}
    changes = config_changes(state.get("config") or {}, config) if state.get("config") else {}
    blocking = {k: v for k, v in changes.items() if k not in RESUMABLE_CHANGES}
    if blocking:
        listed = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in blocking.items())
        raise UserError(f"Cannot resume from {checkpoint}: these settings changed and would alter the training maths: "
                        f"{listed}. Put them back in config.toml, or start a new run with the new settings.",
                        field=next(iter(blocking)))
    if "reward_file" in saved_fp and saved_fp["reward_file"] != current_fingerprint.get("reward_file"):
        raise UserError(f"Cannot resume from {checkpoint}: the reward file {config.grpo.reward_file} changed (or is "
                        "missing) since the run started, so the rewards would not match. Restore the original file "
                        "or start a new run; its code was not run.", field="grpo.reward_file")
    now = current_fingerprint["model"]
    if saved_fp.get("model") and model_differs(saved_fp["model"], now):
        if not allow_model_change:
            raise UserError(f"Cannot resume from {checkpoint}: the model at {now['path']} is not the one the run "
                            f"started with (was {saved_fp['model'].get('path')}; its weight files differ in name, "
                            "size or contents). Resume with the original model, start a new run, or pass "
                            "--allow-model-change to continue on this one anyway.", field="model")
        changes["model"] = (saved_fp["model"].get("path"), now["path"])
    for split, digest in (saved_fp.get("data") or {}).items():
        if current_fingerprint["data"].get(split) != digest:
            raise UserError(f"Cannot resume from {checkpoint}: the {split} data file changed since the run started "
                            "(its contents differ), so the data order would not match. Restore the original file or "
                            "start a new run.", field="data")
    return changes

"""CheckpointManager: atomic checkpoints, latest/best/list, retention.

Layout of one checkpoint (DESIGN.md):
    step-000500/
      adapters.safetensors   trainable weights (LoRA/DoRA adapters, or the full model)
      adapter_config.json    mlx-lm compatible
      optimizer.safetensors  AdamW moments and update count
      trainer_state.json     step, epoch, data position, RNG, metrics, config hash, versions

Atomicity: everything is written into a hidden `.tmp-*` folder beside the
final one, each file fsynced, then the folder is renamed into place and the
parent fsynced. `list()` only considers `step-NNNNNN` folders, so a crash at
any instant leaves either the old set or the new complete checkpoint, never a
half one that `latest()` would pick. Leftover temp folders are removed on start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import mlx.core as mx

from trainer_core.errors import UserError

STEP_DIR = re.compile(r"^step-(\d{6,})$")
WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
OPTIMIZER = "optimizer.safetensors"
STATE = "trainer_state.json"


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry to disk (atomic writes: checkpoints, exports)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_is_full(error: BaseException, folder: Path) -> bool:
    """mlx says only "[write] Unable to write": ask the file system when the errno does not tell."""
    if getattr(error, "errno", None) in (28, 122) or "No space" in str(error):  # ENOSPC, EDQUOT
        return True
    try:
        return shutil.disk_usage(folder).free < 16 * 1024 * 1024
    except OSError:
        return False


def write_checkpoint_dir(target: Path, *, weights: dict, adapter_config: dict,
                         optimizer: dict | None, state: dict) -> Path:
    """Write a complete checkpoint folder at `target` atomically (replacing one there)."""
    target = Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    for leftover in [*parent.glob(f".tmp-{target.name}-*"), *parent.glob(f".old-{target.name}-*")]:
        shutil.rmtree(leftover, ignore_errors=True)  # from a crashed earlier write of this target (final/)
    tmp = parent / f".tmp-{target.name}-{os.getpid()}-{time.monotonic_ns()}"
    writing = target  # the file being written, named in the message when a write fails
    try:  # mlx reports a failed write (disk full, unwritable folder) as RuntimeError, Python as OSError
        tmp.mkdir()
        writing = target / WEIGHTS
        mx.save_safetensors(str(tmp / WEIGHTS), weights, metadata={"format": "mlx"})
        if optimizer is not None:
            writing = target / OPTIMIZER
            mx.save_safetensors(str(tmp / OPTIMIZER), optimizer)
        writing = target / ADAPTER_CONFIG
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2))
        writing = target / STATE
        (tmp / STATE).write_text(json.dumps(state, indent=2))
        writing = target
        for f in tmp.iterdir():
            fsync_path(f)
        fsync_path(tmp)
        if target.exists():
            old = parent / f".old-{target.name}-{os.getpid()}-{time.monotonic_ns()}"
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
        fsync_path(parent)
    except (OSError, RuntimeError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"Could not write {writing} (checkpoint {target.name}): {getattr(e, 'strerror', None) or e}. "
                        "Free disk space or choose a writable output folder, then resume the run; "
                        "earlier checkpoints are intact.",
                        reason="disk_full" if _disk_is_full(e, parent) else "error") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_state(checkpoint: Path) -> dict:
    return json.loads((Path(checkpoint) / STATE).read_text())


class CheckpointManager:
    """Checkpoints of one run under `<run>/checkpoints`.

    `writer=False` only reads (list/latest/best): it creates no folder and removes no leftover,
    for processes that must not touch the folder another process writes (distributed ranks > 0).
    """

    def __init__(self, directory: Path, keep_last: int = 0, best_metric: str = "eval_score", writer: bool = True):
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.best_metric = best_metric
        if not writer:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in self.directory.glob(".old-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def path_for(self, step: int) -> Path:
        return self.directory / f"step-{step:06d}"

    def list(self) -> list[Path]:
        """Complete checkpoints, oldest step first."""
        found = []
        for p in self.directory.iterdir() if self.directory.exists() else ():
            m = STEP_DIR.match(p.name)
            if m and (p / STATE).is_file() and (p / WEIGHTS).is_file():
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        checkpoints = self.list()
        return checkpoints[-1] if checkpoints else None

    def best(self, metric: str | None = None) -> Path | None:
        """Checkpoint with the lowest `metric` in its trainer_state. The default, eval_score, is the eval
        loss or, for GRPO, minus the eval reward (loop.evaluate); checkpoints written before it existed
        fall back to their eval_loss."""
        metric = metric or self.best_metric
        scored = []
        for p in self.list():
            metrics = read_state(p).get("metrics", {})
            value = metrics.get(metric, metrics.get("eval_loss") if metric == "eval_score" else None)
            if isinstance(value, (int, float)):
                scored.append((value, p))
        return min(scored, key=lambda t: t[0])[1] if scored else None

    def save(self, step: int, **parts) -> Path:
        """Write checkpoint `step` (see write_checkpoint_dir), then apply retention."""
        path = write_checkpoint_dir(self.path_for(step), **parts)
        self.prune()
        return path

    def prune(self) -> list[Path]:
        """Delete the oldest checkpoints beyond keep_last, never the best or the latest."""
        if not self.keep_last:
            return []
        checkpoints = self.list()
        keep = set(checkpoints[-self.keep_last:])
        best = self.best()
        if best is not None:
            keep.add(best)
        removed = [p for p in checkpoints if p not in keep]
        for p in removed:  # renamed first (atomic), so a crash mid-delete leaves no half step-* folder
            doomed = p.with_name(f".old-{p.name}-{os.getpid()}-{time.monotonic_ns()}")
            p.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        return removed

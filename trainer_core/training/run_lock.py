"""One process trains a run folder at a time: an OS lock (flock) on `<run>/run.lock`.

The process that trains (or resumes) a run holds an exclusive lock on the file for as long as it
trains and writes its PID into it. A second `finetune resume` of the same run, or a second window,
gets a UserError naming that process instead of writing the same metrics.jsonl and checkpoints
twice. The OS drops the lock when the holder exits, however it exits, so a crash never leaves a
run locked. The GUI asks `holder()` to show such a run as running (and offer no Resume).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from trainer_core.errors import UserError

LOCK_FILE = "run.lock"


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.file = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise UserError naming the process that holds it."""
        if self.file is not None:
            return self
        file = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.close()
            pid = _read_pid(self.path)
            who = f"process {pid}" if pid else "another process"
            raise UserError(f"Run {self.path.parent.name} is being trained by {who} ({self.path.parent}). Wait for "
                            "it to finish or stop it there; two processes must not write one run.",
                            field="run_name") from None
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        self.file = file
        return self

    def release(self) -> None:
        if self.file is not None:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_UN)
            self.file.close()
            self.file = None


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def holder(run_dir: Path) -> int | None:
    """The PID training `run_dir` now (0 when it is unknown), or None when nobody holds the lock."""
    path = Path(run_dir) / LOCK_FILE
    if not path.exists():
        return None
    try:
        with open(path, "a+", encoding="utf-8") as file:
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return _read_pid(path) or 0
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)
    except OSError:
        return None
    return None

"""A distributed run seen through the same signals as the in-process TrainingController.

    run = DistributedRun()
    run.start(config, hosts, backend, workdir, total_steps)   # DistributedLauncher: mlx.launch in a QProcess
    run.resume(run_dir, checkpoint, hosts, backend, workdir, total_steps)   # `finetune resume` on every rank
    run.stop()                                                # all ranks stop at one step after a checkpoint
    run.shutdown()                                            # stop and wait (the window is closing)

The ranks train in their own processes; rank 0 writes the run folder as any run does. This object
follows rank 0's metrics.jsonl (polled every POLL_MS, complete lines only) and re-emits its records
as the worker's signals: runCreated once config.toml exists, trainBegan at the first train record,
metrics / checkpointSaved / progress per record, then finished (train_end) or failed (one message,
decided by launch.Outcome). Pause and Save now have no distributed counterpart.

A resumed run is followed from the size its metrics.jsonl had at the launch: runCreated waits for rank 0's
`resumed` event (so the window's load_history finds the earlier records ahead of it), as in-process.
A failure message that tells the terminal command to resume with names the Resume button first.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from PySide6.QtCore import QTimer, Signal

from app.distributed.panel import DistributedLauncher
from app.training.worker import RunSignals
from trainer_core.config import RunConfig
from trainer_core.distributed.launch import parse_records

POLL_MS = 250
_CONTINUE = re.compile(r"continue with `finetune resume ([^`]+)` started on the same (\d+) processes")
_ABORTED = "resume from it on the same processes."


class MetricsTail:
    """The records appended to a metrics.jsonl since the last `read()` (a torn last line waits)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0
        self.partial = b""

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        return parse_records(lines)


class DistributedRun(RunSignals):
    runningChanged = Signal(bool)
    ranksJoined = Signal(list)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.launcher = DistributedLauncher(self)
        self.launcher.log.connect(self.log)
        self.launcher.ranksJoined.connect(self.ranksJoined)
        self.launcher.finished.connect(self._finished)
        self.launcher.failed.connect(self._failed)
        self.timer = QTimer(self, interval=POLL_MS, timeout=self._poll)
        self.paused = False
        self.backend = ""
        self._tail: MetricsTail | None = None
        self._follow = self._created = self._began = self._resuming = False
        self._total = 0
        self._started = 0.0
        self._losses: dict[str, float] = {}
        self._pending: list[dict] = []  # a resumed run's records read before its `resumed` event

    @property
    def running(self) -> bool:
        return self.launcher.running

    def start(self, config: RunConfig, hosts: list[dict], backend: str, workdir: Path, total_steps: int,
              force: bool = False) -> str:
        """Launch `config` on the expanded `hosts`; returns the run folder rank 0 writes. `force`: Start anyway
        (`train --force`: past the ranks' memory check)."""
        run_dir = Path(self.launcher.start(config, hosts, backend, workdir, force=force))
        # A folder that is already there is not this run's (rank 0 refuses to write into it): never follow it.
        return self._begin(run_dir, backend, total_steps, follow=not run_dir.exists(), resuming=False)

    def resume(self, run_dir: Path, checkpoint: Path | None, hosts: list[dict], backend: str, workdir: Path,
               total_steps: int) -> str:
        """Continue `run_dir` from `checkpoint` (None: its latest) on the expanded `hosts`."""
        run_dir = Path(self.launcher.resume(run_dir, checkpoint, hosts, backend, workdir))
        return self._begin(run_dir, backend, total_steps, follow=True, resuming=True)

    def _begin(self, run_dir: Path, backend: str, total_steps: int, follow: bool, resuming: bool) -> str:
        self.backend = backend
        self._follow, self._resuming = follow, resuming
        self._created = self._began = False
        self._pending = []
        self._tail = MetricsTail(run_dir / "metrics.jsonl")
        self._tail.offset = self.launcher.since  # a resumed run: only what this launch appends
        self._total, self._started, self._losses = int(total_steps or 0), time.time(), {}
        self.runningChanged.emit(True)
        self.timer.start()
        return str(run_dir)

    def stop(self) -> None:
        self.launcher.stop()

    def shutdown(self, timeout_ms: int = 120_000) -> bool:
        """Stop the run and wait for every local process; abort it if that takes longer than `timeout_ms`."""
        if not self.running:
            return True
        self.stop()
        if self.launcher.wait(timeout_ms):
            return True
        self.stop()  # the second stop aborts
        return self.launcher.wait(10_000)

    def resume_command(self, run_dir: str) -> str:
        return f"mlx.launch --hostfile {self.launcher.hostfile} --backend {self.backend} -- finetune resume {run_dir}"

    def with_resume_button(self, message: str) -> str:
        """`message` with its terminal resume advice turned into the Resume button's (the command kept after it)."""
        message = _CONTINUE.sub(lambda m: f"resume it with the Resume button in the runs list, which starts the same "
                                          f"{m.group(2)} processes again (terminal: `{self.resume_command(m.group(1))}`)",
                                message)
        return message.replace(_ABORTED, "the Resume button in the runs list continues from it on the same processes.")

    def _poll(self) -> None:
        run_dir = Path(self.launcher.run_dir)
        if not self._follow:
            return
        if not self._created and not self._resuming and not (run_dir / "config.toml").is_file():
            return
        records = self._tail.read()
        if not self._created:
            if self._resuming:  # from rank 0's `resumed` event on: what came before it is the run's history
                self._pending += records
                resumed = [i for i, r in enumerate(self._pending) if r.get("event") == "resumed"]
                if not resumed:
                    return
                records, self._pending = self._pending[resumed[0]:], []
            self._created = True
            self.runCreated.emit(str(run_dir))
        for record in records:
            kind = record.get("type")
            if kind == "checkpoint":
                self.checkpointSaved.emit(record)
                continue
            self.metrics.emit(record)
            if kind in ("train", "eval") and isinstance(record.get("loss"), (int, float)):
                self._losses[kind] = record["loss"]
            if kind == "train":
                if not self._began:
                    self._began = True
                    self.trainBegan.emit({"step": int(record["step"]) - 1, "total_steps": self._total})
                self.progress.emit(int(record["step"]), self._total)

    def _ended(self) -> None:
        self._poll()
        self.timer.stop()

    def _finished(self, result: dict) -> None:
        self._ended()
        self.finished.emit({**result, "elapsed": time.time() - self._started,
                            "last_train_loss": self._losses.get("train"), "last_eval_loss": self._losses.get("eval"),
                            "resume_command": self.resume_command(result["run_dir"])})
        self.runningChanged.emit(False)

    def _failed(self, message: str) -> None:
        self._ended()
        self.failed.emit(self.with_resume_button(message))
        self.runningChanged.emit(False)

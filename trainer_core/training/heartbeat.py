"""Where a run's process was when it died without a word: a native crash ("double free or corruption"),
a SIGKILL from the system (out of memory), a power cut.

Every ending Python sees is a `stopped` event (run_end.py). A process killed natively writes nothing, so
rank 0's `Heartbeat` callback keeps `<run>/heartbeat.json` current:

    {"step": N, "phase": "starting" | "training" | "after", "pid", "time", "program": "app" | "finetune",
     "method", "model"}

"training": inside step N; "after": step N is done and the loop evaluates, saves or answers samples before
step N+1; "starting": loading before step N+1. The first beat replaces the file atomically; later beats
overwrite it in place with one `pwrite` of a fixed-width record (JSON padded with spaces), because two
atomic replaces a step cost ~1.1 ms of host time in which the GPU waits for the next step (measured on the
micro case: 0.56 ms a replace). Not fsynced: it is a hint for the message, the run's data is metrics.jsonl
and the checkpoints; a record the reader cannot parse falls back to metrics.jsonl's last step.

`interruption(run_dir, last_step, ...)` turns it (or, for runs written before it existed, metrics.jsonl's last
step) into the line a relaunch shows — "The app quit unexpectedly during step 7 of this run (diffusion on
gemma2)…" — and the checkpoint Resume would continue from, if any (never step 0 as if nothing happened).
The caller decides that the run was interrupted: no `stopped` event and nobody holds its run.lock.
"""

from __future__ import annotations

import json
import os
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from trainer_core.training.callbacks import Callback
from trainer_core.training.checkpoint import STATE, STEP_DIR, WEIGHTS

HEARTBEAT_FILE = "heartbeat.json"


RECORD_BYTES = 1024  # every beat's record is padded to this width, so an in-place overwrite leaves no tail


class Heartbeat(Callback):
    def __init__(self, run_dir: Path, method: str, model: str):
        self.path = Path(run_dir) / HEARTBEAT_FILE
        self.fields = {"pid": os.getpid(), "program": "app" if "PySide6.QtWidgets" in sys.modules else "finetune",
                       "method": method, "model": model}
        self._fd: int | None = None  # the file as last replaced, overwritten in place by later beats
        self._closer = None

    def _beat(self, step: int, phase: str) -> None:
        record = json.dumps({"step": int(step), "phase": phase, "time": time.time(), **self.fields}).encode()
        try:
            if self._fd is not None and len(record) <= RECORD_BYTES:
                os.pwrite(self._fd, record.ljust(RECORD_BYTES), 0)
                return
            self._close()
            tmp = self.path.with_name(f".{HEARTBEAT_FILE}.tmp")
            tmp.write_bytes(record.ljust(RECORD_BYTES))
            os.replace(tmp, self.path)
            if len(record) <= RECORD_BYTES:
                self._fd = os.open(self.path, os.O_WRONLY)
                self._closer = weakref.finalize(self, os.close, self._fd)
        except OSError:  # a full disk is reported by the writers that matter (metrics, checkpoints)
            self._close()

    def _close(self) -> None:
        if self._closer is not None:
            self._closer()
        self._fd = self._closer = None

    def on_train_end(self, info: dict) -> None:
        self._close()

    def on_train_begin(self, info: dict) -> None:
        self._beat(info.get("step", 0), "starting")

    def on_step_begin(self, info: dict) -> None:
        self._beat(info["step"] + 1, "training")

    def on_step_end(self, metrics: dict) -> None:
        self._beat(metrics["step"], "after")


def read_heartbeat(run_dir: Path) -> dict | None:
    try:
        data = json.loads((Path(run_dir) / HEARTBEAT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("step"), int) else None


def latest_checkpoint_step(run_dir: Path) -> int | None:
    """The step of the newest complete checkpoint (what `finetune resume` restores), or None."""
    steps = [int(m.group(1)) for p in (Path(run_dir) / "checkpoints").glob("step-*")
             if (m := STEP_DIR.match(p.name)) and (p / STATE).is_file() and (p / WEIGHTS).is_file()]
    return max(steps, default=None)


@dataclass
class Interruption:
    step: int  # the step being trained (or just done, phase "after") when the process died
    phase: str
    checkpoint_step: int | None  # Resume continues from here; None: nothing to resume
    text: str

    @property
    def resumable(self) -> bool:
        return self.checkpoint_step is not None


def interruption(run_dir: Path, last_step: int, method: str, model: str) -> Interruption | None:
    """What a relaunch says about an interrupted run; None when it never got as far as training
    (no heartbeat and no train record). `last_step`: the last train record's step in metrics.jsonl."""
    beat = read_heartbeat(run_dir)
    if beat is None and last_step <= 0:
        return None
    if beat is None:  # written before heartbeats: metrics.jsonl's last step is the best guess
        beat = {"step": last_step + 1, "phase": "training"}
    step, phase = int(beat["step"]), str(beat.get("phase", "training"))
    who = "The app" if beat.get("program", "app") == "app" else "The training process (`finetune`)"
    when = {"starting": f"while starting (loading the model and data, before step {step + 1})",
            "after": f"right after step {step} (evaluating, saving a checkpoint or answering the sample prompts)"
            }.get(phase, f"during step {step}")
    what = f"{beat.get('method') or method} on {beat.get('model') or model}"
    checkpoint = latest_checkpoint_step(run_dir)
    resume = (f" Resume continues from the checkpoint at step {checkpoint}." if checkpoint is not None else
              " No checkpoint was saved before that, so there is nothing to resume: start the run again.")
    text = (f"{who} quit unexpectedly {when} of this run ({what}); no error was recorded (a native crash, or the "
            f"system ended it, e.g. for lack of memory).{resume}")
    return Interruption(step, phase, checkpoint, text)


def crashed(run_dir: Path, records: list[dict]) -> Interruption | None:
    """The interruption of a run folder whose last process (the records after the last `resumed` event of its
    metrics.jsonl, `records`) wrote no `stopped` / `train_end` record and is not running (nobody holds its
    run.lock); None for every other run."""
    from trainer_core.training.run_lock import holder

    resumed = max((i for i, r in enumerate(records) if r.get("event") == "resumed"), default=-1)
    if any(r.get("type") == "event" and r.get("event") in ("stopped", "train_end") for r in records[resumed + 1:]):
        return None
    if holder(run_dir) is not None:
        return None
    try:
        import tomllib
        config = tomllib.loads((Path(run_dir) / "config.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    steps = max((int(r.get("step", 0)) for r in records if r.get("type") == "train"), default=0)
    return interruption(run_dir, steps, str(config.get("method", "?")),
                        Path(str(config.get("model", "?"))).name or "?")

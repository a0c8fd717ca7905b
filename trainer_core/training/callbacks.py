"""Callbacks: how the core reports, with plain-dict payloads.

A callback implements any of the hooks below; the loop calls them in order on
the training thread. `should_stop()` is polled at every step boundary.
Payload keys are the metric names of metrics.jsonl (DESIGN.md), so the CLI,
the GUI bridge and the plots share one vocabulary. The core never prints:
the metrics file, the log file and the CLI progress bar are all callbacks.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from trainer_core.errors import UserError
from trainer_core.training import run_end


class Callback:
    """No-op base; override what you need."""

    def on_train_begin(self, info: dict) -> None: ...
    def on_train_end(self, info: dict) -> None: ...
    def on_epoch_begin(self, info: dict) -> None: ...
    def on_epoch_end(self, info: dict) -> None: ...
    def on_step_begin(self, info: dict) -> None: ...
    def on_step_end(self, metrics: dict) -> None: ...
    def on_evaluate(self, metrics: dict) -> None: ...
    def on_save(self, info: dict) -> None: ...
    def on_event(self, info: dict) -> None: ...
    def on_log(self, message: str) -> None: ...
    def on_progress(self, info: dict) -> None: ...  # inside a long step (guard.py); never written to metrics.jsonl
    def should_stop(self) -> bool:
        return False

    def wants_stop(self) -> bool:
        """A stop request pending, polled inside long steps (guard.py): answers at once, with no side effects
        (unlike should_stop at step boundaries, which may save or wait while paused)."""
        return False


HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_step_begin",
         "on_step_end", "on_evaluate", "on_save", "on_event", "on_log", "on_progress")


class CallbackList(Callback):
    """Fans every hook out to several callbacks; stops when any asks to."""

    def __init__(self, callbacks=()):
        self.callbacks = [c for c in callbacks if c is not None]

    def should_stop(self) -> bool:
        return any(c.should_stop() for c in self.callbacks)

    def wants_stop(self) -> bool:
        return any(c.wants_stop() for c in self.callbacks)


def _fan_out(name):
    def hook(self, payload):
        for callback in self.callbacks:
            getattr(callback, name)(payload)
    hook.__name__ = name
    return hook


for _name in HOOKS:
    setattr(CallbackList, _name, _fan_out(_name))


def _disk_reason(error: OSError) -> str:
    return "disk_full" if error.errno in (28, 122) else "error"  # ENOSPC, EDQUOT


def _clean(value):
    """JSON-safe: NaN/Inf become null so every line parses everywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter(Callback):
    """Appends one JSON object per train step / eval / checkpoint / event to metrics.jsonl.

    Each record is written with a single write + flush, so a crash can only
    tear the last line, which `read_metrics` skips. A writer that finds a torn
    last line (the previous process was killed mid-write) starts a new line, so
    its own first record is not glued to the fragment. A disk error is a UserError.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = None

    def _write(self, kind: str, payload: dict) -> None:
        record = {"type": kind, "step": int(payload.get("step", 0)), "time": time.time()}
        record.update({k: _clean(v) for k, v in payload.items() if k not in ("step",)})
        try:
            if self.file is None:
                self.file = open(self.path, "a+b")  # appends wherever it reads
                if self.file.tell():
                    self.file.seek(-1, os.SEEK_END)
                    if self.file.read(1) != b"\n":  # torn by a crash
                        self.file.write(b"\n")
            self.file.write((json.dumps(record) + "\n").encode("utf-8"))
            self.file.flush()
        except OSError as e:
            raise UserError(f"Could not write {self.path}: {e.strerror or e}. Free disk space or choose a "
                            "writable output folder, then resume the run.", reason=_disk_reason(e)) from None

    def on_step_end(self, metrics):
        self._write("train", metrics)

    def on_evaluate(self, metrics):
        self._write("eval", metrics)

    def on_save(self, info):
        self._write("checkpoint", info)

    def on_event(self, info):
        self._write("event", info)
        if info.get("event") == "stopped" and self.file:  # the run's last record
            self.file.close()
            self.file = None

    def on_train_end(self, info):
        self._write("event", {"event": "train_end", **info})
        if self.file:
            self.file.close()
            self.file = None


def read_metrics(path: Path, *, raw: bool = False) -> list[dict]:
    """The records of a metrics.jsonl, in file order; a torn or corrupt line is skipped.

    A resumed run starts with a `resumed` event at the step of the checkpoint it
    restored; the records an earlier process wrote for later steps were redone
    (or abandoned) and are dropped, so each train step appears once, as the run
    that produced the final weights saw it. `raw=True` keeps every record.
    """
    records = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(record, dict) or "type" not in record:
                    continue
                if not raw and record["type"] == "event" and record.get("event") == "resumed":
                    step = record.get("step", 0)
                    records = [r for r in records if not isinstance(r.get("step"), int) or r["step"] <= step]
                records.append(record)
    except FileNotFoundError:
        pass
    return records


def event_text(info: dict) -> str:
    """One log line for an event record; a `samples` event lists prompt -> answer."""
    if info.get("event") == "samples":
        answers = "; ".join(f"{s.get('prompt')!r} -> {s.get('answer')!r}" for s in info.get("samples") or ())
        return f"samples at step {info.get('step')}: {answers}"
    if info.get("event") == "stopped":
        return run_end.describe(info)
    return f"event: {info}"


def eval_text(metrics: dict) -> str:
    """One log line for an evaluation (log.txt and the window's Log pane)."""
    return f"eval step {metrics['step']}: loss {metrics.get('loss', float('nan')):.4f}"


class LogWriter(Callback):
    """Human log (log.txt): messages plus one line per eval and checkpoint."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(f"{stamp} {message}\n")
        except OSError as e:
            raise UserError(f"Could not write {self.path}: {e.strerror or e}. Free disk space or choose a "
                            "writable output folder, then resume the run.", reason=_disk_reason(e)) from None

    def on_evaluate(self, metrics):
        self.on_log(eval_text(metrics))

    def on_save(self, info):
        self.on_log(f"checkpoint step {info['step']} -> {info['path']}")

    def on_event(self, info):
        self.on_log(event_text(info))


class StopFlag(Callback):
    """A stop request another thread can set; honoured at the next step boundary.
    `training` tells whether the loop has begun (before that, there is nothing to checkpoint)."""

    def __init__(self):
        self.requested = False
        self.training = False

    def on_train_begin(self, info) -> None:
        self.training = True

    def request(self) -> None:
        self.requested = True

    def should_stop(self) -> bool:
        return self.requested

    def wants_stop(self) -> bool:
        return self.requested

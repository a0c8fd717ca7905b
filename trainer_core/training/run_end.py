"""Why a run ended, as DESIGN.md's closing record: `{"type": "event", "event": "stopped", "reason": ...,
"message": ...}` in metrics.jsonl and one line in log.txt.

Reasons: finished | user (a stop request or Ctrl-C) | nan (too many NaN/Inf steps) | out_of_memory |
disk_full | error. The loop reports it through the callbacks on every ending, exceptions included,
so the GUI, the sidebar and any reader of metrics.jsonl can say why a run is not running.
"""

from __future__ import annotations

import re

from trainer_core.errors import UserError

REASONS = ("finished", "user", "nan", "out_of_memory", "disk_full", "error")
_OUT_OF_MEMORY = re.compile(r"out of memory|\[metal::malloc\]|unable to allocate|cannot allocate memory|"
                            r"\[malloc\]|resource_exhausted", re.IGNORECASE)


def reason_for(error: BaseException) -> str:
    """The `stopped` reason for a run ended by `error`."""
    if isinstance(error, UserError):
        return error.reason if error.reason in REASONS else "error"
    if isinstance(error, KeyboardInterrupt):
        return "user"
    if isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and _OUT_OF_MEMORY.search(str(error))):
        return "out_of_memory"
    if isinstance(error, OSError) and error.errno == 28:  # ENOSPC
        return "disk_full"
    return "error"


def message_for(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "Aborted (Ctrl-C or a second stop request): the last complete checkpoint is the resume point."
    text = str(error).strip()
    return text if isinstance(error, UserError) else f"{type(error).__name__}: {text}" if text else type(error).__name__


def stopped_event(step: int, reason: str, message: str) -> dict:
    return {"step": step, "event": "stopped", "reason": reason, "message": message}


def describe(record: dict) -> str:
    """One line for a `stopped` record (log.txt, the GUI's run status)."""
    label = {"finished": "finished", "user": "stopped by the user", "nan": "stopped: NaN/Inf loss",
             "out_of_memory": "stopped: out of memory", "disk_full": "stopped: disk full",
             "error": "failed"}.get(record.get("reason"), "ended")
    message = record.get("message") or ""
    return f"Run {label} at step {record.get('step')}" + (f": {message}" if message else "")

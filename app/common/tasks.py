"""Run a short job (model metadata, dataset analysis) on the Qt thread pool.

    task = run_task(fn, on_done, on_error)      # fn(task) -> result, on a pool thread
    task.cancel()                               # fn polls task.cancelled between chunks

Garbage is collected on the GUI thread only (gc_policy.py), never by a pool
thread. `on_done(result)`, `on_error(message)` and `on_progress(text)` always run on
the GUI thread (the Task object lives there and relays its own queued
signals). A cancelled task never calls back, so a slow old job cannot
overwrite a newer answer. `LatestTask` keeps one job of a kind: starting a new
one cancels the old.
"""

from __future__ import annotations

import threading
import traceback
from typing import Any, Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

from app.common.gc_policy import collect_on_gui_thread
from trainer_core.errors import UserError

_live: dict["Task", "_Runnable"] = {}  # keeps tasks and runnables alive until they end


class Task(QObject):
    """One background job; create it on the GUI thread."""

    _result = Signal(object)
    _failure = Signal(str)
    _progress = Signal(str)
    _ended = Signal()

    def __init__(self, fn: Callable[["Task"], Any], on_done, on_error, on_progress=None):
        super().__init__()
        self.fn, self.on_done, self.on_error, self.on_progress = fn, on_done, on_error, on_progress
        self._cancelled = threading.Event()
        self.finished = threading.Event()  # the job returned (pool thread)
        self.ended = False  # ...and its result or failure has been delivered (GUI thread)
        self._result.connect(self._deliver_result)
        self._failure.connect(self._deliver_failure)
        self._progress.connect(self._deliver_progress)
        self._ended.connect(self._forget)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Ask the job to stop and drop its result (thread-safe)."""
        self._cancelled.set()

    def report(self, message: str) -> None:
        """Progress text from the job (call from the pool thread)."""
        if not self.cancelled:
            self._progress.emit(message)

    def execute(self) -> None:
        """Runs on the pool thread."""
        try:
            result = self.fn(self)
        except UserError as e:
            self._failure.emit(e.message)
        except Exception as e:  # a bug, not user input: say what it was, keep the window alive
            self._failure.emit(f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}")
        else:
            self._result.emit(result)
        finally:
            self.finished.set()
            self._ended.emit()

    @Slot(object)
    def _deliver_result(self, result) -> None:
        self.ended = True  # no longer running, already inside on_done
        if not self.cancelled:
            self.on_done(result)

    @Slot(str)
    def _deliver_failure(self, message: str) -> None:
        self.ended = True
        if not self.cancelled:
            self.on_error(message)

    @Slot(str)
    def _deliver_progress(self, message: str) -> None:
        if not self.cancelled and self.on_progress is not None:
            self.on_progress(message)

    @Slot()
    def _forget(self) -> None:  # queued after _result/_failure, so it runs after their delivery
        self.ended = True  # (a job that raised past both, or whose result was dropped)
        _live.pop(self, None)


class _Runnable(QRunnable):
    def __init__(self, task: Task):
        super().__init__()
        self.setAutoDelete(False)  # Python owns it (kept in _live until the task ends)
        self.task = task

    def run(self) -> None:
        self.task.execute()


def run_task(fn: Callable[[Task], Any], on_done: Callable[[Any], None],
             on_error: Callable[[str], None], on_progress: Callable[[str], None] | None = None) -> Task:
    """Start `fn(task)` on the global thread pool; the callbacks run on the GUI thread."""
    collect_on_gui_thread()
    task = Task(fn, on_done, on_error, on_progress)
    runnable = _Runnable(task)
    _live[task] = runnable
    QThreadPool.globalInstance().start(runnable)
    return task


def cancel_all(wait_ms: int = 0) -> bool:
    """Cancel every running task and wait up to `wait_ms` for the pool to drain; True if it did.

    Call it before the application is torn down: a pool thread still running
    Python while the interpreter finalises would wait for the GIL forever
    while Qt waits for that thread.
    """
    for task in list(_live):
        task.cancel()
    return QThreadPool.globalInstance().waitForDone(wait_ms) if wait_ms else not _live


class LatestTask:
    """The newest job of one kind; starting another cancels the previous one."""

    def __init__(self):
        self.task: Task | None = None

    def start(self, fn, on_done, on_error, on_progress=None) -> Task:
        self.cancel()
        self.task = run_task(fn, on_done, on_error, on_progress)
        return self.task

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    @property
    def running(self) -> bool:
        """Until the result has reached on_done / on_error: a job that has returned but whose result is still
        queued for the GUI thread is running (else a caller sees neither a result nor work in progress)."""
        return self.task is not None and not self.task.ended

"""Background jobs (app/common/tasks.py): a task counts as running until its result has reached the GUI thread,
so a caller never sees "not running" and "no result" at once (the Setup tab said "Choose a dataset." for that
moment after a dataset analysis returned)."""

from __future__ import annotations

import app  # noqa: F401  (trainer_core first, PySide6 workaround)
from app.common.tasks import LatestTask

from tests.app_home import studio_home  # noqa: F401  (autouse: fresh app home, no thread left)


def test_a_task_runs_until_its_result_is_delivered(qtbot):
    got = []
    latest = LatestTask()
    task = latest.start(lambda t: 42, got.append, got.append)
    assert task.finished.wait(5)  # the job returned on the pool thread
    assert latest.running and got == []  # its result is still queued for this (GUI) thread's event loop
    qtbot.waitUntil(lambda: got == [42] and not latest.running, timeout=5000)


def test_a_failure_also_ends_the_run_once_delivered(qtbot):
    errors = []

    def fail(task):
        raise RuntimeError("boom")

    latest = LatestTask()
    task = latest.start(fail, lambda result: None, errors.append)
    assert task.finished.wait(5) and latest.running
    qtbot.waitUntil(lambda: len(errors) == 1 and not latest.running, timeout=5000)
    assert "boom" in errors[0]


def test_inside_its_own_callback_the_task_no_longer_runs(qtbot):
    seen = []
    latest = LatestTask()
    latest.start(lambda t: 1, lambda result: seen.append(latest.running), seen.append)
    qtbot.waitUntil(lambda: bool(seen), timeout=5000)
    assert seen == [False]  # a callback that re-enables buttons "when nothing runs" sees the truth

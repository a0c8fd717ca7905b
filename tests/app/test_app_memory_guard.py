"""The window's memory guard: an estimate above the available memory holds Start back with the reason and
offers "Start anyway", which starts the run past the window's check and the run's own pre-start check."""

from __future__ import annotations

import pytest

import app  # noqa: F401  (trainer_core first, PySide6 workaround)
from app.main_window import MainWindow
from trainer_core.config import RunConfig
from trainer_core.training import memory

from tests.app.test_app_setup import ready
from tests.app.test_app_worker import write_data
from tests.app_home import studio_home  # noqa: F401  (autouse: fresh app home, no thread left)

TIMEOUT = 60_000


@pytest.fixture
def window(qtbot, tiny_model_dir, tmp_path):
    config = RunConfig(model=str(tiny_model_dir), data=str(write_data(tmp_path / "data")), run_name="forced",
                       output_dir=str(tmp_path / "runs"), batch_size=2, max_steps=2, num_samples=0)
    window = MainWindow(config)
    qtbot.addWidget(window)
    window.show()
    ready(qtbot, window.setup)
    qtbot.waitUntil(window.start_action.isEnabled, timeout=TIMEOUT)
    yield window
    window.controller.shutdown(30_000)


def test_over_the_limit_start_waits_and_start_anyway_trains(qtbot, window, monkeypatch, tmp_path):
    panel = window.setup.memory_panel
    assert panel.blocker() is None and not panel.start_anyway.isVisible()
    monkeypatch.setattr(memory, "available_memory", lambda: int(panel.estimate.peak * 0.5))
    window.setup.form["batch_size"].editor.setValue(1)  # any change re-estimates
    qtbot.waitUntil(lambda: "⚠" in panel.text(), timeout=TIMEOUT)
    qtbot.waitUntil(lambda: not window.start_action.isEnabled(), timeout=TIMEOUT)
    assert panel.start_anyway.isVisible() and panel.fix_buttons
    assert "Estimated peak memory" in window.blocker_label.toolTip() and "Start anyway" in window.blocker_label.toolTip()
    assert window.start() is False and not window.controller.running  # Start (⌘R) is held back
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT) as finished:
        panel.start_anyway.click()  # the run's own pre-start check (runner.build_run) would refuse without force
    assert finished.args[0]["status"] == "finished" and finished.args[0]["step"] == 2
    assert (tmp_path / "runs" / "forced" / "final").is_dir()
    qtbot.waitUntil(lambda: not window.controller.running, timeout=TIMEOUT)


def test_under_the_limit_again_releases_start(qtbot, window, monkeypatch):
    panel = window.setup.memory_panel
    limit = {"bytes": int(panel.estimate.peak * 0.5)}
    monkeypatch.setattr(memory, "available_memory", lambda: limit["bytes"])
    window.setup.form["batch_size"].editor.setValue(1)
    qtbot.waitUntil(lambda: not window.start_action.isEnabled(), timeout=TIMEOUT)
    limit["bytes"] = int(panel.estimate.peak * 10)
    window.setup.form["batch_size"].editor.setValue(2)
    qtbot.waitUntil(window.start_action.isEnabled, timeout=TIMEOUT)
    assert panel.blocker() is None and not panel.start_anyway.isVisible() and "✓" in panel.text()

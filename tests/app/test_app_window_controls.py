"""The window's controls after a newcomer's walk (issue 25 items 4, 5, 7, 8, 9, 10, 12, 16):
CSV with everything plotted, no crosshair in pictures, resumed ETA, Reveal Logs, the Start
blocker beside Start, Pause, platform shortcuts, Quit and the shortcuts dialog."""

from __future__ import annotations

import csv
import io

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import QLabel

import app  # noqa: F401  (trainer_core first, PySide6 workaround)
from app.actions import keys, shortcut_rows, shortcuts_dialog
from app.status_bar import RunStatus
from app.training.metrics_store import MetricsStore
from trainer_core.logging_setup import log_file

from tests.app.test_app_window import TIMEOUT, window  # noqa: F401  (fixture)
from tests.app_home import studio_home  # noqa: F401  (autouse: fresh app home, no thread left)


def filled_store() -> MetricsStore:
    store = MetricsStore()
    for step in range(1, 5):
        store.add({"type": "train", "step": step, "loss": 2.0 / step, "grad_norm": 1.0, "learning_rate": 1e-3,
                   "tokens": 10, "time": 100.0 + step})
    store.add({"type": "eval", "step": 2, "loss": 1.5, "perplexity": 4.5})
    store.add({"type": "eval", "step": 5, "loss": 1.2})  # the final eval, after the last train record
    store.add_checkpoint({"step": 4, "path": "/runs/r/checkpoints/step-4"})
    return store


def test_csv_holds_eval_emas_and_checkpoints():
    rows = list(csv.DictReader(io.StringIO(filled_store().to_csv(0.5))))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert rows[1]["eval_loss"] == "1.5" and rows[1]["eval_perplexity"] == "4.5" and rows[4]["eval_loss"] == "1.2"
    assert float(rows[1]["loss_ema"]) == 0.5 * 2.0 + 0.5 * 1.0 and rows[3]["tokens_trained"] == "40.0"
    assert rows[3]["checkpoint"].endswith("step-4") and rows[4]["loss"] == ""


def test_crosshair_is_cleared_for_a_new_run_and_left_out_of_pictures(qtbot, window):
    hover = window.training.plots.hovers[0]
    hover.line.setVisible(True)
    hover.label.setVisible(True)
    window.training.plot_image()
    assert not hover.line.isVisible() and not hover.label.isVisible()
    hover.line.setVisible(True)
    window.training.begin_run()
    assert not hover.line.isVisible()


def test_eta_of_a_resumed_run_uses_the_steps_done_since_resuming():
    status = RunStatus(total_steps=100, start_step=50)
    status.started = 1000.0
    status.add({"step": 51, "time": 1010.0})
    assert status.seconds_per_step() == 10.0  # not 10 s / 51 steps


def test_reveal_logs_names_the_log_file(window, monkeypatch):
    import app.actions as actions
    monkeypatch.setattr(actions, "reveal_logs", lambda: False)
    help_menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Help")
    reveal = next(a for a in help_menu.actions() if a.text() == "Reveal Logs")
    assert reveal.toolTip() == str(log_file())
    reveal.trigger()
    assert str(log_file()) in window.status.label.text()


def test_the_reason_start_is_blocked_sits_beside_start(qtbot, window):
    window.resize(1280, 800)
    window.setup.form["learning_rate"].editor.setText("5")
    qtbot.waitUntil(lambda: not window.start_action.isEnabled(), timeout=TIMEOUT)
    label = window.blocker_label
    assert label.full.startswith("Can't start: learning_rate") and label.toolTip() == label.full
    assert label.isVisible() and label.width() > 300


def test_pause_changes_the_button_at_once_and_the_sidebar_says_paused(qtbot, window):
    window.pause_action.setEnabled(True)
    window.pause_action.setChecked(True)
    assert window.pause_action.text() == "Continue" and "Pausing" in window.status.label.text()
    window.run_dir = window.sidebar.root / "window-run"
    window._paused_changed(True)
    assert window.sidebar.paused
    window.pause_action.setChecked(False)
    assert window.pause_action.text() == "Pause"


def test_shortcuts_are_platform_text_and_listed_in_the_help_dialog(window):
    assert keys(window.start_action.shortcut()) == QKeySequence(Qt.CTRL | Qt.Key_R).toString(
        QKeySequence.NativeText)
    assert keys(window.start_action.shortcut()) in window.start_action.toolTip()
    rows = dict(shortcut_rows(window))
    assert rows["File → Quit"] == keys(QKeySequence(Qt.CTRL | Qt.Key_Q))
    assert "Run → Pause" in rows and "View → Chat" in rows and "View → Focus Chat Message" in rows
    dialog = shortcuts_dialog(window)
    table = dialog.layout().itemAt(0).widget()
    assert table.rowCount() == len(rows)


def test_view_shortcuts_switch_panes_and_quit_closes(qtbot, window):
    view = next(a.menu() for a in window.menuBar().actions() if a.text() == "&View")
    next(a for a in view.actions() if a.text() == "Chat").trigger()
    assert window.tabs.currentWidget() is window.chat
    window.quit()
    assert not window.isVisible()


def test_settings_come_back_in_a_new_window(qtbot, window):
    from app.main_window import MainWindow
    from app.settings import last_form_file
    from trainer_core.config import RunConfig
    window.setup.form["learning_rate"].editor.setText("3e-4")
    window.training.log_y.setChecked(True)
    window.training.smoothing.setValue(50)
    window.close()
    saved = RunConfig.load(last_form_file())
    assert saved.learning_rate == 3e-4 and saved.run_name == "window-run"
    again = MainWindow(saved)
    qtbot.addWidget(again)
    assert again.restore() and again.training.log_y.isChecked()
    assert again.training.smoothing.value() == 50 and again.setup.config().learning_rate == 3e-4


def test_hints_name_this_platforms_keys(qtbot):
    """No macOS glyph in a Linux window: the chat's send hint, the Training banner and the compare hint."""
    import sys
    from app.checkpoints.chat_pane import ChatPane
    from app.checkpoints.compare_pane import RunsCompare
    from app.training.pane import TrainingPane
    texts = []
    for cls in (ChatPane, TrainingPane, RunsCompare):
        pane = cls()
        qtbot.addWidget(pane)
        texts += [pane.input.placeholderText()] if cls is ChatPane else []
        texts += [label.text() for label in pane.findChildren(QLabel)]
    hints = " ".join(texts)
    assert "to send" in hints and "press Start" in hints and "to overlay" in hints
    if sys.platform != "darwin":
        assert "⌘" not in hints and "Ctrl+Return to send" in hints and "Ctrl+R" in hints and "Ctrl-click" in hints

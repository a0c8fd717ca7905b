"""A real micro-model run from the main window: Start, live plots, status, Stop, closing mid-run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence

import app  # noqa: F401  (trainer_core first, PySide6 workaround)
from app.main_window import MainWindow
from app.training.metrics_store import MetricsStore, ema
from trainer_core.training.callbacks import read_metrics
from trainer_core.config import RunConfig

from tests.app.test_app_setup import ready
from tests.app.test_app_worker import write_data
from tests.app_home import studio_home  # noqa: F401  (autouse: fresh app home, no thread left)

TIMEOUT = 60_000


@pytest.fixture
def window(qtbot, tiny_model_dir, tmp_path):
    config = RunConfig(model=str(tiny_model_dir), data=str(write_data(tmp_path / "data")), run_name="window-run",
                       output_dir=str(tmp_path / "runs"), batch_size=2, max_steps=8, eval_every=4, save_every=4,
                       learning_rate=1e-3, sample_max_tokens=4)
    window = MainWindow(config)
    qtbot.addWidget(window)
    window.show()
    ready(qtbot, window.setup)
    qtbot.waitUntil(window.start_action.isEnabled, timeout=TIMEOUT)
    yield window
    window.controller.shutdown(30_000)


def test_start_and_stop_shortcuts(window):
    assert window.start_action.shortcut() == QKeySequence(Qt.CTRL | Qt.Key_R)
    assert window.stop_action.shortcut() == QKeySequence(Qt.CTRL | Qt.Key_Period)
    assert not window.stop_action.isEnabled() and not window.pause_action.isEnabled()


def test_the_window_fits_a_small_screen(window):
    # a 13" laptop's window is ~1280 x 800 and users tile it narrower: no row may hold the window wider
    assert window.minimumSizeHint().width() <= 1100 and window.minimumSizeHint().height() <= 700
    names = [action.text() for action in window.training.export_button.menu().actions()]
    assert names == ["Plots as PNG…", "Metrics as CSV…"]


def test_run_from_the_window_fills_plots_and_status(qtbot, window, qtlog):
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT):
        window.start_action.trigger()
        assert window.controller.running and not window.start_action.isEnabled()
        assert window.stop_action.isEnabled() and not window.setup.content.isEnabled()
        assert window.tabs.currentWidget() is window.training
    qtbot.waitUntil(lambda: not window.controller.running, timeout=TIMEOUT)
    assert window.start_action.isEnabled() and window.setup.content.isEnabled()
    assert window.windowTitle() == "Fine-Tune Studio — window-run"
    assert window.status.label.text().startswith("Finished 8 steps")

    plots = window.training.plots
    plots.redraw(force=True)
    x, loss = plots.curves["loss"].getData()
    assert list(x) == [1, 2, 3, 4, 5, 6, 7, 8]
    _, smoothed = plots.curves["loss_ema"].getData()
    assert smoothed == pytest.approx(ema(loss, plots.smoothing))
    assert list(plots.curves["eval"].getData()[0]) == [4, 8]
    assert list(plots.curves["checkpoint"].getData()[0]) == [4, 8]
    assert len(plots.curves["learning_rate"].getData()[0]) == 8

    # The live plots and a reader of metrics.jsonl see the same numbers.
    run_dir = window.run_dir
    from_file = MetricsStore()
    for record in read_metrics(run_dir / "metrics.jsonl"):
        from_file.add(record)
    live = window.training.store
    for key in ("loss", "learning_rate", "grad_norm", "tokens"):
        assert np.array_equal(from_file.series(key), live.series(key), equal_nan=True)
    assert [e["loss"] for e in from_file.evals] == pytest.approx([e["loss"] for e in live.evals])
    assert "Training" in window.training.log.toPlainText()
    log = window.training.log.toPlainText()  # the Log pane says what log.txt says about evals and checkpoints
    assert f"eval step 8: loss {live.evals[-1]['loss']:.4f}" in log and "checkpoint step 4 → " in log
    assert log.count("checkpoint step 4 ") == 1
    assert f"eval loss {live.evals[-1]['loss']:.3f}" in window.status.label.text()
    assert f"train loss {live.series('loss')[-1]:.3f}" in window.status.label.text()
    assert not [r for r in qtlog.records if "thread" in r.message.lower()]


def test_stop_button_saves_a_checkpoint(qtbot, window):
    config = window.setup.config()
    config.max_steps = 100_000
    window.setup.set_config(config)
    qtbot.waitUntil(window.start_action.isEnabled, timeout=TIMEOUT)
    with qtbot.waitSignal(window.controller.metrics, timeout=TIMEOUT, check_params_cb=lambda r: r["type"] == "train"):
        window.start()
    qtbot.waitUntil(lambda: "step" in window.status.label.text() and "ETA" in window.status.label.text(),
                    timeout=TIMEOUT)
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT) as finished:
        window.stop_action.trigger()
    step = finished.args[0]["step"]
    assert finished.args[0]["status"] == "stopped"
    assert (window.run_dir / "checkpoints" / f"step-{step:06d}" / "adapters.safetensors").is_file()
    qtbot.waitUntil(lambda: not window.controller.running, timeout=TIMEOUT)
    assert "Stopped at step" in window.status.label.text()


def test_closing_mid_run_asks_then_stops_cleanly(qtbot, window):
    config = window.setup.config()
    config.max_steps = 100_000
    window.setup.set_config(config)
    qtbot.waitUntil(window.start_action.isEnabled, timeout=TIMEOUT)
    asked = []
    window.confirm_close = lambda: asked.append(True) or False  # "Cancel"
    with qtbot.waitSignal(window.controller.metrics, timeout=TIMEOUT, check_params_cb=lambda r: r["type"] == "train"):
        window.start()
    window.close()
    assert asked and window.isVisible() and window.controller.running

    window.confirm_close = lambda: True
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT) as finished:
        window.close()
        assert window.isVisible()  # stays up (and responsive) until the checkpoint is written
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=TIMEOUT)
    assert not window.controller.running
    result = finished.args[0]
    assert result["status"] == "stopped"
    assert (Path(result["run_dir"]) / "checkpoints" / f"step-{result['step']:06d}").is_dir()


def test_failed_run_shows_the_message_on_its_field(qtbot, window):
    window.setup.form["lora.targets"].editor.setText("self_attn.nope_proj")
    qtbot.waitUntil(window.start_action.isEnabled, timeout=TIMEOUT)
    with qtbot.waitSignal(window.controller.failed, timeout=TIMEOUT):
        window.start()
    qtbot.waitUntil(lambda: not window.controller.running, timeout=TIMEOUT)
    field = window.setup.form["lora.targets"]
    assert "self_attn.nope_proj" in field.message.text() and field.message.isVisible()
    assert window.tabs.currentWidget() is window.setup
    assert window.status.label.property("level") == "error"
    assert not window.start_action.isEnabled()  # until the value changes
    field.editor.setText("self_attn.q_proj")
    qtbot.waitUntil(window.start_action.isEnabled, timeout=TIMEOUT)
    assert field.message.text() == ""


def test_open_a_finished_run_from_disk(qtbot, window):
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT) as finished:
        window.start()
    qtbot.waitUntil(lambda: not window.controller.running, timeout=TIMEOUT)
    run_dir = Path(finished.args[0]["run_dir"])
    window.training.begin_run()
    assert len(window.training.store) == 0
    window.show_run(run_dir)
    assert len(window.training.store) == 8 and len(window.training.store.checkpoints) == 2
    assert "window-run" in window.windowTitle()


def test_sidebar_lists_the_running_run_even_outside_the_runs_folder(qtbot, window):
    """A config whose output_dir is not the window's runs folder (here tmp_path/runs): the run Start begins is still
    listed, as running, and stays listed after it ends."""
    assert window.setup.config().output_dir and Path(window.setup.config().output_dir) != window.sidebar.root
    with qtbot.waitSignal(window.controller.runCreated, timeout=TIMEOUT):
        window.start_action.trigger()
    run_dir = window.run_dir
    qtbot.waitUntil(lambda: window.sidebar.summary(run_dir) is not None, timeout=10_000)
    assert window.sidebar.summary(run_dir).status == "running"
    assert not window.sidebar.message.text().startswith("No runs yet")
    qtbot.waitUntil(lambda: not window.controller.running, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: window.sidebar.summary(run_dir) is not None
                    and window.sidebar.summary(run_dir).status == "finished", timeout=10_000)


def test_start_puts_the_run_in_the_windows_runs_folder(qtbot, window):
    """With no output_dir of its own, the run goes into the runs folder the sidebar shows, and is listed there."""
    config = window.setup.config()
    config.output_dir = ""
    window.setup.set_config(config)
    qtbot.waitUntil(window.start_action.isEnabled, timeout=TIMEOUT)
    with qtbot.waitSignal(window.controller.runCreated, timeout=TIMEOUT):
        window.start_action.trigger()
    assert window.run_dir.parent == window.sidebar.root
    qtbot.waitUntil(lambda: window.sidebar.summary(window.run_dir) is not None, timeout=10_000)
    assert window.sidebar.summary(window.run_dir).status == "running"
    qtbot.waitUntil(lambda: not window.controller.running, timeout=TIMEOUT)

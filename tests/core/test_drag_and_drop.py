"""Files dropped on the window or a field, and Finder's "Open with" requests, select a model or dataset
(app/drop_target.py; issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer_core import resources

from tests.app_home import studio_home  # noqa: F401  (autouse: fresh app home, no pool thread outlives a test)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def drop_window(qtbot):
    from PySide6.QtWidgets import QLineEdit, QMainWindow

    window = QMainWindow()
    window.setCentralWidget(QLineEdit())
    qtbot.addWidget(window)
    return window


KEEP_ALIVE = []  # a drag event only points at its QMimeData: the Python object must outlive the event


def drag_events(path: Path):
    from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent

    mime = QMimeData()
    KEEP_ALIVE.append(mime)
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    point = QPointF(5, 5)
    enter = QDragEnterEvent(point.toPoint(), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    drop = QDropEvent(point, Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    return mime, enter, drop


def test_classify_dropped_paths(tmp_path, tiny_model_dir):
    from app.drop_target import classify

    for name, kind in [("model.gguf", "model"), ("a.jsonl", "data"), ("b.CSV", "data"), ("c.parquet", "data"),
                       ("notes.txt", None)]:
        (tmp_path / name).write_text("x")
        assert classify(tmp_path / name) == kind, name
    assert classify(tiny_model_dir) == "model"
    assert classify(ROOT / "resources" / "demo_data") == "data"
    assert classify(tmp_path) is None and classify(tmp_path / "missing.jsonl") is None


def test_drop_on_the_window_or_a_line_edit_selects_the_file(drop_window, tmp_path):
    from PySide6.QtWidgets import QApplication

    from app.drop_target import install_drop_target

    calls = []
    install_drop_target(drop_window, lambda kind, path: calls.append((kind, path)), file_open=False)
    assert drop_window.acceptDrops()
    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    _, enter, drop = drag_events(data)
    QApplication.sendEvent(drop_window, enter)
    assert enter.isAccepted()
    QApplication.sendEvent(drop_window, drop)
    line_edit = drop_window.centralWidget()
    _, enter_edit, drop_on_edit = drag_events(tmp_path / "train.jsonl")
    QApplication.sendEvent(line_edit, enter_edit)  # Qt delivers a drop to the widget that took the enter
    QApplication.sendEvent(line_edit, drop_on_edit)
    assert calls == [("data", str(data)), ("data", str(data))]
    assert line_edit.text() == ""  # the path selected the dataset instead of being pasted

    other = tmp_path / "notes.txt"
    other.write_text("x")
    _, enter, _ = drag_events(other)
    enter.setAccepted(False)
    QApplication.sendEvent(drop_window, enter)
    assert not enter.isAccepted()


def test_finder_open_request_selects_the_file(drop_window, tmp_path):
    from PySide6.QtGui import QFileOpenEvent
    from PySide6.QtWidgets import QApplication

    from app.drop_target import install_drop_target

    calls = []
    install_drop_target(drop_window, lambda kind, path: calls.append((kind, path)), file_open=True)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    QApplication.sendEvent(QApplication.instance(), QFileOpenEvent(str(model)))
    QApplication.sendEvent(QApplication.instance(), QFileOpenEvent(str(tmp_path / "notes.txt")))
    assert calls == [("model", str(model))]


def test_drop_hook_selects_model_and_data_in_the_main_window(qtbot, tmp_path, monkeypatch, tiny_model_dir):
    """The hook the window owner adds (see app/drop_target.py) against today's Setup pane."""
    monkeypatch.setenv("FINETUNE_STUDIO_HOME", str(tmp_path / "home"))
    from app.drop_target import install_drop_target
    from app.main_window import MainWindow
    from trainer_core.config import RunConfig

    window = MainWindow(RunConfig(model="demo", data=str(resources.demo_dataset())))
    qtbot.addWidget(window)

    def select(kind, path):
        if kind == "model":
            window.setup.model_panel.select(path)
        else:
            window.setup.dataset_panel.path.editor.setText(path)

    install_drop_target(window, select, file_open=False)
    from PySide6.QtWidgets import QApplication
    for path in (tiny_model_dir, resources.demo_dataset("dpo")):
        _, enter, drop = drag_events(path)
        QApplication.sendEvent(window, enter)
        QApplication.sendEvent(window, drop)
    config = window.setup.config()
    assert config.model == str(tiny_model_dir) and config.data == str(resources.demo_dataset("dpo"))
    window.shutdown()  # as quitting the app does: no timer may start an analysis on a pool thread afterwards
    from PySide6.QtCore import QTimer
    assert not [t for t in window.setup.findChildren(QTimer) if t.isActive()]

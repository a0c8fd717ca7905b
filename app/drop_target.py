"""Drop a dataset or a model onto the window (or onto the Dock icon) to select it.

`install_drop_target(window, callback)` makes `window` accept file drops and
calls `callback(kind, path)` with kind "model" (a .gguf file, or a folder with
config.json) or "data" (a .jsonl/.json/.csv/.parquet file, or a folder with a
train file). Anything else is refused while dragging (no drop cursor).
On macOS the same callback receives files opened through Finder: dropped on the
app's icon, or "Open With" (Info.plist declares .jsonl and .gguf documents, and
Qt turns those into QFileOpenEvents on the application).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QEvent, QObject
from PySide6.QtWidgets import QApplication, QWidget

from trainer_core.data.readers import EXTENSIONS

DropCallback = Callable[[str, str], None]


def classify(path: Path | str) -> str | None:
    """"model", "data" or None for a path someone dropped."""
    path = Path(path)
    if path.is_file():
        suffix = path.suffix.lower()
        return "model" if suffix == ".gguf" else "data" if suffix in EXTENSIONS else None
    if path.is_dir():
        if (path / "config.json").is_file():
            return "model"
        if any((path / f"train{extension}").is_file() for extension in EXTENSIONS):
            return "data"
    return None


def dropped_path(mime) -> tuple[str, str] | None:
    """(kind, path) for the first local file or folder in a drag's mime data that classify() accepts."""
    if mime is None or not mime.hasUrls():
        return None
    for url in mime.urls():
        if url.isLocalFile():
            kind = classify(url.toLocalFile())
            if kind is not None:
                return kind, url.toLocalFile()
    return None


class _DragFilter(QObject):
    """Takes drag-and-drop events of the window and of its children that accept drops themselves."""

    def __init__(self, window: QWidget, callback: DropCallback):
        super().__init__(window)
        self._callback = callback

    def eventFilter(self, watched, event) -> bool:
        kind = event.type()
        if kind not in (QEvent.DragEnter, QEvent.DragMove, QEvent.Drop):
            return False
        found = dropped_path(event.mimeData())
        if found is None:
            return False  # not ours: a child may still take plain text
        event.acceptProposedAction()
        if kind == QEvent.Drop:
            self._callback(*found)
        return True


class _FileOpenFilter(QObject):
    """Takes QFileOpenEvents (macOS: Finder opened a document with the app)."""

    def __init__(self, window: QWidget, callback: DropCallback):
        super().__init__(window)
        self._window = window
        self._callback = callback

    def eventFilter(self, watched, event) -> bool:
        if event.type() != QEvent.FileOpen:
            return False
        kind = classify(event.file())
        if kind is None:
            return False
        self._callback(kind, event.file())
        self._window.raise_()
        self._window.activateWindow()
        return True


def install_drop_target(window: QWidget, callback: DropCallback, file_open: bool = sys.platform == "darwin") -> None:
    """Route file drops on `window` (and, with `file_open`, Finder "open" requests) to `callback(kind, path)`.

    Call once the window's widgets exist: children that already accept drops
    (line edits) get the filter too, so a file dropped on them selects it instead
    of pasting its URL. The filters are children of `window` and go with it.
    """
    window.setAcceptDrops(True)
    drag_filter = _DragFilter(window, callback)
    for widget in [window, *window.findChildren(QWidget)]:
        if widget is window or widget.acceptDrops():
            widget.installEventFilter(drag_filter)
    if file_open:
        QApplication.instance().installEventFilter(_FileOpenFilter(window, callback))

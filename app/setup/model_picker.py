"""The model picker: models already on this Mac, and a Hugging Face search, in one dialog.

Opened from the Model group ("Browse models…"). "On this Mac" ("this computer" off macOS) lists recent models,
the Hugging Face cache, LM Studio's folders and Ollama's store (trainer_core.hub.local); "Hugging Face" searches the
Hub (trainer_core.hub.search). An entry that cannot be trained is greyed, with the reason beside it.
Choosing a Hub model that is not downloaded yet downloads it here, with a progress bar (bytes, speed,
time left) and Cancel. Listing, searching and downloading run on the thread pool; `modelChosen(spec)`
gives the model path (a folder, a .gguf, an Ollama blob or a Hugging Face id) to the Model group.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QHBoxLayout, QLabel, QLineEdit, QProgressBar,
                               QPushButton, QTabWidget, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from app.common.keys import HERE
from app.common.tasks import LatestTask
from trainer_core.models import loading as models

SPEC_ROLE = Qt.UserRole
LOCAL_COLUMNS = ["Model", "Size", "Can train?"]
HUB_COLUMNS = ["Model", "Kind", "Parameters", "Weights", "Licence", "Downloads", "Size", "Can train?"]


def size_text(size: int) -> str:
    return "" if not size else f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def count_text(count: int) -> str:
    return "" if not count else f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M"


def progress_text(done: int, total: int, seconds: float) -> str:
    """'120 MB of 1.2 GB · 8.5 MB/s · 2:10 left'."""
    speed = done / seconds if seconds > 0 else 0
    left = (total - done) / speed if speed and total > done else 0
    eta = f" · {int(left // 60)}:{int(left % 60):02d} left" if left else ""
    return f"{size_text(done) or '0 MB'} of {size_text(total) or '?'} · {speed / 1e6:.1f} MB/s{eta}"


class ModelPicker(QDialog):
    modelChosen = Signal(str)
    _downloaded = Signal(int, int)  # bytes done, total: emitted on the pool thread, shown on the GUI thread

    def __init__(self, recent: list[str] = (), parent=None):
        super().__init__(parent)
        self.setWindowTitle("Choose a model")
        self.resize(820, 520)
        self._recent = list(recent)
        self._list_task, self._search_task, self._download_task = LatestTask(), LatestTask(), LatestTask()
        self.finished.connect(lambda _: self._cancel_tasks())
        self._started = 0.0

        self.local = self._tree(LOCAL_COLUMNS)
        self.search_box = QLineEdit()
        self.search_box.setPlaceholderText("Search Hugging Face (e.g. Qwen2.5 0.5B instruct, mlx-community, GGUF)")
        self.search_box.returnPressed.connect(self.search)
        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(self.search)
        self.hub = self._tree(HUB_COLUMNS)
        hub_page = QWidget()
        hub_layout = QVBoxLayout(hub_page)
        row = QHBoxLayout()
        row.addWidget(self.search_box, 1)
        row.addWidget(self.search_button)
        hub_layout.addLayout(row)
        hub_layout.addWidget(self.hub)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.local, f"On {HERE}")
        self.tabs.addTab(hub_page, "Hugging Face")

        self.status = QLabel(f"Looking for models on {HERE}…")
        self.status.setObjectName("secondary")
        self.status.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.cancel_button = QPushButton("Cancel download")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel_download)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Close)
        self.choose_button = self.buttons.button(QDialogButtonBox.Ok)
        self.choose_button.setText("Choose")
        self.choose_button.setEnabled(False)
        self.buttons.accepted.connect(self.choose)
        self.buttons.rejected.connect(self.reject)
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.progress, 1)
        progress_row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(self.status)
        layout.addLayout(progress_row)
        layout.addWidget(self.buttons)
        self._downloaded.connect(self._show_progress)
        self.tabs.currentChanged.connect(lambda _: self._selection_changed())
        self.refresh_local()

    def _tree(self, columns: list[str]) -> QTreeWidget:
        tree = QTreeWidget()
        tree.setHeaderLabels(columns)
        tree.setRootIsDecorated(True)
        tree.setColumnWidth(0, 340)
        tree.itemSelectionChanged.connect(self._selection_changed)
        tree.itemDoubleClicked.connect(lambda item, _: self.choose())
        return tree

    @staticmethod
    def _item(parent, texts: list[str], spec: str, reason: str) -> QTreeWidgetItem:
        item = QTreeWidgetItem(parent, texts + [reason or "yes"])
        item.setData(0, SPEC_ROLE, spec)
        item.setToolTip(0, spec)
        if reason:  # greyed: visible, with the reason, but not choosable
            item.setFlags(item.flags() & ~Qt.ItemIsEnabled & ~Qt.ItemIsSelectable)
            for column in range(item.columnCount()):
                item.setToolTip(column, f"Cannot be trained: {reason}")
        return item

    # ---- On this Mac ------------------------------------------------------------
    def refresh_local(self) -> None:
        from trainer_core.hub.local import find_local_models

        self._list_task.start(lambda task: find_local_models(), self._show_local, self._failed)

    def _show_local(self, found) -> None:
        self.local.clear()
        groups = {}
        if self._recent:
            groups["Recent"] = QTreeWidgetItem(self.local, ["Recent"])
            for spec in self._recent:  # one that is no longer a model (moved, deleted) is greyed with the reason
                self._item(groups["Recent"], [spec, ""], spec, models.local_model_problem(spec) or "")
        for model in found:
            if model.source not in groups:
                groups[model.source] = QTreeWidgetItem(self.local, [model.source])
            self._item(groups[model.source], [model.name, size_text(model.size_bytes)], model.spec, model.reason)
        for group in groups.values():
            group.setFlags(group.flags() & ~Qt.ItemIsSelectable)
            group.setExpanded(True)
        trainable = sum(m.trainable for m in found)
        self.status.setText(f"{len(found)} model(s) found on {HERE}, {trainable} can be trained. "
                            "Greyed ones show why not." if found else
                            "No other models found in the Hugging Face cache, LM Studio or Ollama (the demo model "
                            "is in the Model list). Search Hugging Face, or choose a folder or .gguf file.")

    # ---- Hugging Face --------------------------------------------------------------
    def search(self) -> None:
        from trainer_core.hub.search import search_models

        text = self.search_box.text().strip()
        self.status.setText("Searching Hugging Face…")
        self.search_button.setEnabled(False)
        self._search_task.start(lambda task: (text, search_models(text)), self._show_hub, self._search_failed)

    def _show_hub(self, result) -> None:
        from trainer_core.hub.ids import parse

        text, found = result
        self.search_button.setEnabled(True)
        self.hub.clear()
        if parse(text) is not None and text not in {m.repo_id for m in found}:  # an exact id, even untagged
            self._item(self.hub, [f"{text}  (as typed)"] + [""] * 6, text, "")
        for m in found:
            name = m.repo_id + ("  (gated: accept its licence on huggingface.co)" if m.gated else "")
            self._item(self.hub, [name, m.kind, count_text(m.parameters), m.quantization, m.license,
                                  f"{m.downloads:,}", size_text(m.size_bytes)], m.repo_id, m.reason)
        for column in range(1, len(HUB_COLUMNS)):  # the short columns' text whole ("Downloads")
            self.hub.resizeColumnToContents(column)
        self.status.setText(f"{len(found)} model(s), most downloaded first." if found else "Nothing found.")

    def _search_failed(self, message: str) -> None:
        self.search_button.setEnabled(True)
        self._failed(message)

    # ---- choosing and downloading -------------------------------------------------
    def _current(self) -> QTreeWidgetItem | None:
        tree = self.local if self.tabs.currentIndex() == 0 else self.hub
        items = tree.selectedItems()
        return items[0] if items and items[0].data(0, SPEC_ROLE) else None

    def _selection_changed(self) -> None:
        self.choose_button.setEnabled(self._current() is not None and not self._download_task.running)

    def choose(self) -> None:
        """The selected model: at once when it is on this Mac, after its download when it is not."""
        item = self._current()
        if item is None or self._download_task.running:
            return
        spec = item.data(0, SPEC_ROLE)
        from trainer_core.hub.ids import parse

        if Path(spec).expanduser().exists() or parse(spec) is None:
            self._chosen(spec)
            return
        self._download(spec)

    def _download(self, spec: str) -> None:
        from trainer_core.hub.download import resolve

        self._started = time.monotonic()
        self.status.setText(f"Downloading {spec}…")
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.cancel_button.setVisible(True)
        self.choose_button.setEnabled(False)

        def fetch(task):
            def progress(done, total):
                if not task.cancelled:  # a cancelled download's dialog may be gone
                    self._downloaded.emit(done, total)

            resolve(spec, progress=progress, cancel=lambda: task.cancelled)
            return spec

        self._download_task.start(fetch, self._chosen, self._download_failed)

    def _show_progress(self, done: int, total: int) -> None:
        if self.progress.isHidden():  # cancelled: late reports are dropped
            return
        scale = max(1, total // 1_000_000)  # QProgressBar holds ints: count in MB for big files
        self.progress.setRange(0, max(1, total // scale))
        self.progress.setValue(min(done, total) // scale)
        self.status.setText(progress_text(done, total, time.monotonic() - self._started))

    def _end_download(self) -> None:
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        self._selection_changed()

    def cancel_download(self) -> None:
        self._download_task.cancel()
        self._end_download()
        self.status.setText("Download cancelled. Files already complete stay in the Hugging Face cache.")

    def _download_failed(self, message: str) -> None:
        self._end_download()
        self._failed(message)

    def _chosen(self, spec: str) -> None:
        self._end_download()
        self.modelChosen.emit(spec)
        self.accept()

    def _failed(self, message: str) -> None:
        self.status.setText(message)

    def _cancel_tasks(self) -> None:
        for task in (self._list_task, self._search_task, self._download_task):
            task.cancel()

"""Search box for Hugging Face datasets (Setup → Dataset → Choose… → Hugging Face dataset…).

Typing searches the Hub (`hub.datasets.search_datasets`: most downloaded first) on the thread pool,
a moment after the last key; picking a result (double-click or OK) sets `chosen` to its id, which
the panel writes into the Data field (the id is downloaded when the data is analysed).
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QLineEdit, QListWidget, QListWidgetItem, QVBoxLayout

from app.common.tasks import LatestTask
from trainer_core.hub.datasets import search_datasets

TYPING_PAUSE_MS = 400


class DatasetSearchDialog(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Hugging Face dataset")
        self.chosen = ""
        self._task = LatestTask()
        self.finished.connect(self._task.cancel)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search datasets on Hugging Face, e.g. alpaca")
        self.results = QListWidget()
        self.status = QLabel("")
        self.status.setObjectName("secondary")
        self.status.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.buttons.accepted.connect(self._pick)
        self.buttons.rejected.connect(self.reject)
        self._timer = QTimer(self, singleShot=True, interval=TYPING_PAUSE_MS)
        self._timer.timeout.connect(self._start_search)
        self.search.textChanged.connect(self._timer.start)
        self.results.itemDoubleClicked.connect(self._pick)
        layout = QVBoxLayout(self)
        for widget in (self.search, self.results, self.status, self.buttons):
            layout.addWidget(widget)
        self.resize(520, 420)
        self._start_search()

    def _start_search(self) -> None:
        text = self.search.text()
        self.status.setText("Searching…")
        self._task.start(lambda task: search_datasets(text), self._show, self._failed)

    def _show(self, found) -> None:
        self.results.clear()
        for dataset in found:
            item = QListWidgetItem(f"{dataset.repo_id}    {dataset.downloads:,} downloads")
            item.setData(Qt.UserRole, dataset.repo_id)
            self.results.addItem(item)
        self.status.setText("" if found else "No dataset matches.")
        if found:
            self.results.setCurrentRow(0)

    def _failed(self, message: str) -> None:
        self.results.clear()
        self.status.setText(message)

    def _pick(self, *_) -> None:
        item = self.results.currentItem()
        if item is not None:
            self.chosen = item.data(Qt.UserRole)
            self.accept()

"""The Checkpoints tab's right side: the sample prompts and what one checkpoint answered.

A run answers its sample prompts at every checkpoint (trainer_core/samples.py):
`<checkpoint>/samples.json`, or the run's `samples` events in metrics.jsonl for
a checkpoint without the file. `SamplesView.show_samples(title, samples)` shows
them as a two-column table (prompt, answer), rows as tall as their text.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

NO_SAMPLES = ("No samples for this checkpoint. A run answers its sample prompts at every checkpoint "
              "(config: num_samples, sample_prompts, sample_max_tokens).")


def printable(text: str) -> str:
    """`text` with control characters (a barely trained model emits them) shown as �."""
    return "".join(c if c.isprintable() or c in "\n\t" else "\ufffd" for c in str(text))


class SamplesView(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.title = QLabel("Samples")
        self.title.setObjectName("sectionTitle")
        self.title.setWordWrap(True)
        self.note = QLabel("")
        self.note.setObjectName("secondary")
        self.note.setWordWrap(True)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(("Prompt", "Answer"))
        self.table.verticalHeader().setVisible(False)
        self.table.setWordWrap(True)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.NoSelection)
        self.table.setVerticalScrollMode(QAbstractItemView.ScrollPerPixel)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.Interactive)
        header.setSectionResizeMode(1, QHeaderView.Stretch)
        header.sectionResized.connect(lambda *_: self.table.resizeRowsToContents())
        self.table.setColumnWidth(0, 170)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.note)
        self.show_samples("Samples", None)

    def show_samples(self, title: str, samples: list[dict] | None) -> None:
        """Show `samples` ([{"prompt", "answer"}]) under `title`; None or [] says there are none."""
        self.title.setText(title)
        samples = samples or []
        self.table.setRowCount(len(samples))
        for row, sample in enumerate(samples):
            for column, key in enumerate(("prompt", "answer")):
                item = QTableWidgetItem(printable(sample.get(key, "")))
                item.setTextAlignment(Qt.AlignLeft | Qt.AlignTop)
                item.setToolTip(printable(sample.get(key, "")))
                self.table.setItem(row, column, item)
        self.table.resizeRowsToContents()
        self.note.setText("Greedy answers, written when the checkpoint was saved." if samples else NO_SAMPLES)
        self.table.setVisible(bool(samples))

    def texts(self) -> list[tuple[str, str]]:
        """(prompt, answer) of every row shown (for tests and copying)."""
        return [(self.table.item(r, 0).text(), self.table.item(r, 1).text()) for r in range(self.table.rowCount())]

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.table.resizeRowsToContents()

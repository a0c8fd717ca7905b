"""The Checkpoints tab's right side: the sample prompts and what one checkpoint answered.

A run answers its sample prompts at every checkpoint (trainer_core/samples.py):
`<checkpoint>/samples.json`, or the run's `samples` events in metrics.jsonl for
a checkpoint without the file. `SamplesView.show_samples(title, samples)` shows
them as a two-column table (prompt, answer), rows as tall as their wrapped text, and the selected row whole
(selectable, to copy) in the detail box under it: a long answer is never cut.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (QAbstractItemView, QHeaderView, QLabel, QPlainTextEdit, QSplitter, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

NO_SAMPLES = ("No samples for this checkpoint. A run answers its sample prompts at every checkpoint "
              "(config: num_samples, sample_prompts, sample_max_tokens).")


def printable(text: str) -> str:
    """`text` with control characters (a barely trained model emits them) shown as �."""
    return "".join(c if c.isprintable() or c in "\n\t" else "\ufffd" for c in str(text))


class SamplesView(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.samples: list[dict] = []  # what the table shows, control characters replaced
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
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.currentCellChanged.connect(lambda row, *_: self._show_detail(row))
        self.table.setVerticalScrollMode(QAbstractItemView.ScrollPerPixel)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.Interactive)
        header.setSectionResizeMode(1, QHeaderView.Stretch)
        # rows are fitted again once the layout has settled (a scroll bar that appears narrows the answers)
        self._fit = QTimer(self, singleShot=True, interval=0, timeout=self.table.resizeRowsToContents)
        header.sectionResized.connect(lambda *_: self._fit.start())
        self.table.setColumnWidth(0, 170)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        self.detail = QPlainTextEdit()  # the selected sample, whole
        self.detail.setReadOnly(True)
        self.detail.setPlaceholderText("Select a sample to read it whole.")
        split = QSplitter(Qt.Vertical)
        split.addWidget(self.table)
        split.addWidget(self.detail)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        layout.addWidget(split, 1)
        layout.addWidget(self.note)
        self.show_samples("Samples", None)

    def show_samples(self, title: str, samples: list[dict] | None) -> None:
        """Show `samples` ([{"prompt", "answer"}]) under `title`; None or [] says there are none."""
        self.title.setText(title)
        samples = samples or []
        self.samples = [{k: printable(s.get(k, "")) for k in ("prompt", "answer")} for s in samples]
        self.table.setRowCount(len(samples))
        for row, sample in enumerate(samples):
            for column, key in enumerate(("prompt", "answer")):
                item = QTableWidgetItem(printable(sample.get(key, "")))
                item.setTextAlignment(Qt.AlignLeft | Qt.AlignTop)
                item.setToolTip(printable(sample.get(key, "")))
                self.table.setItem(row, column, item)
        self.table.resizeRowsToContents()
        self._fit.start()
        self.note.setText("Greedy answers, written when the checkpoint was saved; click a row to read it whole."
                          if samples else NO_SAMPLES)
        self.table.setVisible(bool(samples))
        self.detail.setVisible(bool(samples))
        if samples and self.table.currentRow() < 0:
            self.table.setCurrentCell(0, 1)
        self._show_detail(self.table.currentRow())

    def _show_detail(self, row: int) -> None:
        sample = self.samples[row] if 0 <= row < len(self.samples) else None
        self.detail.setPlainText(f"Prompt:\n{sample['prompt']}\n\nAnswer:\n{sample['answer']}" if sample else "")

    def texts(self) -> list[tuple[str, str]]:
        """(prompt, answer) of every row shown (for tests and copying)."""
        return [(self.table.item(r, 0).text(), self.table.item(r, 1).text()) for r in range(self.table.rowCount())]

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit.start()

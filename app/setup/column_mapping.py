"""The column-mapping dialog and the `data_columns` field it edits.

When no format fits a dataset (or the user wants other columns), the dialog lists the first
record's columns with a sample value and a choice of field for each (prompt, completion,
answer, system, messages, chosen, rejected, text, or nothing). It shows the kind the choice
maps to (`formats.mapped_kind`) and accepts only a mapping that names one, each field once.
The result is the RunConfig's `data_columns` ({field: column}), so the CLI reads the same
mapping from the saved config.toml.
"""

from __future__ import annotations

import json

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QLabel, QPushButton, QTableWidget,
                               QTableWidgetItem, QVBoxLayout)

from app.common.form import BoundField
from trainer_core.config import DATA_COLUMN_FIELDS
from trainer_core.data.formats import mapped_kind

SAMPLE_CHARS = 80
NONE = "—"


def sample_text(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = text.replace("\n", " ↵ ")
    return text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS - 1] + "…"


class ColumnMappingDialog(QDialog):
    """Which column is which field; `mapping()` is the chosen {field: column}."""

    def __init__(self, record: dict, mapping: dict[str, str], parent=None):
        super().__init__(parent)
        self.setWindowTitle("Map the dataset's columns")
        self.columns = list(record)
        self.table = QTableWidget(len(self.columns), 3)
        self.table.setHorizontalHeaderLabels(["column", "first record", "is the"])
        self.table.verticalHeader().setVisible(False)
        by_column = {column: name for name, column in mapping.items()}
        self.choices: list[QComboBox] = []
        for row, column in enumerate(self.columns):
            self.table.setItem(row, 0, QTableWidgetItem(column))
            self.table.setItem(row, 1, QTableWidgetItem(sample_text(record[column])))
            combo = QComboBox()
            combo.addItems([NONE, *DATA_COLUMN_FIELDS])
            combo.setCurrentText(by_column.get(column, NONE))
            combo.currentTextChanged.connect(self._check)
            self.table.setCellWidget(row, 2, combo)
            self.choices.append(combo)
        self.table.resizeColumnsToContents()
        self.verdict = QLabel()
        self.verdict.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Say which column holds what. Columns left at — are ignored."))
        layout.addWidget(self.table, 1)
        layout.addWidget(self.verdict)
        layout.addWidget(self.buttons)
        self.resize(640, 360)
        self._check()

    def mapping(self) -> dict[str, str]:
        return {combo.currentText(): column for combo, column in zip(self.choices, self.columns)
                if combo.currentText() != NONE}

    def problem(self) -> str:
        """Why the current choice can't be used, or ''."""
        chosen = [combo.currentText() for combo in self.choices if combo.currentText() != NONE]
        twice = sorted({name for name in chosen if chosen.count(name) > 1})
        if twice:
            return f"'{twice[0]}' is chosen for two columns; choose it once."
        if mapped_kind(self.mapping()) is None:
            return "Choose at least the prompt (+ completion or answer), the messages, the text, or chosen + rejected."
        return ""

    def _check(self) -> None:
        problem = self.problem()
        self.verdict.setText(problem or f"These records will be trained as {mapped_kind(self.mapping())} data.")
        self.buttons.button(QDialogButtonBox.Ok).setEnabled(not problem)


class ColumnsButton(QPushButton):
    """The `data_columns` editor: shows the mapping, opens the dialog (`ask` gives the record)."""

    edited = Signal()

    def __init__(self, ask_record, parent=None):
        super().__init__(parent)
        self._ask_record = ask_record
        self._mapping: dict[str, str] = {}
        self.clicked.connect(self.choose)
        self.set_mapping({})

    def mapping(self) -> dict[str, str]:
        return dict(self._mapping)

    def set_mapping(self, mapping: dict[str, str]) -> None:
        self._mapping = dict(mapping or {})
        shown = ", ".join(f"{k}={v}" for k, v in self._mapping.items())
        self.setText(f"Columns: {shown}" if shown else "Columns…")
        self.setToolTip("Which column holds the prompt, the answer, … (data_columns). Empty: detect the format.")

    def choose(self) -> None:
        """Open the dialog on the dataset's first record; a change emits `edited`."""
        record = self._ask_record()
        if record is None:
            return
        dialog = ColumnMappingDialog(record, self._mapping, self)
        if dialog.exec() == QDialog.Accepted and dialog.mapping() != self._mapping:
            self.set_mapping(dialog.mapping())
            self.edited.emit()


def columns_field(ask_record) -> BoundField:
    button = ColumnsButton(ask_record)
    return BoundField("data_columns", button, button.mapping, button.set_mapping, button.edited,
                      "Which column holds what (data_columns); empty = detect the format.")

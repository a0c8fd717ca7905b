"""GRPO rewards: a checkable list of the built-in reward functions (what each scores, what the data
must hold, its weight) plus "Custom Python file…", bound to grpo.rewards / reward_weights / reward_file.

The reward file is always shown by path while set (a preset cannot set it invisibly); its functions
are listed by reading the file's source with `ast`, never by importing it. `chosen_here` holds the
files picked with this window's dialog: Start asks before running any other file's code
(main_window's `confirm_reward_file`).
"""

from __future__ import annotations

import ast
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QFileDialog, QHBoxLayout, QHeaderView, QLabel, QPushButton, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from app import settings
from app.common.form import BoundField, format_float
from trainer_core.config import RunConfig
from trainer_core.errors import UserError
from trainer_core.methods.rewards import BUILTINS, DESCRIPTIONS

NAME, WEIGHT, SCORES, NEEDS = range(4)


def file_functions(path: str) -> list[str]:
    """Top-level public function names defined in a Python file (read, not run); [] if unreadable."""
    try:
        tree = ast.parse(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and not n.name.startswith("_")]


class RewardPicker(QWidget):
    """The table of rewards and the reward-file row; `changed` fires on any edit."""

    changed = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.chosen_here: set[str] = set()
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["reward", "weight", "scores", "data needs"])
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        header.setSectionResizeMode(SCORES, QHeaderView.Stretch)
        header.setSectionResizeMode(NEEDS, QHeaderView.Interactive)
        header.resizeSection(NEEDS, 130)
        self.table.setWordWrap(False)  # one line a reward; the full text is in each cell's tooltip
        self.table.setTextElideMode(Qt.ElideRight)
        self.table.setMinimumWidth(320)
        self.table.setToolTip("Tick the rewards to use; a completion's reward is the weighted sum.")
        self.file_label = QLabel("")
        self.file_label.setObjectName("secondary")
        self.file_label.setWordWrap(True)
        self.file_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        choose = QPushButton("Custom Python file…")
        choose.setToolTip("A .py file whose functions score completions (its code runs when the run starts).")
        choose.clicked.connect(self.choose_file)
        self.clear_button = QPushButton("Remove file")
        self.clear_button.clicked.connect(lambda: self.set_file(""))
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(choose)
        row.addWidget(self.clear_button)
        row.addWidget(self.file_label, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        layout.addLayout(row)
        self._file = ""
        self._fill([], [])
        self.table.itemChanged.connect(lambda *_: self.changed.emit())

    # ---- the table --------------------------------------------------------------------
    def _fill(self, names: list[str], weights: list[float]) -> None:
        """Built-ins, then the reward file's functions, then any other chosen name; `names` ticked."""
        chosen = dict(zip(names, list(weights) or [1.0] * len(names)))
        rows = list(BUILTINS) + [f for f in file_functions(self._file) if f not in BUILTINS] if self._file \
            else list(BUILTINS)
        rows += [n for n in names if n not in rows]
        order = [n for n in names if n in rows] + [n for n in rows if n not in names]
        blocked = self.table.blockSignals(True)
        self.table.setRowCount(len(order))
        for r, name in enumerate(order):
            item = QTableWidgetItem(name)
            item.setFlags(Qt.ItemIsUserCheckable | Qt.ItemIsEnabled)
            item.setCheckState(Qt.Checked if name in chosen else Qt.Unchecked)
            weight = QTableWidgetItem(format_float(float(chosen.get(name, 1.0))))
            weight.setToolTip("This reward's weight in the sum")
            if name in DESCRIPTIONS:
                scores, needs = DESCRIPTIONS[name]
            elif self._file and name in file_functions(self._file):
                scores, needs = f"your function in {Path(self._file).name}", "what your function reads"
            else:
                scores, needs = "not a built-in: define it in a custom Python file", "—"
            for column, value in ((NAME, item), (WEIGHT, weight), (SCORES, QTableWidgetItem(scores)),
                                  (NEEDS, QTableWidgetItem(needs))):
                if column in (SCORES, NEEDS):
                    value.setFlags(Qt.ItemIsEnabled)
                    value.setToolTip(value.text())
                self.table.setItem(r, column, value)
        rows_height = sum(self.table.rowHeight(r) for r in range(self.table.rowCount()))
        self.table.setFixedHeight(rows_height + self.table.horizontalHeader().height() + 4)
        self.table.blockSignals(blocked)

    def names(self) -> list[str]:
        return [self.table.item(r, NAME).text() for r in range(self.table.rowCount())
                if self.table.item(r, NAME).checkState() == Qt.Checked]

    def set_names(self, names: list[str]) -> None:
        self._fill(list(names), self.weights_of(names))

    def weights(self) -> list[float]:
        """The ticked rewards' weights; [] when all are 1 (RunConfig's "all 1.0")."""
        weights = []
        for r in range(self.table.rowCount()):
            if self.table.item(r, NAME).checkState() == Qt.Checked:
                text = self.table.item(r, WEIGHT).text().strip()
                try:
                    weights.append(float(text))
                except ValueError:
                    raise ValueError(f"grpo.reward_weights: the weight of {self.table.item(r, NAME).text()} must "
                                     f"be a number (got {text!r}).") from None
        return [] if all(w == 1.0 for w in weights) else weights

    def weights_of(self, names) -> list[float]:
        current = {self.table.item(r, NAME).text(): self.table.item(r, WEIGHT).text()
                   for r in range(self.table.rowCount())}
        try:
            return [float(current.get(n, 1.0)) for n in names]
        except ValueError:
            return []

    def set_weights(self, weights: list[float]) -> None:
        self._fill(self.names(), list(weights))

    # ---- the reward file -------------------------------------------------------------
    def file(self) -> str:
        return self._file

    def set_file(self, path: str) -> None:
        names, weights = self.names(), self.weights_of(self.names())
        self._file = str(path or "")
        self.file_label.setText(f"Reward file: {self._file} — its code runs when the run starts" if self._file
                                else "No reward file: built-in rewards only.")
        self.file_label.setToolTip(self._file)
        self.clear_button.setVisible(bool(self._file))
        self._fill(names, weights)
        self.changed.emit()

    def choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a Python file with reward functions",
                                              settings.dialog_folder("rewards"), "Python (*.py)")
        if path:
            settings.remember_folder("rewards", path)
            self.choose(path)

    def choose(self, path: str) -> None:
        """The user picked `path` in this window: it may run without asking."""
        self.trust(path)
        self.set_file(path)

    def trust(self, path: str) -> None:
        """`path` may run without asking again in this window (picked here, or the user said yes)."""
        self.chosen_here.add(str(Path(path).expanduser().resolve()))

    def allows(self, config: RunConfig, confirm) -> bool:
        """A GRPO reward file is code: True when `config` runs none, one chosen in this window, or one the user
        agrees to run now (`confirm(path) -> bool`, the window's dialog)."""
        path = config.grpo.reward_file if config.method == "grpo" else ""
        if self.needs_confirmation(path):
            if not confirm(path):
                return False
            self.trust(path)
        return True

    def allows_run(self, run_dir: Path, confirm) -> bool:
        """`allows` for the config a run folder holds (resume runs its reward file too)."""
        try:
            config = RunConfig.load(run_dir / "config.toml")
        except UserError:
            return True  # not a run folder: resume reports that itself
        return self.allows(config, confirm)

    def needs_confirmation(self, path: str) -> bool:
        return bool(path) and str(Path(path).expanduser().resolve()) not in self.chosen_here


def reward_fields(picker: RewardPicker) -> list[BoundField]:
    """grpo.rewards, grpo.reward_weights and grpo.reward_file, all edited through `picker`."""
    return [
        BoundField("grpo.rewards", picker.table, picker.names, picker.set_names, picker.changed),
        BoundField("grpo.reward_weights", picker.table.viewport(), picker.weights, picker.set_weights, picker.changed),
        BoundField("grpo.reward_file", picker, picker.file, picker.set_file, picker.changed),
    ]

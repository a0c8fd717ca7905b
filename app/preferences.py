"""Preferences: where runs live (the runs root), kept in the GUI settings (settings.py).

`runs_root()` is the saved folder, or trainer_core.paths.default_runs_root()
(platformdirs) when none was chosen. New runs without an output_dir go there,
and the run history lists it.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                               QVBoxLayout)

from app.settings import settings
from trainer_core.paths import default_runs_root

RUNS_ROOT_KEY = "runs_root"


def runs_root() -> Path:
    value = settings().value(RUNS_ROOT_KEY, "")
    return Path(str(value)).expanduser() if value else default_runs_root()


def set_runs_root(folder: Path | str | None) -> Path:
    """Save `folder` as the runs root (None or "" goes back to the default); return the root in effect."""
    store = settings()
    store.setValue(RUNS_ROOT_KEY, str(folder) if folder else "")
    store.sync()
    return runs_root()


class PreferencesDialog(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Preferences")
        self.root = QLineEdit(str(runs_root()))
        self.root.setMinimumWidth(420)
        browse = QPushButton("Choose…")
        browse.clicked.connect(self._browse)
        reset = QPushButton("Default")
        reset.setToolTip(str(default_runs_root()))
        reset.clicked.connect(lambda: self.root.setText(str(default_runs_root())))
        row = QHBoxLayout()
        row.addWidget(self.root, 1)
        row.addWidget(browse)
        row.addWidget(reset)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Runs folder (new runs are written here; the sidebar lists it)"))
        layout.addLayout(row)
        layout.addWidget(buttons)

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Runs folder",
                                                self.root.text().strip() or str(default_runs_root()))
        if path:
            self.root.setText(path)

    def accept(self) -> None:
        text = self.root.text().strip()
        set_runs_root("" if not text or Path(text) == default_runs_root() else text)
        super().accept()

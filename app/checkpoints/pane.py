"""The Checkpoints tab: the checkpoints of one run and what to do with them.

`pane.set_run(run_dir)` lists `checkpoints/step-*` (and `final/`): step, time,
train/eval loss at that step, size on disk, ★ on the best eval loss. The list
is read on the task pool (plain files, no MLX) and again whenever the folder
changes (QFileSystemWatcher) or `checkpoint_saved(info)` / `samples_written(record)`
reports a new checkpoint or its samples. On the right, the sample prompts and what
the selected checkpoint (else the newest) answered (app/samples_view.py).
`select_step(step)` (a click on a loss-curve marker) selects a checkpoint, once listed.

Actions: Chat (chatRequested), Compare (compareRequested), Resume from here
(resumeRequested), Export ▾ (export_menu.py: mlx-lm / fused / MLX 8/4-bit / PEFT / GGUF, Ollama and
LM Studio with a GGUF type picker, on the task pool with a progress bar; what the selected checkpoint
cannot be exported as is greyed out with the reason as tooltip, checked on the task pool), Push to Hugging
Face Hub… (push_dialog.py: repo, private, adapters / fused / GGUF; uploaded with a model card, same progress bar),
Reveal, Delete (asks; the latest or the best asks a second time). Export and Push run in export_actions.py.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from PySide6.QtCore import QFileSystemWatcher, Qt, QTimer, Signal
from PySide6.QtWidgets import (QAbstractItemView, QHBoxLayout, QHeaderView, QLabel, QMessageBox,
                               QProgressBar, QPushButton, QSplitter, QTableWidget, QTableWidgetItem, QToolButton,
                               QVBoxLayout, QWidget)

from app.checkpoints.checkpoint_list import CheckpointRow, human_size, list_checkpoints
from app.checkpoints.export_actions import ExportActions
from app.checkpoints.export_menu import ExportMenu
from app.checkpoints.push_dialog import ask_push
from app.common.reveal import reveal_in_file_manager
from app.checkpoints.samples_view import SamplesView
from app.common.tasks import LatestTask

COLUMNS = ("Step", "Saved", "Train loss", "Eval loss", "Size", "Best")


def _item(text: str, align=Qt.AlignRight | Qt.AlignVCenter) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setTextAlignment(align)
    item.setFlags(item.flags() & ~Qt.ItemIsEditable)
    return item


class CheckpointsPane(ExportActions, QWidget):
    """Signals carry paths as str: chatRequested(run_dir, checkpoint), compareRequested(run_dir, [checkpoints]),
    resumeRequested(run_dir, checkpoint), selectionChanged(checkpoint or ""), exported(out folder)."""

    chatRequested = Signal(str, str)
    compareRequested = Signal(str, list)
    resumeRequested = Signal(str, str)
    selectionChanged = Signal(str)
    listed = Signal(int)
    exported = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.run_dir: Path | None = None
        self.rows: list[CheckpointRow] = []
        self.can_resume = True  # the window clears it while a run trains
        self._wanted_step: int | None = None  # select_step before the listing arrived
        # until the user picks a row, the newest checkpoint is selected (and follows new ones), so the
        # buttons work on it right away
        self._follow_newest = True
        self._auto_selecting = False
        self.confirm = self._ask  # replaceable (tests answer without a dialog)
        self.choose_export_folder = self._choose_folder
        self._list_task = LatestTask()
        self._choices_task = LatestTask()  # what the selected checkpoint can be exported as
        self._export_task = None
        self._export_summary = ""  # the last progress message of the running export
        self.destroyed.connect(self._list_task.cancel)  # no late answer for a deleted widget
        self.destroyed.connect(self._choices_task.cancel)
        self._watcher = QFileSystemWatcher(self)
        self._watcher.directoryChanged.connect(lambda _: self._reload_timer.start())
        self._reload_timer = QTimer(self, singleShot=True, interval=300, timeout=self.reload)

        self.title = QLabel("Select a run in the sidebar to see its checkpoints.")
        self.title.setObjectName("banner")
        self.title.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeToContents)  # "Saved" on one line
        self.table.setAlternatingRowColors(True)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.table.doubleClicked.connect(lambda _: self.chat())

        self.chat_button = QPushButton("Chat")
        self.chat_button.setToolTip("Talk to the base model with this checkpoint applied")
        self.chat_button.clicked.connect(self.chat)
        self.compare_button = QPushButton("Compare")
        self.compare_button.setToolTip("Answer one prompt with the base model and up to 3 selected checkpoints")
        self.compare_button.clicked.connect(self.compare)
        self.resume_button = QPushButton("Resume from here")
        self.resume_button.setToolTip("Continue the run exactly from this checkpoint")
        self.resume_button.clicked.connect(self.resume)
        self.export_button = QToolButton()
        self.export_button.setText("Export")
        self.export_button.setPopupMode(QToolButton.InstantPopup)
        self.export_menu = ExportMenu(self.export_button)
        self.export_menu.chosen.connect(lambda fmt, options: self.export(fmt, **options))
        self.export_menu.pushRequested.connect(self.push)
        self.ask_push = lambda checkpoint, adapters: ask_push(self, checkpoint, adapters)  # tests answer directly
        self.export_button.setMenu(self.export_menu)
        self.reveal_button = QPushButton("Reveal")
        self.reveal_button.clicked.connect(lambda: self.current() and reveal_in_file_manager(self.current()))
        self.delete_button = QPushButton("Delete…")
        self.delete_button.clicked.connect(lambda: self.current() and self.delete(self.current()))
        actions = QHBoxLayout()
        for widget in (self.chat_button, self.compare_button, self.resume_button, self.export_button,
                       self.reveal_button):
            actions.addWidget(widget)
        actions.addStretch(1)
        actions.addWidget(self.delete_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setVisible(False)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextSelectableByMouse)

        self.samples = SamplesView()
        self.splitter = QSplitter(Qt.Horizontal)
        self.splitter.addWidget(self.table)
        self.splitter.addWidget(self.samples)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setChildrenCollapsible(False)

        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.splitter, 1)
        layout.addLayout(actions)
        layout.addWidget(self.progress)
        layout.addWidget(self.message)
        self._update_buttons()

    # ---- listing -------------------------------------------------------------------------
    def set_run(self, run_dir: Path | None) -> None:
        self.run_dir = Path(run_dir) if run_dir else None
        self._wanted_step = None  # a step asked of the previous run
        self._follow_newest = True
        if self._watcher.directories():
            self._watcher.removePaths(self._watcher.directories())
        if self.run_dir is not None:
            for folder in (self.run_dir, self.run_dir / "checkpoints"):
                if folder.is_dir():
                    self._watcher.addPath(str(folder))
        self.rows = []
        self._fill()
        self.reload()

    def checkpoint_saved(self, info: dict) -> None:
        """The training worker wrote a checkpoint: list it (if it belongs to the shown run)."""
        path = Path(str(info.get("path", "")))
        if self.run_dir is not None and self.run_dir in path.parents:
            checkpoints = str(self.run_dir / "checkpoints")
            if checkpoints not in self._watcher.directories():
                self._watcher.addPath(checkpoints)
            self.reload()

    def samples_written(self, record: dict) -> None:
        """A `samples` event of the training run: show the new answers (if it is the shown run)."""
        self.checkpoint_saved({"path": record.get("checkpoint", "")})

    def reload(self) -> None:
        if self.run_dir is None:
            self._list_task.cancel()
            return
        run_dir = self.run_dir
        self._list_task.start(lambda task: list_checkpoints(run_dir), self._listed,
                              lambda message: self.message.setText(f"Could not list the checkpoints: {message}"))

    def _listed(self, rows: list[CheckpointRow]) -> None:
        self.rows = rows
        self._fill()
        if self._wanted_step is not None:
            if self._select_listed(self._wanted_step):
                self._wanted_step = None  # else it is not written yet (a listing begun before): the next one
        elif rows and (self._follow_newest or not self.selected()):
            self._auto_selecting = True
            try:
                self.table.selectRow(len(rows) - 1)
            finally:
                self._auto_selecting = False
            self._follow_newest = True
        self.listed.emit(len(rows))

    def _fill(self) -> None:
        selected = set(self.selected())
        self.table.blockSignals(True)
        self.table.setRowCount(len(self.rows))
        for i, row in enumerate(self.rows):
            loss = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
            step = "final" if row.path.name == "final" else f"{row.step:,}"
            cells = (step, time.strftime("%H:%M:%S · %b %d", time.localtime(row.saved)), loss(row.train_loss),
                     loss(row.eval_loss), human_size(row.size_bytes), "★ best" if row.best else "")
            for column, text in enumerate(cells):
                item = _item(text, align=Qt.AlignCenter if column == 5 else Qt.AlignRight | Qt.AlignVCenter)
                item.setData(Qt.UserRole, str(row.path))
                item.setToolTip(str(row.path))
                self.table.setItem(i, column, item)
            if row.path in selected:
                self.table.selectRow(i)
        self.table.blockSignals(False)
        if self.run_dir is None:
            self.title.setText("Select a run in the sidebar to see its checkpoints.")
        else:
            self.title.setText(f"{self.run_dir.name} · {len(self.rows)} checkpoint(s) · {self.run_dir}"
                               if self.rows else f"{self.run_dir.name} · no checkpoint yet (one is written every "
                               "save interval, on Stop and at the end)")
        self._update_buttons()
        self._show_samples()

    # ---- selection -----------------------------------------------------------------------
    def selected(self) -> list[Path]:
        rows = sorted({index.row() for index in self.table.selectionModel().selectedRows()})
        return [self.rows[r].path for r in rows if r < len(self.rows)]

    def current(self) -> Path | None:
        selected = self.selected()
        return selected[-1] if selected else None

    def select_step(self, step: int) -> None:
        """Select the checkpoint of `step` (a click on a loss-curve marker); if the list is still
        being read (the run was just chosen), as soon as it arrives."""
        if not self._select_listed(step):
            self._wanted_step = step

    def _select_listed(self, step: int) -> bool:
        for i, row in enumerate(self.rows):
            if row.step == step and row.path.name != "final":
                self.table.selectRow(i)
                self.table.scrollToItem(self.table.item(i, 0))
                return True
        return False

    def current_row(self) -> CheckpointRow | None:
        path = self.current()
        return next((r for r in self.rows if r.path == path), None)

    def _selection_changed(self) -> None:
        if not self._auto_selecting:
            self._follow_newest = False  # the user (or select_step) chose: stay on it
            self._wanted_step = None
        self._update_buttons()
        self._check_export_choices()
        self._show_samples()
        self.selectionChanged.emit(str(self.current() or ""))

    def _show_samples(self) -> None:
        """The selected checkpoint's samples, else the newest checkpoint's (they arrive live while training)."""
        row = self.current_row() or (self.rows[-1] if self.rows else None)
        if row is None:
            self.samples.show_samples("Samples", None)
            return
        name = f"step {row.step:,}" + (" (final)" if row.path.name == "final" else "")
        newest = self._follow_newest or self.current_row() is None
        self.samples.show_samples(f"Samples at {name}" + (" · newest checkpoint" if newest else ""),
                                  row.samples)

    def _update_buttons(self) -> None:
        one = self.current() is not None
        for button in (self.chat_button, self.compare_button, self.reveal_button, self.delete_button):
            button.setEnabled(one)
        self.resume_button.setEnabled(one and self.can_resume and self.current().name != "final")
        self.export_button.setEnabled(one and self._export_task is None)

    def set_can_resume(self, can: bool) -> None:
        self.can_resume = can
        self._update_buttons()

    # ---- actions -------------------------------------------------------------------------
    def chat(self) -> None:
        if self.current() is not None:
            self.chatRequested.emit(str(self.run_dir), str(self.current()))

    def compare(self) -> None:
        if self.selected():
            self.compareRequested.emit(str(self.run_dir), [str(p) for p in self.selected()[-3:]])

    def resume(self) -> None:
        if self.current() is not None and self.can_resume:
            self.resumeRequested.emit(str(self.run_dir), str(self.current()))

    def delete(self, checkpoint: Path) -> bool:
        """Delete a checkpoint folder after confirmation (twice for the latest or the best)."""
        row = next((r for r in self.rows if r.path == checkpoint), None)
        if row is None or not self.confirm("Delete checkpoint?", f"Delete {checkpoint.name} ({checkpoint})?"):
            return False
        latest = [r for r in self.rows if r.path.name != "final"][-1:]
        special = [why for why, hit in (("the best (by eval loss; GRPO: by eval reward)", row.best),
                                        ("the latest, which Resume continues from", latest == [row])) if hit]
        if special and not self.confirm("Delete it anyway?", f"{checkpoint.name} is {' and '.join(special)} "
                                                             "checkpoint of this run. Delete it anyway?"):
            return False
        shutil.rmtree(checkpoint, ignore_errors=True)
        self.rows = [r for r in self.rows if r.path != checkpoint]
        self._fill()
        self.message.setText(f"Deleted {checkpoint}.")
        return True

    def _ask(self, title: str, text: str) -> bool:
        return QMessageBox.question(self, title, text, QMessageBox.Yes | QMessageBox.Cancel,
                                    QMessageBox.Cancel) == QMessageBox.Yes

"""The Compare runs tab: runs against runs, and checkpoints against the base model.

Runs (pick several in the sidebar, ⌘-click): their train loss curves overlaid
on one plot (eval losses as dots) and a table of the config fields that differ
between them (`config_diff`); files are read on the task pool.

Checkpoints (the Checkpoints tab's Compare button): one prompt answered by the
base model and by up to 3 checkpoints side by side, streaming, one after
another on the Generator's thread (greedy by default, so a difference is the
checkpoint's doing).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QGroupBox, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QPlainTextEdit, QPushButton,
                               QSpinBox, QSplitter, QTableWidget, QTableWidgetItem, QTabWidget, QVBoxLayout, QWidget)

from app.checkpoints.generation_worker import Generator
from app.common.keys import MULTI_CLICK
from app.common.plot_style import style_plot
from app.common.tasks import LatestTask
from trainer_core.training.callbacks import read_metrics

MAX_CHECKPOINTS = 3
COLOURS = ("#0a84ff", "#ff9f0a", "#30d158", "#ff375f", "#bf5af2", "#64d2ff", "#ffd60a", "#ac8e68")
IGNORED_FIELDS = {"run_name"}  # the column header already names the run


def read_run(run_dir: Path) -> dict:
    """{"name", "config": flat config.toml fields, "steps", "losses", "eval_steps", "eval_losses"} of a run."""
    run_dir = Path(run_dir)
    try:
        config = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    train = [r for r in records if r.get("type") == "train" and isinstance(r.get("loss"), (int, float))]
    evals = [r for r in records if r.get("type") == "eval" and isinstance(r.get("loss"), (int, float))]
    return {"name": run_dir.name, "config": config, "steps": [r["step"] for r in train],
            "losses": [r["loss"] for r in train], "eval_steps": [r["step"] for r in evals],
            "eval_losses": [r["loss"] for r in evals]}


def config_diff(configs: list[dict]) -> list[tuple[str, list]]:
    """(field, [value per config]) for each field whose values are not all equal; None where a config lacks it."""
    fields = sorted({key for config in configs for key in config} - IGNORED_FIELDS)
    rows = []
    for field in fields:
        values = [config.get(field) for config in configs]
        if any(v != values[0] for v in values[1:]):
            rows.append((field, values))
    return rows


class RunsCompare(QWidget):
    """Signals: shown(int number of runs drawn)."""

    shown = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.runs: list[dict] = []
        self.curves: list[pg.PlotDataItem] = []
        self._task = LatestTask()
        self.destroyed.connect(self._task.cancel)  # no late answer for a deleted widget
        self.hint = QLabel(f"Select two or more runs in the sidebar ({MULTI_CLICK}) to overlay their loss curves.")
        self.hint.setWordWrap(True)
        self.plot = pg.PlotWidget()
        style_plot(self.plot)
        self.plot.setLabel("bottom", "step")
        self.plot.setLabel("left", "loss")
        self.legend = self.plot.addLegend(offset=(-10, 10))
        self.table = QTableWidget(0, 1)
        self.table.setHorizontalHeaderLabels(["Field"])  # before any run is chosen (Qt would show "1")
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        splitter = QSplitter(Qt.Vertical)
        splitter.addWidget(self.plot)
        splitter.addWidget(self.table)
        splitter.setSizes([520, 260])
        layout = QVBoxLayout(self)
        layout.addWidget(self.hint)
        layout.addWidget(splitter, 1)

    def set_runs(self, run_dirs: list) -> None:
        dirs = [Path(p) for p in run_dirs]
        self._task.start(lambda task: [read_run(p) for p in dirs], self._show,
                         lambda message: self.hint.setText(f"Could not read the runs: {message}"))

    def _show(self, runs: list[dict]) -> None:
        self.runs = runs
        self.plot.clear()
        self.legend.clear()
        self.curves = []
        for i, run in enumerate(runs):
            colour = COLOURS[i % len(COLOURS)]
            curve = self.plot.plot(np.asarray(run["steps"], float), np.asarray(run["losses"], float),
                                   pen=pg.mkPen(colour, width=1.6), name=run["name"])
            self.curves.append(curve)
            if run["eval_steps"]:
                self.plot.plot(run["eval_steps"], run["eval_losses"], pen=None, symbol="o", symbolSize=6,
                               symbolBrush=colour, symbolPen=None)
        diff = config_diff([run["config"] for run in runs])
        self.table.clear()
        self.table.setColumnCount(1 + len(runs))
        self.table.setHorizontalHeaderLabels(["Field", *[run["name"] for run in runs]])
        self.table.setRowCount(len(diff))
        for row, (field, values) in enumerate(diff):
            self.table.setItem(row, 0, QTableWidgetItem(field))
            for column, value in enumerate(values, start=1):
                self.table.setItem(row, column, QTableWidgetItem("—" if value is None else str(value)))
        self.hint.setText(f"{len(runs)} run(s) · {len(diff)} config field(s) differ"
                          if len(runs) > 1 else f"Select two or more runs in the sidebar ({MULTI_CLICK}) to compare them.")
        self.shown.emit(len(runs))


class CheckpointCompare(QWidget):
    """Signals: allDone() once every column's answer has ended."""

    allDone = Signal()

    def __init__(self, generator: Generator, parent=None):
        super().__init__(parent)
        self.generator = generator
        self.checkpoints: list[str] = []
        self.jobs: dict[int, QPlainTextEdit] = {}
        self.prompt = QLineEdit()
        self.prompt.setPlaceholderText("A prompt for the base model and each checkpoint")
        self.prompt.returnPressed.connect(self.run)
        self.max_tokens = QSpinBox(minimum=1, maximum=4096, value=64)
        self.run_button = QPushButton("Answer")
        self.run_button.clicked.connect(self.run)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("End these answers where they are (the Chat tab's answer goes on)")
        self.stop_button.clicked.connect(self.stop)
        self.stop_button.setEnabled(False)
        top = QHBoxLayout()
        for widget in (self.prompt, QLabel("Max tokens"), self.max_tokens, self.run_button, self.stop_button):
            top.addWidget(widget, 1 if widget is self.prompt else 0)
        self.columns = QHBoxLayout()
        self.answers: list[QPlainTextEdit] = []
        self.boxes: list[QGroupBox] = []
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(self.columns, 1)
        self.generator.piece.connect(self._piece)
        self.generator.done.connect(self._ended)
        self.generator.failed.connect(self._failed)
        self.set_checkpoints([])

    def set_checkpoints(self, checkpoints: list[str]) -> None:
        """Base + these checkpoints (the last 3 given) side by side."""
        self.checkpoints = [str(c) for c in checkpoints][-MAX_CHECKPOINTS:]
        for box in self.boxes:
            box.setParent(None)
        self.boxes, self.answers = [], []
        for title in ["Base model", *[f"{Path(c).parent.parent.name if Path(c).name != 'final' else ''} "
                                      f"{Path(c).name}".strip() for c in self.checkpoints]]:
            box = QGroupBox(title)
            answer = QPlainTextEdit()
            answer.setReadOnly(True)
            QVBoxLayout(box).addWidget(answer)
            self.columns.addWidget(box, 1)
            self.boxes.append(box)
            self.answers.append(answer)
        self.run_button.setEnabled(bool(self.checkpoints))

    def run(self) -> bool:
        prompt = self.prompt.text().strip()
        if not prompt or not self.checkpoints or self.jobs:
            return False
        from trainer_core.generation.generate import read_adapter_config
        base = read_adapter_config(Path(self.checkpoints[0])).get("base_model")
        for answer, checkpoint in zip(self.answers, [None, *self.checkpoints]):
            answer.clear()
            job = self.generator.generate(base if checkpoint is None else None, checkpoint, prompt,
                                          max_tokens=self.max_tokens.value(), temperature=0.0)
            self.jobs[job] = answer
        self.run_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        return True

    def stop(self) -> None:
        """End this comparison's answers (only these jobs of the shared Generator)."""
        self.generator.stop(list(self.jobs))

    def texts(self) -> list[str]:
        return [answer.toPlainText() for answer in self.answers]

    def _piece(self, job: int, text: str) -> None:
        if job in self.jobs:
            answer = self.jobs[job]
            answer.moveCursor(answer.textCursor().MoveOperation.End)
            answer.insertPlainText(text)

    def _ended(self, job: int, info: dict) -> None:
        if self.jobs.pop(job, None) is not None and not self.jobs:
            self.run_button.setEnabled(True)
            self.stop_button.setEnabled(False)
            self.allDone.emit()

    def _failed(self, job: int, message: str) -> None:
        if job in self.jobs:
            self.jobs[job].setPlainText(message)
            self._ended(job, {})


class ComparePane(QTabWidget):
    """The two comparisons as pages: `runs` (RunsCompare) and `checkpoints` (CheckpointCompare)."""

    def __init__(self, generator: Generator, parent=None):
        super().__init__(parent)
        self.runs = RunsCompare()
        self.checkpoints = CheckpointCompare(generator)
        self.addTab(self.runs, "Runs")
        self.addTab(self.checkpoints, "Checkpoints side by side")

"""The run history on the left of the window: every run under the runs root.

`scan_runs(root)` reads each run folder (config.toml, metrics.jsonl, checkpoints;
plain files, no MLX) into a RunSummary; the sidebar does it on the task pool and
again when the folder changes (QFileSystemWatcher) or a run starts or ends.

Status: "running" for the folder the window is training or another process holds
(its run.lock), else what the last `stopped` event says (finished; stopped by the
user; failed, with the reason: NaN loss, out of memory, disk full, an error); a
run without one was interrupted (a native crash, killed by the system, power loss): "crashed", with
trainer_core.training.heartbeat's line ("The app quit unexpectedly during step 7 of this run (diffusion
on gemma2)…"), or "failed" when it never trained a step. `reason` says why, for the row's tooltip, the
line under the list and the Training tab's banner. Resume is offered only from a complete checkpoint
(`resume_step`), never from step 0 as if nothing had happened.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QFileSystemWatcher, Qt, QTimer, Signal
from PySide6.QtWidgets import (QAbstractItemView, QHBoxLayout, QInputDialog, QLabel, QLineEdit, QMenu, QMessageBox,
                               QPushButton, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from app.common.reveal import reveal_in_file_manager
from app.common.tasks import LatestTask
from trainer_core.training import heartbeat, run_end
from trainer_core.training.callbacks import read_metrics
from trainer_core.training.run_lock import holder
from trainer_core.config import best_eval_metric

COLUMNS = ("Run", "Status", "Method", "Steps", "Best eval", "Date", "Model", "Dataset")
STATUS_MARK = {"running": "●", "finished": "✓", "stopped": "■", "failed": "✕", "crashed": "✕"}  # DejaVu Sans has them


@dataclass
class RunSummary:
    path: Path
    name: str
    method: str
    model: str
    dataset: str
    status: str
    steps: int
    total_steps: int
    best_eval: float | None  # the lowest eval loss; GRPO: the highest eval reward_mean (config.best_eval_metric)
    date: float
    checkpoints: int
    reason: str = ""  # why it is not running (the stopped event), or who runs it
    ended: str = ""  # the stopped event's reason: finished | user | nan | out_of_memory | disk_full | error
    resume_step: int | None = None  # the newest complete checkpoint's step: where Resume continues

    @property
    def resumable(self) -> bool:
        return self.status in ("stopped", "failed", "crashed") and self.resume_step is not None

    @property
    def resume_note(self) -> str:
        """The Resume button's tooltip for this run: from which step, or why not."""
        if self.resumable:
            return f"Continue {self.name} from its checkpoint at step {self.resume_step:,}"
        if self.status in ("stopped", "failed", "crashed"):
            return f"{self.name} has no complete checkpoint to resume from: start it again from Setup."
        return "Continue the selected stopped run from its latest checkpoint"

    @property
    def status_text(self) -> str:
        if self.status == "crashed":
            return f"{STATUS_MARK['crashed']} quit unexpectedly"
        short = {"nan": "NaN loss", "out_of_memory": "out of memory", "disk_full": "disk full"}
        return f"{STATUS_MARK.get(self.status, '')} {self.status}" + (f": {short[self.ended]}" if self.ended in short
                                                                     else "")


def _config_fields(run_dir: Path) -> dict:
    import tomllib
    try:
        return tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def summarize_run(run_dir: Path, running: Path | None = None) -> RunSummary:
    """What the history shows for one run folder (holds config.toml)."""
    run_dir = Path(run_dir)
    config = _config_fields(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    steps = max((int(r.get("step", 0)) for r in records if r.get("type") == "train"), default=0)
    key, mode = best_eval_metric(str(config.get("method", "")))
    evals = [r[key] for r in records if r.get("type") == "eval" and isinstance(r.get(key), float)]
    resumed = max((i for i, r in enumerate(records) if r.get("event") == "resumed"), default=-1)
    latest = records[resumed + 1:]  # what the last process that trained this run wrote
    ends = [r for r in latest if r.get("type") == "event" and r.get("event") == "train_end"]
    stops = [r for r in latest if r.get("type") == "event" and r.get("event") == "stopped"]
    checkpoints = len(list((run_dir / "checkpoints").glob("step-*"))) if (run_dir / "checkpoints").is_dir() else 0
    total = int(ends[-1].get("total_steps", 0)) if ends else int(config.get("max_steps") or 0)
    reason, ended = "", ""
    other = holder(run_dir) if running is None or Path(running) != run_dir else None
    if running is not None and Path(running) == run_dir:
        status = "running"
    elif other is not None:
        status, reason = "running", f"Being trained by process {other or '(unknown)'} (another window or a terminal)."
    elif stops:
        ended = str(stops[-1].get("reason", ""))
        status = {"finished": "finished", "user": "stopped"}.get(ended, "failed")
        reason = run_end.describe(stops[-1])
    elif ends:  # written before runs recorded why they ended
        status = str(ends[-1].get("status", "finished"))
    else:
        model_name = Path(str(config.get("model", "?"))).name or "?"
        crash = heartbeat.interruption(run_dir, steps, str(config.get("method", "?")), model_name)
        status, reason = ("crashed", crash.text) if crash else ("failed", "It never trained a step.")
    return RunSummary(path=run_dir, name=run_dir.name, method=str(config.get("method", "?")),
                      model=Path(str(config.get("model", "?"))).name or "?",
                      dataset=Path(str(config.get("data", "?"))).name or "?", status=status, steps=steps,
                      total_steps=total, best_eval=(min if mode == "min" else max)(evals) if evals else None,
                      date=(run_dir / "config.toml").stat().st_mtime if (run_dir / "config.toml").exists() else 0.0,
                      checkpoints=checkpoints, reason=reason, ended=ended,
                      resume_step=heartbeat.latest_checkpoint_step(run_dir))


def scan_runs(root: Path, running: Path | None = None, also=()) -> list[RunSummary]:
    """Summaries of the run folders directly under `root`, plus the run folders `also` that lie elsewhere (a run
    started from a config whose output_dir is not the runs folder), newest first."""
    root = Path(root)
    folders = [p for p in root.iterdir() if (p / "config.toml").is_file()] if root.is_dir() else []
    folders += [Path(p) for p in also if Path(p) not in folders and (Path(p) / "config.toml").is_file()]
    runs = [summarize_run(p, running) for p in folders]
    return sorted(runs, key=lambda r: r.date, reverse=True)


def matches(run: RunSummary, text: str) -> bool:
    """Filter: every word appears in the name, method, model, dataset or status."""
    haystack = f"{run.name} {run.method} {run.model} {run.dataset} {run.status}".lower()
    return all(word in haystack for word in text.lower().split())


class RunsSidebar(QWidget):
    """Signals: runSelected(str) (one run clicked), runsSelected(list[str]) (the whole selection, ⌘-click for
    several), resumeRequested(str run_dir), newRunRequested(), runsChanged() after a rescan."""

    runSelected = Signal(str)
    runsSelected = Signal(list)
    resumeRequested = Signal(str)
    newRunRequested = Signal()
    runsChanged = Signal()

    def __init__(self, root: Path, parent=None):
        super().__init__(parent)
        self.root = Path(root)
        self.running: Path | None = None
        self.elsewhere: list[Path] = []  # runs of this session outside the runs folder (their own output_dir)
        self.paused = False
        self.runs: list[RunSummary] = []
        self.confirm = self._ask  # replaceable (tests answer without a dialog)
        self.ask_name = self._ask_name
        self._task = LatestTask()
        self.destroyed.connect(self._task.cancel)  # no late answer for a deleted widget
        self._watcher = QFileSystemWatcher(self)
        self._watcher.directoryChanged.connect(lambda _: self._rescan_timer.start())
        self._rescan_timer = QTimer(self, singleShot=True, interval=400, timeout=self.refresh)

        title = QLabel("RUNS")
        title.setObjectName("sidebarTitle")
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter runs…")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self._fill)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(COLUMNS)
        self.tree.setRootIsDecorated(False)
        self.tree.setUniformRowHeights(True)
        self.tree.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.tree.setContextMenuPolicy(Qt.CustomContextMenu)
        self.tree.customContextMenuRequested.connect(self._menu)
        self.tree.itemSelectionChanged.connect(self._selection_changed)
        for column, width in enumerate((140, 84, 50, 56, 64)):
            self.tree.setColumnWidth(column, width)
        self.new_button = QPushButton("+ New run")
        self.new_button.clicked.connect(self.newRunRequested)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue the selected stopped run from its latest checkpoint")
        self.resume_button.clicked.connect(lambda: self.current() and self.resumeRequested.emit(str(self.current())))
        self.resume_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.new_button)
        buttons.addWidget(self.resume_button)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 0, 6)
        layout.addWidget(title)
        layout.addWidget(self.filter)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.message)
        layout.addLayout(buttons)
        self.set_root(self.root)

    # ---- data ---------------------------------------------------------------------------
    def set_root(self, root: Path) -> None:
        self.root = Path(root)
        if self._watcher.directories():
            self._watcher.removePaths(self._watcher.directories())
        self.root.mkdir(parents=True, exist_ok=True)
        self._watcher.addPath(str(self.root))
        self.refresh()

    def set_running(self, run_dir: Path | None) -> None:
        self.running = Path(run_dir) if run_dir else None
        self.paused = False
        if self.running is not None and self.running.parent != self.root and self.running not in self.elsewhere:
            self.elsewhere.append(self.running)  # listed too, so the run being trained is always in the list
        self.refresh()

    def set_paused(self, paused: bool) -> None:
        """The running run holds at a step boundary (Pause): its row says "paused"."""
        self.paused = paused
        self._fill()

    def refresh(self) -> None:
        """Rescan the runs root off the GUI thread."""
        root, running, elsewhere = self.root, self.running, list(self.elsewhere)
        self._task.start(lambda task: scan_runs(root, running, elsewhere), self._scanned, self._scan_failed)

    def _scanned(self, runs: list[RunSummary]) -> None:
        self.runs = runs
        self._fill()
        self.runsChanged.emit()

    def _scan_failed(self, message: str) -> None:
        self.message.setText(f"Could not read the runs folder {self.root}: {message}")

    def _fill(self) -> None:
        selected = set(self.selected())
        self.tree.blockSignals(True)
        self.tree.clear()
        for run in self.runs:
            if not matches(run, self.filter.text()):
                continue
            best = "" if run.best_eval is None else f"{run.best_eval:.4f}"
            steps = f"{run.steps:,}" + (f"/{run.total_steps:,}" if run.total_steps else "")
            paused = self.paused and run.path == self.running
            item = QTreeWidgetItem([run.name, "‖ paused" if paused else run.status_text, run.method, steps,
                                    best, time.strftime("%Y-%m-%d %H:%M", time.localtime(run.date)), run.model,
                                    run.dataset])
            item.setData(0, Qt.UserRole, str(run.path))
            item.setToolTip(1, run.reason or run.status)
            item.setToolTip(0, f"{run.name}\n{run.path}\n{run.method} · {run.model} · {run.dataset} · {run.checkpoints} "
                               "checkpoint(s)")
            self.tree.addTopLevelItem(item)
            item.setSelected(run.path in selected)
        self.tree.blockSignals(False)
        self.message.setText("" if self.runs else f"No runs yet in {self.root}.")
        self._update_buttons()

    def show_progress(self, step: int, total_steps: int, eval_record: dict | None = None) -> None:
        """Live Steps / Best eval of the running run's row between scans (a scan follows the files)."""
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if self.running is None or Path(item.data(0, Qt.UserRole)) != self.running:
                continue
            item.setText(3, f"{step:,}" + (f"/{total_steps:,}" if total_steps else ""))
            run = self.summary(self.running)
            key, mode = best_eval_metric(run.method if run else "")
            value = (eval_record or {}).get(key)
            if isinstance(value, (int, float)):
                best = item.text(4)
                if not best or (value < float(best) if mode == "min" else value > float(best)):
                    item.setText(4, f"{value:.4f}")

    # ---- selection ----------------------------------------------------------------------
    def selected(self) -> list[Path]:
        return [Path(item.data(0, Qt.UserRole)) for item in self.tree.selectedItems()]

    def current(self) -> Path | None:
        selected = self.selected()
        return selected[0] if len(selected) == 1 else None

    def summary(self, run_dir: Path) -> RunSummary | None:
        return next((r for r in self.runs if r.path == Path(run_dir)), None)

    def select(self, run_dir: Path) -> None:
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            item.setSelected(Path(item.data(0, Qt.UserRole)) == Path(run_dir))

    def _selection_changed(self) -> None:
        self._update_buttons()
        selected = self.selected()
        self.runsSelected.emit([str(p) for p in selected])
        if len(selected) == 1:
            self.runSelected.emit(str(selected[0]))

    def _update_buttons(self) -> None:
        run = self.summary(self.current()) if self.current() else None
        self.resume_button.setEnabled(run is not None and run.resumable and self.running is None)
        self.resume_button.setToolTip(run.resume_note if run else "Continue the selected stopped run from its "
                                      "latest checkpoint")
        if self.runs:  # a run that died without a word says so here (its row's tooltip too)
            self.message.setText(run.reason if run is not None and run.status == "crashed" else "")

    # ---- actions ------------------------------------------------------------------------
    def _menu(self, position) -> None:
        run = self.current()
        if run is None:
            return
        menu = QMenu(self)
        summary = self.summary(run)
        busy = self.running == run or (summary is not None and summary.status == "running")
        menu.addAction("Rename…", lambda: self.rename(run)).setEnabled(not busy)
        menu.addAction("Open Folder", lambda: reveal_in_file_manager(run))
        menu.addSeparator()
        menu.addAction("Delete…", lambda: self.delete(run)).setEnabled(not busy)
        menu.exec(self.tree.viewport().mapToGlobal(position))

    def rename(self, run_dir: Path, new_name: str | None = None) -> Path | None:
        """Rename the run's folder; None if refused (empty, taken, or training)."""
        new_name = new_name if new_name is not None else self.ask_name(run_dir.name)
        if not new_name or new_name == run_dir.name or self.running == run_dir:
            return None
        target = run_dir.with_name(new_name.strip().replace("/", "-"))
        if target.exists():
            self.message.setText(f"A run named {target.name} already exists; choose another name.")
            return None
        run_dir.rename(target)
        self.refresh()
        return target

    def delete(self, run_dir: Path) -> bool:
        """Delete a run folder after confirmation; never the one training."""
        if self.running == run_dir or not self.confirm(
                f"Delete the run {run_dir.name}?",
                f"{run_dir}\nits checkpoints, metrics and final weights are removed from disk."):
            return False
        shutil.rmtree(run_dir, ignore_errors=True)
        self.runs = [r for r in self.runs if r.path != run_dir]
        self._fill()
        self.refresh()
        return True

    def _ask(self, title: str, text: str) -> bool:
        return QMessageBox.question(self, title, text, QMessageBox.Yes | QMessageBox.Cancel,
                                    QMessageBox.Cancel) == QMessageBox.Yes

    def _ask_name(self, current: str) -> str | None:
        name, ok = QInputDialog.getText(self, "Rename run", "New name:", text=current)
        return name if ok else None

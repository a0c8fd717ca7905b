"""The main window: toolbar and menus (app/actions.py), the runs sidebar, the Setup,
Training, Checkpoints and Chat tabs, status line. Owns the TrainingController (worker
thread) and the Generator (generation thread) and wires their signals.

With the Setup tab's Distributed group ticked, Start launches the run through mlx.launch
(app/distributed_run.py: same signals, read from rank 0's metrics.jsonl) instead of the worker thread;
Resume does the same for a run written by several processes (app/distributed_resume.py).

Closing the window while a run trains asks first, then stops the run at the
next step boundary (a checkpoint is written) and closes once the thread has
ended; the window stays responsive meanwhile.
"""

from __future__ import annotations

from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import QEvent, Qt, QTimer, QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QMainWindow, QMessageBox, QSplitter, QTabWidget

from app import settings
from app.actions import build_actions, keys
from app.checkpoints.chat_pane import ChatPane
from app.checkpoints.links import link_markers_to_checkpoints
from app.checkpoints.pane import CheckpointsPane
from app.checkpoints.compare_pane import ComparePane
from app.distributed.resume import resume_run
from app.distributed.run import DistributedRun
from app.drop_target import install_drop_target
from app.common.gc_policy import collect_on_gui_thread
from app.checkpoints.generation_worker import Generator
from app.common.plot_style import style_plot
from app.preferences import PreferencesDialog, runs_root
from app.runs.sidebar import RunsSidebar
from app.setup.pane import SetupPane
from app.status_bar import RunStatus, StatusLine, duration
from app.common.tasks import cancel_all
from app.training.pane import TrainingPane
from app.training.worker import TrainingController
from trainer_core.config import RunConfig
from trainer_core.paths import default_runs_root, settings_dir

APP_TITLE = "Fine-Tune Studio"


class MainWindow(QMainWindow):
    def __init__(self, config: RunConfig, parent=None):
        super().__init__(parent)
        collect_on_gui_thread()
        self.setWindowTitle(APP_TITLE)
        self.resize(1360, 900)
        self.controller = TrainingController(self)
        self.distributed = DistributedRun(self)
        self.run_status = RunStatus()
        self.run_dir: Path | None = None
        self._close_when_done = False
        self.confirm_close = self._ask_close  # replaceable (tests answer without a dialog)
        self.confirm_reward_file = self._ask_reward_file

        self.setup = SetupPane(config)
        self.training = TrainingPane()
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.setup, "Setup")
        self.tabs.addTab(self.training, "Training")
        self.generator = Generator(self)
        self.checkpoints = CheckpointsPane()
        self.chat = ChatPane(self.generator)
        self.tabs.addTab(self.checkpoints, "Checkpoints")
        self.tabs.addTab(self.chat, "Chat")
        self.compare = ComparePane(self.generator)
        self.tabs.addTab(self.compare, "Compare runs")
        self.sidebar = RunsSidebar(runs_root())
        splitter = QSplitter(Qt.Horizontal)
        splitter.addWidget(self.sidebar)
        splitter.addWidget(self.tabs)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([340, 1020])
        self.setCentralWidget(splitter)
        self.status = StatusLine(self.statusBar())
        build_actions(self)
        self._connect()
        self._status_timer = QTimer(self, interval=250, timeout=self._update_status)
        self._update_actions()
        install_drop_target(self, self.select_dropped)
        link_markers_to_checkpoints(self.tabs, self.training, self.checkpoints)

    # ---- actions -------------------------------------------------------------------
    def _connect(self) -> None:
        for c in (self.controller, self.distributed):
            c.runCreated.connect(self._run_created)
            c.trainBegan.connect(self._train_began)
            c.progress.connect(self.status.show_progress)
            c.stepProgress.connect(lambda info: self.run_status.step_progress(info))
            c.metrics.connect(self._metrics)
            c.checkpointSaved.connect(self._checkpoint_saved)
            c.log.connect(self.training.append_log)
            c.pausedChanged.connect(self._paused_changed)
            c.finished.connect(self._finished)
            c.failed.connect(self._failed)
            c.failedField.connect(self._failed_field)
            c.runningChanged.connect(self._running_changed)
        self.distributed.ranksJoined.connect(self._ranks_joined)
        self.distributed.failed.connect(self.setup.distributed.show_failure)
        self.setup.changed.connect(self._update_actions)
        self.setup.memory_panel.startAnywayRequested.connect(lambda: self.start(force=True))
        self.sidebar.runSelected.connect(lambda path: self.show_history_run(Path(path)))
        self.sidebar.resumeRequested.connect(lambda path: self.resume(Path(path)))
        self.sidebar.newRunRequested.connect(lambda: self.tabs.setCurrentWidget(self.setup))
        self.sidebar.runsSelected.connect(self.compare_runs)
        self.checkpoints.chatRequested.connect(self.open_chat)
        self.checkpoints.compareRequested.connect(self.compare_checkpoints)
        self.checkpoints.resumeRequested.connect(lambda run, checkpoint: self.resume(Path(run), Path(checkpoint)))
        self.checkpoints.listed.connect(
            lambda _: self.chat.set_checkpoints([str(row.path) for row in self.checkpoints.rows]))

    @property
    def running(self) -> bool:
        return self.controller.running or self.distributed.running

    def _update_actions(self) -> None:
        running = self.running
        blocker = None if running else self.setup.start_blocker()
        self.start_action.setEnabled(not running and blocker is None)
        self.start_action.setToolTip(f"Start training ({keys(self.start_action.shortcut())})" if blocker is None
                                     else f"Can't start: {blocker}")
        self.pause_action.setEnabled(self.controller.running)  # a distributed run has no pause / save now
        self.stop_action.setEnabled(running)
        self.save_action.setEnabled(self.controller.running)
        self.blocker_label.set_full_text("" if blocker is None else f"Can't start: {blocker}")
        self.open_config_action.setEnabled(self.run_dir is not None)

    # ---- running -------------------------------------------------------------------------
    def start(self, force: bool = False) -> bool:
        """Start a run with the Setup pane's config; False (and nothing happens) if blocked. `force`: Start anyway
        (past the memory estimate, in the window and in the run's own pre-start check)."""
        if self.running or self.setup.start_blocker(ignore_memory=force) is not None:
            return False
        config = self.setup.config()
        if not self.setup.method_panel.rewards.allows(config, self.confirm_reward_file):
            return False
        if not config.output_dir and runs_root() != default_runs_root():
            config.output_dir = str(runs_root())
        self._begin()
        panel = self.setup.distributed
        if panel.enabled():
            panel.show_status(f"Launching on {panel.world_size()} processes ({panel.backend_name()})…")
            self.training.append_log(panel.status.text())
            self.distributed.start(config, panel.hosts(), panel.backend_name(), settings_dir() / "launch",
                                   self.setup.total_steps(config)[0], force=force)
        else:
            self.controller.start(config, force=force)
        return True

    def resume(self, run_dir: Path, checkpoint: Path | None = None) -> bool:
        """Continue `run_dir` exactly from `checkpoint` (default: its latest) as the running run, on as many
        processes as wrote it (app/distributed_resume.py); False, with the reason in the status line, if it can't."""
        if not self.setup.method_panel.rewards.allows_run(Path(run_dir), self.confirm_reward_file):
            return False
        return resume_run(self, run_dir, checkpoint)

    def _begin(self) -> None:
        self.run_dir = None
        self.run_status = RunStatus()
        self.training.begin_run()
        self.training.set_banner("Loading the model and tokenising the data…")
        self.status.show_text("Loading the model and tokenising the data…")
        self.status.busy()
        self.setup.set_locked(True)
        self.tabs.setCurrentWidget(self.training)

    def stop(self) -> None:
        if self.running:
            self.controller.stop()
            self.distributed.stop()
            self.pause_action.setChecked(False)
            self.status.show_text("Stopping after this step — saving a checkpoint…")

    def _run_created(self, run_dir: str) -> None:
        self.run_dir = Path(run_dir)
        self.setWindowTitle(f"{APP_TITLE} — {self.run_dir.name}")
        self.training.run_dir = self.run_dir
        self._show_run_banner()
        self.sidebar.set_running(self.run_dir)
        self.checkpoints.set_run(self.run_dir)
        self.training.load_history(self.run_dir)  # a resumed run: its earlier records first
        self.setup.time_panel.follow_run(self.run_dir)  # its speed refines the next time estimate
        self._update_actions()

    def _ranks_joined(self, joined: list) -> None:
        self.setup.distributed.show_ranks(joined)
        self._show_run_banner()

    def _show_run_banner(self) -> None:
        ranks = self.distributed.running and self.setup.distributed.status.text()
        name = f"Training {self.run_dir.name}  ·  {self.run_dir}" if self.run_dir else "Loading the model…"
        self.training.set_banner(f"{name}  ·  {ranks}" if ranks else name)

    def _train_began(self, info: dict) -> None:
        self.run_status = RunStatus(int(info.get("total_steps", 0)), int(info.get("step", 0)))
        self.status.show_progress(int(info.get("step", 0)), int(info.get("total_steps", 0)))
        self._status_timer.start()
        self._update_status()

    def _metrics(self, record: dict) -> None:
        self.training.add_metrics(record)
        if record.get("event") == "samples":
            self.checkpoints.samples_written(record)
        if record.get("type") == "train":
            self.setup.time_panel.live(record)
            self.run_status.add(record)
            self.sidebar.show_progress(int(record["step"]), self.run_status.total_steps)
        elif record.get("type") == "eval":
            self.sidebar.show_progress(int(record["step"]), self.run_status.total_steps, record)

    def _checkpoint_saved(self, info: dict) -> None:
        self.training.add_checkpoint(info)
        self.checkpoints.checkpoint_saved(info)

    def _update_status(self) -> None:
        if self.running and not self.controller.paused:
            self.status.show_text(self.run_status.text())

    def pause(self, paused: bool) -> None:
        """The Pause button: its text changes at once; the status says when the run has actually paused."""
        self.controller.pause(paused)
        self.pause_action.setText("Continue" if paused else "Pause")
        if paused:
            self.status.show_text("Pausing at the end of this step…")

    def focus_chat(self) -> None:
        self.tabs.setCurrentWidget(self.chat)
        self.chat.input.setFocus()

    def _paused_changed(self, paused: bool) -> None:
        blocked = self.pause_action.blockSignals(True)
        self.pause_action.setChecked(paused)
        self.pause_action.blockSignals(blocked)
        self.pause_action.setText("Continue" if paused else "Pause")
        if self.run_dir is not None:
            self.sidebar.set_paused(paused)
        if paused:
            step = self.run_status.last.get("step", 0)
            self.status.show_text(f"Paused at step {step:,}/{self.run_status.total_steps:,} — the model stays in "
                                  "memory; Continue goes on, Stop saves a checkpoint.")

    def _finished(self, result: dict) -> None:
        self._status_timer.stop()
        self.status.hide_progress()
        step, total = result["step"], result["total_steps"]
        where = result.get("run_dir", "")
        if result["status"] == "finished":
            losses = [f"{name} loss {result[key]:.3f}" for name, key in (("train", "last_train_loss"),
                                                                         ("eval", "last_eval_loss"))
                      if result.get(key) is not None]
            text = (f"Finished {step:,} steps in {duration(result.get('elapsed'))}"
                    f"{''.join(' · ' + part for part in losses)} · final weights in {result.get('final_dir')}")
        else:
            resume = result.get("resume_command") or f"finetune resume {where}"
            text = (f"Stopped at step {step:,}/{total:,} · checkpoint saved · continue with the Resume button in the "
                    f"runs list (terminal: `{resume}`)" if step else "Stopped before the first step; nothing was trained.")
        self.status.show_text(text)
        self.training.set_banner(text)
        self.training.append_log(text)

    def _failed(self, message: str) -> None:
        self._status_timer.stop()
        self.status.hide_progress()
        self.status.show_text(message, "error")
        self.training.set_banner(message, "error")
        self.training.append_log(f"error: {message}")

    def _failed_field(self, field: str, message: str) -> None:
        if self.setup.show_run_problem(field, message):
            self.tabs.setCurrentWidget(self.setup)

    def _running_changed(self, running: bool) -> None:
        self.setup.set_locked(running)
        self.checkpoints.set_can_resume(not running)
        if not running:
            self.pause_action.setChecked(False)
            self.pause_action.setText("Pause")
            self.sidebar.set_running(None)
        self._update_actions()
        if not running and self._close_when_done:
            self.close()

    # ---- files -------------------------------------------------------------------------
    def open_run(self) -> None:
        path = settings.ask_path(self, "folder", "runs", "Open a run folder (holds metrics.jsonl)", fallback=runs_root())
        if path:
            self.show_run(Path(path))

    def show_run(self, run_dir: Path) -> None:
        """Plot a run from its folder (what the run history will use)."""
        self.run_dir = Path(run_dir)
        self.training.load_run(self.run_dir)
        self.setWindowTitle(f"{APP_TITLE} — {self.run_dir.name}")
        self.tabs.setCurrentWidget(self.training)
        self._update_actions()

    def show_history_run(self, run_dir: Path) -> None:
        """A run picked in the sidebar: its checkpoints, and its plots unless another run is training."""
        self.checkpoints.set_run(run_dir)
        if self.running:
            return
        self.run_dir = Path(run_dir)
        self.training.load_run(self.run_dir)
        self.setWindowTitle(f"{APP_TITLE} — {self.run_dir.name}")
        if self.tabs.currentWidget() is self.setup:
            self.tabs.setCurrentWidget(self.checkpoints)
        self._update_actions()

    def open_chat(self, run_dir: str, checkpoint: str) -> None:
        self.chat.set_checkpoints([str(row.path) for row in self.checkpoints.rows], checkpoint)
        self.tabs.setCurrentWidget(self.chat)

    def compare_runs(self, run_dirs: list) -> None:
        if len(run_dirs) > 1:
            self.compare.runs.set_runs(run_dirs)
            self.compare.setCurrentWidget(self.compare.runs)
            self.tabs.setCurrentWidget(self.compare)

    def compare_checkpoints(self, run_dir: str, checkpoints: list) -> None:
        self.compare.checkpoints.set_checkpoints(checkpoints)
        self.compare.setCurrentWidget(self.compare.checkpoints)
        self.tabs.setCurrentWidget(self.compare)

    def select_dropped(self, kind: str, path: str) -> None:
        if self.running:
            return
        if kind == "model":
            self.setup.model_panel.select(path)
        else:
            self.setup.dataset_panel.path.editor.setText(path)
        self.tabs.setCurrentWidget(self.setup)

    def preferences(self) -> None:
        if PreferencesDialog(self).exec():
            self.sidebar.set_root(runs_root())

    def open_config(self) -> None:
        if self.run_dir is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.run_dir / "config.toml")))

    def changeEvent(self, event) -> None:
        """Light/dark switch: plots take the new palette's colours."""
        if event.type() in (QEvent.PaletteChange, QEvent.ApplicationPaletteChange):
            for plot in self.findChildren(pg.PlotWidget):
                style_plot(plot)
        super().changeEvent(event)

    # ---- closing -------------------------------------------------------------------------
    def _ask_close(self) -> bool:
        answer = QMessageBox.question(
            self, "Stop training?", "A run is training. Stop it (a checkpoint is saved first) and close?",
            QMessageBox.Yes | QMessageBox.Cancel, QMessageBox.Cancel)
        return answer == QMessageBox.Yes

    def _ask_reward_file(self, path: str) -> bool:
        answer = QMessageBox.question(self, "Run this reward file?", f"This runs the Python code in {path}. Run it?",
                                      QMessageBox.Yes | QMessageBox.Cancel, QMessageBox.Cancel)
        return answer == QMessageBox.Yes

    def quit(self) -> None:
        """File → Quit: close the window (asking first while a run trains); the application ends with it."""
        self.close()

    def remember(self) -> None:
        """Kept for the next launch: window geometry, the Setup form (model, data, method, every field) and
        the plot options."""
        settings.save_value("window/geometry", self.saveGeometry())
        self.setup.config().save(settings.last_form_file())
        self.training.remember_options()

    def restore(self) -> bool:
        """Window geometry as last closed (the form comes back through __main__'s config); False if none."""
        geometry = settings.settings().value("window/geometry")
        return geometry is not None and self.restoreGeometry(geometry)

    def closeEvent(self, event) -> None:
        if not self.running:
            self.remember()
            event.accept()
            return
        event.ignore()
        if self._close_when_done or self.confirm_close():
            self._close_when_done = True
            self.stop()
            self.status.show_text("Stopping: saving a checkpoint, then closing…")

    def shutdown(self) -> None:
        """Last call before the application quits: stop and wait for the worker thread."""
        self.setup.shutdown()
        self.generator.shutdown()
        cancel_all(wait_ms=10_000)
        self.controller.shutdown()
        self.distributed.shutdown()

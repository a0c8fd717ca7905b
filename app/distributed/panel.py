"""Distributed group and launcher: train one run data-parallel on several processes or Macs.

    panel = DistributedPanel()          # "Distributed" group: host file, processes per host, backend
    panel.enabled()                     # the group is ticked (else: the usual in-process run)
    panel.problem()                     # None, or why Start must stay disabled (shown under the host file too)
    launcher = DistributedLauncher()
    launcher.start(config, panel.hosts(), panel.backend_name(), workdir)
                                        # mlx.launch ... -- python -m trainer_core train <config as flags>
    launcher.resume(run_dir, checkpoint, hosts, backend, workdir)   # ... -- finetune resume RUN_DIR
    launcher.stop()                     # every rank stops at one step after a checkpoint; a second stop aborts

The run itself is the headless CLI under `mlx.launch` (trainer_core/distributed.py, launch.py): rank 0
writes `<output_dir>/<run_name>` as any run does, so the plots follow its metrics.jsonl as usual.
The launcher reports which ranks joined (`ranksJoined`) and decides how the run ended with
launch.Outcome (a rank's error line, rank 0's train_end event): mlx.launch itself exits 0 even when
a rank failed.
"""

from __future__ import annotations

import copy
import os
import signal
import time
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, QTimer, Signal, Slot
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import (QComboBox, QGridLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit,
                               QPushButton, QSpinBox, QVBoxLayout, QWidget)

from app import settings
from app.common.cli_line import cli_arguments
from app.common.form import invalid_palette
from trainer_core.distributed import launch
from trainer_core.config import RunConfig
from trainer_core.errors import UserError


class DistributedPanel(QGroupBox):
    """Off and folded by default; ticking it shows the host file, processes per host and backend."""

    changed = Signal()

    def __init__(self, parent=None):
        super().__init__("Distributed — train on several processes or Macs", parent)
        self.setCheckable(True)
        self.setChecked(False)
        self.setToolTip("Train data-parallel with mlx.launch on the machines of a host file. Every machine needs "
                        "this Python environment, the model and the data at the same paths.")
        self.hostfile = QLineEdit()
        self.hostfile.setObjectName("field:hostfile")
        self.hostfile.setPlaceholderText('hosts.json: [{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}, …]')
        self.hostfile_message = QLabel()
        self.hostfile_message.setObjectName("fieldMessage")
        self.hostfile_message.setWordWrap(True)
        self.hostfile_message.setVisible(False)
        browse = QPushButton("Choose…")
        browse.clicked.connect(self._browse)
        self.processes = QSpinBox()
        self.processes.setRange(1, 64)
        self.processes.setToolTip("Processes started on every host of the host file (ranks on one host are "
                                  "consecutive; rank 0 is the first host's first process and writes the run).")
        self.backend = QComboBox()
        self.backend.addItems(launch.BACKENDS)
        self.backend.setToolTip("ring: TCP between the hosts' \"ips\" (Ethernet, Thunderbolt bridge); "
                                "mpi: an MPI installation on every host")
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setObjectName("secondary")
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setObjectName("distributedStatus")
        self.status.setVisible(False)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.hostfile, 1)
        row.addWidget(browse)
        self.body = QWidget()
        grid = QGridLayout(self.body)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.addWidget(QLabel("Host file"), 0, 0)
        grid.addLayout(row, 0, 1, 1, 3)
        grid.addWidget(self.hostfile_message, 1, 1, 1, 3)
        grid.addWidget(QLabel("Processes per host"), 2, 0)
        grid.addWidget(self.processes, 2, 1)
        grid.addWidget(QLabel("Backend"), 2, 2)
        grid.addWidget(self.backend, 2, 3)
        grid.addWidget(self.summary, 3, 0, 1, 4)
        grid.addWidget(self.status, 4, 0, 1, 4)
        grid.setColumnStretch(1, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.body)
        self._fold(False)
        self.toggled.connect(self._fold)
        self._batch = (4, 1)
        for signal_ in (self.hostfile.textChanged, self.processes.valueChanged, self.backend.currentIndexChanged,
                        self.toggled):
            signal_.connect(self._refresh)
        self._refresh()

    def _fold(self, open_: bool) -> None:
        """Unticked: just the title line (no empty frame); ticked: the settings."""
        self.body.setVisible(open_)
        self.setFlat(not open_)
        self.layout().setContentsMargins(*((9, 9, 9, 9) if open_ else (0, 0, 0, 0)))
        # a flat, empty group box still draws a thin empty frame under its title in Fusion: none when folded
        self.setStyleSheet("" if open_ else "QGroupBox { border: none; padding-top: 0px; margin-top: 0px; }"
                                            "QGroupBox::title { subcontrol-origin: margin; left: 0px; padding: 0px; }")

    def enabled(self) -> bool:
        return self.isChecked()

    def backend_name(self) -> str:
        return self.backend.currentText()

    def hosts(self) -> list[dict]:
        """The host file's hosts, each repeated `processes per host` times (raises UserError)."""
        path = self.hostfile.text().strip()
        hosts = launch.read_hostfile(path)
        launch.check_backend(hosts, self.backend_name(), path)
        return launch.expand_hosts(hosts, self.processes.value())

    def launch_hostfile(self, workdir: Path) -> Path:
        """A host file mlx.launch can start these processes from (one entry per rank): the chosen file when it
        already is one, else the expanded hosts written to `workdir` (raises UserError)."""
        path = Path(self.hostfile.text().strip())
        hosts = self.hosts()
        if launch.read_hostfile(path) == hosts:
            return path
        Path(workdir).mkdir(parents=True, exist_ok=True)
        return launch.write_hostfile(hosts, Path(workdir) / f"hosts-{path.stem}-x{self.processes.value()}.json")

    def world_size(self) -> int:
        """Processes a run will use: 1 when the group is off or the host file is unusable."""
        try:
            return len(self.hosts()) if self.enabled() else 1
        except UserError:
            return 1

    def problem(self) -> str | None:
        if not self.enabled():
            return None
        if not self.hostfile.text().strip():
            return "Host file: choose the JSON file listing the machines to train on (Distributed settings)."
        try:
            self.hosts()
        except UserError as e:
            return e.message
        return None

    def set_batch(self, batch_size: int, accumulation: int) -> None:
        """The form's batch_size and gradient_accumulation_steps, for the global-batch line."""
        if (batch_size, accumulation) != self._batch:
            self._batch = (batch_size, accumulation)
            self._show_summary()

    def show_ranks(self, joined: list) -> None:
        self.show_status("Joined: " + ", ".join(f"rank {rank} on {host}" for rank, host in joined))

    def show_failure(self, message: str) -> None:
        self.show_status(f"Failed: {message}")

    def show_status(self, text: str) -> None:
        self.status.setText(text)
        self.status.setVisible(bool(text))

    @Slot()
    def _refresh(self, *_) -> None:
        shown = self.problem()
        if bool(shown) != bool(self.hostfile.property("invalid")):
            self.hostfile.setProperty("invalid", bool(shown))
            self.hostfile.setPalette(invalid_palette(self.hostfile) if shown else QPalette())
        self.hostfile_message.setText(shown or "")
        self.hostfile_message.setVisible(bool(shown))
        self._show_summary()
        self.changed.emit()

    def _show_summary(self) -> None:
        size = self.world_size()
        batch, accumulation = self._batch
        self.summary.setText(
            f"{size} processes · global batch = {batch} per process (Batch size) × {size} processes × "
            f"{accumulation} accumulation = {batch * size * accumulation} examples per step"
            if self.enabled() and self.problem() is None else "")

    def _browse(self) -> None:
        path = settings.ask_path(self, "open", "hostfiles", "Host file", filters="Host files (*.json)",
                                 fallback=Path(self.hostfile.text().strip()).parent if self.hostfile.text().strip()
                                 else "")
        if path:
            self.hostfile.setText(path)


class DistributedLauncher(QObject):
    """Runs one distributed training run through mlx.launch in a QProcess (its own session).

    Signals: started(run_dir), log(line), ranksJoined([(rank, host)]), failed(message),
    finished(dict: status "finished"|"stopped", step, total_steps, final_dir, run_dir).
    Exactly one of failed / finished ends a started run.
    """

    started = Signal(str)
    log = Signal(str)
    ranksJoined = Signal(list)
    failed = Signal(str)
    finished = Signal(dict)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.process: QProcess | None = None
        self.run_dir = ""
        self.hostfile: Path | None = None
        self._stop_file: Path | None = None
        self.since = 0  # metrics.jsonl's size when the launch started
        self._buffer = ""
        self._outcome = launch.Outcome()
        self._stops = 0

    @property
    def running(self) -> bool:
        return self.process is not None

    def start(self, config: RunConfig, hosts: list[dict], backend: str, workdir: Path,
              starting_port: int | None = None, force: bool = False) -> str:
        """Launch `config` on `hosts` (already expanded); returns the run folder rank 0 will write. `force`:
        `finetune train --force` (Start anyway past the memory estimate).
        `workdir` receives the expanded host file and the stop file. `starting_port`: default a free
        one when every rank is local (launch.local_starting_port), else mlx.launch's."""
        config = copy.deepcopy(config)
        config.run_name = config.run_name or f"{config.method}-distributed-{time.strftime('%Y%m%d-%H%M%S')}"
        config.validate()
        run_dir = Path(config.output_dir or _default_runs_root()).expanduser() / config.run_name
        args = cli_arguments(config) + (["--force"] if force else [])
        return self._launch(args, run_dir, hosts, backend, workdir, starting_port)

    def resume(self, run_dir: Path, checkpoint: Path | None, hosts: list[dict], backend: str, workdir: Path,
               starting_port: int | None = None) -> str:
        """Continue `run_dir` from `checkpoint` (default: its latest) on `hosts`: `finetune resume` on every rank."""
        args = ["resume", str(run_dir), *(["--checkpoint", str(checkpoint)] if checkpoint else [])]
        return self._launch(args, Path(run_dir), hosts, backend, workdir, starting_port)

    def _launch(self, finetune_args: list[str], run_dir: Path, hosts: list[dict], backend: str, workdir: Path,
                starting_port: int | None) -> str:
        if self.running:
            raise RuntimeError("a run is already in progress")
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.hostfile = launch.write_hostfile(hosts, workdir / f"hosts-{run_dir.name}.json")
        self._stop_file = workdir / f"stop-{run_dir.name}"
        self._stop_file.unlink(missing_ok=True)
        argv = launch.launch_command(self.hostfile, backend, finetune_args, stop_file=self._stop_file,
                                     starting_port=starting_port or launch.local_starting_port(hosts))
        self.run_dir = str(run_dir)
        try:  # a resumed run appends to its metrics.jsonl: how this launch ends is read after this offset
            self.since = (run_dir / "metrics.jsonl").stat().st_size
        except OSError:
            self.since = 0
        self._buffer, self._outcome, self._stops = "", launch.Outcome(), 0
        process = QProcess(self)
        process.setProcessChannelMode(QProcess.MergedChannels)
        process.setUnixProcessParameters(QProcess.UnixProcessFlag.CreateNewSession)
        process.readyReadStandardOutput.connect(self._read)
        process.finished.connect(self._ended)
        process.errorOccurred.connect(self._not_started)
        self.process = process
        process.start(argv[0], argv[1:])
        self.started.emit(self.run_dir)
        return self.run_dir

    def stop(self) -> None:
        """First call: ask every rank to stop at one step after a checkpoint (the stop file rank 0 watches).
        Second call: Ctrl-C to the launcher and the ranks on this Mac (abort; the last checkpoint stays valid)."""
        if self.process is None:
            return
        self._stops += 1
        if self._stops == 1:
            self._stop_file.touch()
        elif self.process.processId():
            try:
                os.killpg(self.process.processId(), signal.SIGINT)
            except ProcessLookupError:
                pass

    def wait(self, timeout_ms: int = 120_000) -> bool:
        return self.process is None or self.process.waitForFinished(timeout_ms)

    @Slot()
    def _read(self) -> None:
        self._buffer += bytes(self.process.readAllStandardOutput()).decode("utf-8", errors="replace")
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self._line(line.rstrip("\r"))

    def _line(self, line: str) -> None:
        self.log.emit(line)
        event = self._outcome.feed(line)
        if event is not None and "joined" in event:
            self.ranksJoined.emit(event["joined"])

    @Slot()
    def _not_started(self, error) -> None:
        """QProcess sends no `finished` for a program that never started (reported from the event loop:
        this can happen inside `start`)."""
        if error != QProcess.ProcessError.FailedToStart or self.process is None:
            return
        process, self.process = self.process, None
        message = f"Could not start mlx.launch with {process.program()}: {process.errorString()}."
        process.deleteLater()
        QTimer.singleShot(0, self, lambda: self.failed.emit(message))

    @Slot()
    def _ended(self, *_) -> None:
        self._read()
        if self._buffer:
            self._line(self._buffer)
        process, self.process = self.process, None
        process.deleteLater()
        if self._stop_file is not None:
            self._stop_file.unlink(missing_ok=True)
        status, detail = self._outcome.verdict(self.run_dir, stopping=self._stops > 0, since=self.since)
        if status == "failed":
            self.failed.emit(detail)
        else:
            self.finished.emit({"status": status, "step": int(detail.get("step", 0)),
                                "total_steps": int(detail.get("total_steps", 0)),
                                "final_dir": detail.get("final_dir"), "run_dir": self.run_dir})


def _default_runs_root() -> Path:
    from trainer_core.paths import default_runs_root
    return default_runs_root()

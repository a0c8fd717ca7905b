"""Distributed group and launcher: train one run data-parallel on several processes or Macs.

    panel = DistributedPanel()          # "Distributed" group: host file, processes per host, backend
    panel.enabled()                     # the group is ticked (else: the usual in-process run)
    panel.problem()                     # None, or why Start must stay disabled (host file unreadable, ...)
    launcher = DistributedLauncher()
    launcher.start(config, workdir)     # mlx.launch ... -- python -m trainer_core train <config as flags>
    launcher.stop()                     # Ctrl-C to every local process: all ranks stop at one step, checkpoint

The run itself is the headless CLI under `mlx.launch` (trainer_core/distributed.py, launch.py): rank 0
writes `<output_dir>/<run_name>` as any run does, so the plots follow its metrics.jsonl as usual.
The launcher reports which ranks joined (`ranksJoined`) and turns a failed rank into `failed` with
the rank's own message: mlx.launch itself exits 0 even then.
"""

from __future__ import annotations

import copy
import os
import signal
import time
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, Signal, Slot
from PySide6.QtWidgets import (QComboBox, QFileDialog, QGridLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit,
                               QPushButton, QSpinBox, QWidget)

from app.cli_line import cli_arguments
from trainer_core import launch
from trainer_core.config import RunConfig
from trainer_core.errors import UserError


class DistributedPanel(QGroupBox):
    changed = Signal()

    def __init__(self, parent=None):
        super().__init__("Distributed", parent)
        self.setCheckable(True)
        self.setChecked(False)
        self.setToolTip("Train data-parallel with mlx.launch on the machines of a host file. Every machine needs "
                        "this Python environment, the model and the data at the same paths.")
        self.hostfile = QLineEdit()
        self.hostfile.setPlaceholderText("hosts.json (mlx.launch host file)")
        browse = QPushButton("Choose…")
        browse.clicked.connect(self._browse)
        self.processes = QSpinBox()
        self.processes.setRange(1, 64)
        self.backend = QComboBox()
        self.backend.addItems(launch.BACKENDS)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setObjectName("distributedStatus")
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.hostfile, 1)
        row.addWidget(browse)
        holder = QWidget()
        holder.setLayout(row)
        grid = QGridLayout(self)
        grid.addWidget(QLabel("Host file"), 0, 0)
        grid.addWidget(holder, 0, 1, 1, 3)
        grid.addWidget(QLabel("Processes per host"), 1, 0)
        grid.addWidget(self.processes, 1, 1)
        grid.addWidget(QLabel("Backend"), 1, 2)
        grid.addWidget(self.backend, 1, 3)
        grid.addWidget(self.summary, 2, 0, 1, 4)
        grid.addWidget(self.status, 3, 0, 1, 4)
        grid.setColumnStretch(1, 1)
        self._batch = (4, 1)
        for signal_ in (self.hostfile.textChanged, self.processes.valueChanged, self.backend.currentIndexChanged,
                        self.toggled):
            signal_.connect(self._refresh)
        self._refresh()

    def enabled(self) -> bool:
        return self.isChecked()

    def hosts(self) -> list[dict]:
        """The host file's hosts, each repeated `processes per host` times (raises UserError)."""
        return launch.expand_hosts(launch.read_hostfile(self.hostfile.text().strip()), self.processes.value())

    def world_size(self) -> int:
        try:
            return len(self.hosts()) if self.enabled() else 1
        except UserError:
            return 0

    def problem(self) -> str | None:
        if not self.enabled():
            return None
        if not self.hostfile.text().strip():
            return "Distributed: choose a host file (the JSON file listing the machines)."
        try:
            self.hosts()
        except UserError as e:
            return e.message
        return None

    def set_batch(self, batch_size: int, accumulation: int) -> None:
        """The form's batch_size and gradient_accumulation_steps, for the global-batch line."""
        self._batch = (batch_size, accumulation)
        self._refresh()

    def show_ranks(self, joined: list) -> None:
        self.status.setText("Joined: " + ", ".join(f"rank {rank} on {host}" for rank, host in joined))

    def show_failure(self, message: str) -> None:
        self.status.setText(f"Failed: {message}")

    @Slot()
    def _refresh(self, *_) -> None:
        size = self.world_size()
        batch, accumulation = self._batch
        if self.enabled() and size:
            self.summary.setText(f"{size} processes · global batch = {batch} per process × {size} × {accumulation} "
                                 f"accumulation = {batch * size * accumulation} examples per step")
        else:
            self.summary.setText("")
        self.changed.emit()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Host file", self.hostfile.text(), "Host files (*.json)")
        if path:
            self.hostfile.setText(path)


class DistributedLauncher(QObject):
    """Runs one distributed training run through mlx.launch in a QProcess (its own session).

    Signals: started(run_dir), log(line), ranksJoined([(rank, host)]), failed(message), finished(run_dir).
    Exactly one of failed / finished ends a started run.
    """

    started = Signal(str)
    log = Signal(str)
    ranksJoined = Signal(list)
    failed = Signal(str)
    finished = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.process: QProcess | None = None
        self.run_dir = ""
        self._buffer = ""
        self._errors: list[str] = []
        self._exits: list[tuple[int, int]] = []
        self._stopping = False

    @property
    def running(self) -> bool:
        return self.process is not None

    def start(self, config: RunConfig, hosts: list[dict], backend: str, workdir: Path,
              starting_port: int | None = None) -> str:
        """Launch `config` on `hosts` (already expanded); returns the run folder rank 0 will write.
        `workdir` receives the expanded host file."""
        if self.running:
            raise RuntimeError("a run is already in progress")
        config = copy.deepcopy(config)
        config.run_name = config.run_name or f"{config.method}-distributed-{time.strftime('%Y%m%d-%H%M%S')}"
        config.validate()
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        hostfile = launch.write_hostfile(hosts, workdir / f"hosts-{config.run_name}.json")
        argv = launch.launch_command(hostfile, backend, cli_arguments(config), starting_port=starting_port)
        self.run_dir = str(Path(config.output_dir or _default_runs_root()).expanduser() / config.run_name)
        self._buffer, self._errors, self._exits, self._stopping = "", [], [], False
        process = QProcess(self)
        process.setProcessChannelMode(QProcess.MergedChannels)
        process.setUnixProcessParameters(QProcess.UnixProcessFlag.CreateNewSession)
        process.readyReadStandardOutput.connect(self._read)
        process.finished.connect(self._ended)
        self.process = process
        process.start(argv[0], argv[1:])
        self.started.emit(self.run_dir)
        return self.run_dir

    def stop(self) -> None:
        """Ctrl-C to the launcher and the ranks on this Mac: they stop at one step after a checkpoint."""
        if self.process is not None and self.process.processId():
            self._stopping = True
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
        event = launch.parse_line(line)
        if event is None:
            return
        if "joined" in event:
            self.ranksJoined.emit(event["joined"])
        elif "error" in event:
            self._errors.append(event["error"] if not event["rank"] else f"rank {event['rank']}: {event['error']}")
        elif event["code"] != 0:
            self._exits.append((event["exited"], event["code"]))

    @Slot()
    def _ended(self, *_) -> None:
        self._read()
        if self._buffer:
            self._line(self._buffer)
        process, self.process = self.process, None
        code = process.exitCode() if process.exitStatus() == QProcess.NormalExit else -1
        process.deleteLater()
        if self._errors:
            self.failed.emit(self._errors[0])
        elif self._exits or (code != 0 and not self._stopping):  # mlx.launch dies of the Ctrl-C itself
            rank, status = self._exits[0] if self._exits else (None, code)
            who = f"Process rank {rank}" if rank is not None else "mlx.launch"
            self.failed.emit(f"{who} exited with status {status}; see the log for its output.")
        else:
            self.finished.emit(self.run_dir)


def _default_runs_root() -> Path:
    from trainer_core.paths import default_runs_root
    return default_runs_root()

"""The Training tab: plot controls, the four live plots, and the collapsible log.

`pane.store` (a MetricsStore) receives the worker's records; a timer redraws
one plot per tick, only when something new arrived, and backs off when
painting is slow, so a fast run never floods the event loop. `load_run(run_dir)` shows a finished run from its
metrics.jsonl; `load_history(run_dir)` puts a resumed run's earlier records ahead of its live ones.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (QCheckBox, QComboBox, QHBoxLayout, QLabel, QMenu, QPlainTextEdit, QPushButton,
                               QSlider, QSplitter, QToolButton, QVBoxLayout, QWidget)

from app import settings
from app.common.keys import keys
from app.training.metrics_store import AXES, MetricsStore
from trainer_core.training.callbacks import read_metrics
from trainer_core.training.heartbeat import crashed
from app.training.plots import TrainingPlots

REDRAW_MS = 100  # shortest wait between ticks (one plot per tick, 4 plots)
MAX_REDRAW_MS = 2000  # longest: every plot is fresh within a few seconds however busy the GUI thread is
GUI_CPU_SHARE = 0.03  # the GUI thread's CPU time (all of it: plots, linked axes, status) stays near 3 % of a core
LOG_LINES = 5000


class TrainingPane(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.store = MetricsStore()
        self.run_dir: Path | None = None
        self.banner = QLabel(f"No run yet. Set up a run and press Start ({keys('Ctrl+R')}).")
        self.banner.setObjectName("banner")
        self.banner.setWordWrap(True)
        self.banner.setTextInteractionFlags(Qt.TextSelectableByMouse)

        self.axis = QComboBox()
        for key, label in AXES.items():
            self.axis.addItem(label, key)
        self.smoothing = QSlider(Qt.Horizontal)
        self.smoothing.setRange(0, 99)
        self.smoothing.setValue(90)
        self.smoothing.setFixedWidth(100)
        self.smoothing_label = QLabel("0.90")
        self.log_y = QCheckBox("Log y")
        self.follow = QPushButton("Follow")
        self.follow.setCheckable(True)
        self.follow.setChecked(True)
        self.follow.setToolTip("Keep the whole run in view; zooming or panning turns this off.")
        self.fourth_plot = QComboBox()
        self.fourth_plot.setToolTip("What the fourth plot (bottom right) shows: a group of the method's metrics, "
                                    "or throughput")
        # a long group name shortens the box rather than widening the window (the row set its minimum width)
        self.fourth_plot.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.fourth_plot.setMinimumContentsLength(9)
        self.export_button = QToolButton()
        self.export_button.setText("Export")
        self.export_button.setPopupMode(QToolButton.InstantPopup)
        export_menu = QMenu(self.export_button)
        export_menu.addAction("Plots as PNG…", self.export_png)
        export_menu.addAction("Metrics as CSV…", self.export_csv)
        self.export_button.setMenu(export_menu)
        controls = QHBoxLayout()
        for widget in (QLabel("x-axis"), self.axis, QLabel("  Smoothing"), self.smoothing, self.smoothing_label,
                       self.log_y, self.follow, QLabel("  Fourth plot"), self.fourth_plot):
            controls.addWidget(widget)
        controls.addStretch(1)
        controls.addWidget(self.export_button)

        self.plots = TrainingPlots(self.store)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(LOG_LINES)
        self.log.setLineWrapMode(QPlainTextEdit.WidgetWidth)  # long lines (advice, paths) read whole
        self.log.setObjectName("log")
        self.log_toggle = QToolButton()
        self.log_toggle.setText("Log")
        self.log_toggle.setCheckable(True)
        self.log_toggle.setChecked(True)
        self.log_toggle.setArrowType(Qt.DownArrow)
        self.log_toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.log_toggle.setAutoRaise(True)
        self.log_toggle.toggled.connect(self._toggle_log)
        log_box = QWidget()
        log_layout = QVBoxLayout(log_box)
        log_layout.setContentsMargins(0, 0, 0, 0)
        log_layout.setSpacing(2)
        log_layout.addWidget(self.log_toggle)
        log_layout.addWidget(self.log, 1)
        self.splitter = QSplitter(Qt.Vertical)
        self.splitter.addWidget(self.plots)
        self.splitter.addWidget(log_box)
        self.splitter.setStretchFactor(0, 4)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setChildrenCollapsible(False)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 12, 8)
        layout.addWidget(self.banner)
        layout.addLayout(controls)
        layout.addWidget(self.splitter, 1)

        self.axis.currentIndexChanged.connect(lambda _: self.plots.set_axis(self.axis.currentData()))
        self.smoothing.valueChanged.connect(self._smoothing_changed)
        self.log_y.toggled.connect(self.plots.set_log_y)
        self.follow.toggled.connect(self.plots.set_follow)
        self.fourth_plot.activated.connect(lambda _: self.plots.set_method_group(self.fourth_plot.currentText()))
        self._fill_metrics()
        self.plots.followChanged.connect(self.follow.setChecked)
        self._restore_options()
        self.timer = QTimer(self, singleShot=True, interval=REDRAW_MS, timeout=self._tick)
        self._cpu_mark = time.thread_time()
        self.timer.start()

    # ---- data in ---------------------------------------------------------------------
    def begin_run(self) -> None:
        self.store.clear()
        self.log.clear()
        self.run_dir = None
        self.plots.highlighted = None
        self.plots.hide_hover()
        self.plots.set_follow(True)
        self.plots.redraw(force=True)

    def add_metrics(self, record: dict) -> None:
        self.store.add(record)

    def add_checkpoint(self, info: dict) -> None:
        self.store.add_checkpoint(info)
        self.append_log(f"checkpoint step {info.get('step')} → {info.get('path')}")

    def append_log(self, text: str) -> None:
        self.log.appendPlainText(text.rstrip("\n"))

    def set_banner(self, text: str, level: str = "") -> None:
        self.banner.setText(text)
        self.banner.setProperty("level", level)
        self.banner.style().unpolish(self.banner)
        self.banner.style().polish(self.banner)

    def load_run(self, run_dir: Path) -> None:
        """Show a run from disk: its metrics.jsonl and log.txt."""
        run_dir = Path(run_dir)
        self.begin_run()
        self.run_dir = run_dir
        records = read_metrics(run_dir / "metrics.jsonl")
        for record in records:
            self.store.add(record)
        log = run_dir / "log.txt"
        if log.is_file():
            self.log.setPlainText(log.read_text(encoding="utf-8", errors="replace")[-200_000:])
        crash = crashed(run_dir, records) if (run_dir / "config.toml").is_file() else None  # died without a word
        self.set_banner(f"{run_dir.name}: {crash.text}" if crash else
                        f"{run_dir.name} — {len(self.store)} steps from {run_dir}", "error" if crash else "")
        self.plots.redraw(force=True)

    def load_history(self, run_dir: Path) -> int:
        """A resumed run just started: plot what it did before (the records ahead of its last `resumed`
        event in metrics.jsonl); its new records follow live. Returns the records added (0: a new run)."""
        records = read_metrics(Path(run_dir) / "metrics.jsonl")
        resumed = [i for i, r in enumerate(records) if r.get("type") == "event" and r.get("event") == "resumed"]
        if not resumed or len(self.store):
            return 0
        for record in records[:resumed[-1]]:
            self.store.add(record)
        self.plots.redraw(force=True)
        return resumed[-1]

    def _tick(self) -> None:
        """Redraw one stale plot and paint it now, then wait so the GUI thread stays mostly idle.

        The wait is the GUI thread's CPU time since the previous tick (this paint, the linked
        plots it made repaint, status updates, signal handling) divided by GUI_CPU_SHARE: on a
        2-core Mac-less test machine, painting every 100 ms cost the training 15-20 % of its
        tok/s (bench/gui_overhead.py); the live view needs no more than a plot or two a second.
        """
        self._fill_metrics()
        stale = self.plots.stale_panels()
        if stale and self.isVisible():
            name = stale[0]
            self.plots.draw_panel(name)
            self.plots.widgets[name].repaint()
        cpu = time.thread_time()
        spent, self._cpu_mark = cpu - self._cpu_mark, cpu
        self.timer.start(int(min(MAX_REDRAW_MS, max(REDRAW_MS, spent * 1000 / GUI_CPU_SHARE))))

    def _fill_metrics(self) -> None:
        """Offer every metric group the run has reported so far (new ones appear as they arrive)."""
        labels = list(self.plots.groups())
        if labels != [self.fourth_plot.itemText(i) for i in range(self.fourth_plot.count())]:
            current = self.plots.shown_group or labels[0]
            self.fourth_plot.blockSignals(True)
            self.fourth_plot.clear()
            self.fourth_plot.addItems(labels)
            self.fourth_plot.setCurrentText(current if current in labels else labels[0])
            self.fourth_plot.blockSignals(False)

    # ---- controls ----------------------------------------------------------------------
    def remember_options(self) -> None:
        """x-axis, smoothing and log y, for the next launch."""
        for key, value in (("axis", self.axis.currentData()), ("smoothing", self.smoothing.value()),
                           ("log_y", int(self.log_y.isChecked()))):
            settings.save_value(f"plots/{key}", value)

    def _restore_options(self) -> None:
        stored = settings.settings()
        index = self.axis.findData(stored.value("plots/axis", "step"))
        self.axis.setCurrentIndex(max(0, index))
        self.smoothing.setValue(int(stored.value("plots/smoothing", 90)))
        self.log_y.setChecked(int(stored.value("plots/log_y", 0)) == 1)

    def _smoothing_changed(self, value: int) -> None:
        self.smoothing_label.setText(f"{value / 100:.2f}")
        self.plots.set_smoothing(value / 100)

    def _toggle_log(self, shown: bool) -> None:
        self.log.setVisible(shown)
        self.log_toggle.setArrowType(Qt.DownArrow if shown else Qt.RightArrow)

    def _save_path(self, title: str, name: str, kind: str) -> str:
        """A save dialog opening in the folder last exported to (else Documents), named after the run."""
        stem = f"{self.run_dir.name}-{name}" if self.run_dir else name
        return settings.ask_path(self, "save", "exports", title, stem, kind)

    def export_png(self) -> None:
        path = self._save_path("Export plots as PNG", "plots.png", "PNG (*.png)")
        if path:
            self.plot_image().save(path)

    def plot_image(self):
        """The four plots as a picture, without the hover crosshair."""
        self.plots.hide_hover()
        return self.plots.grab()

    def export_csv(self) -> None:
        path = self._save_path("Export metrics as CSV", "metrics.csv", "CSV (*.csv)")
        if path:
            Path(path).write_text(self.store.to_csv(self.plots.smoothing), encoding="utf-8")

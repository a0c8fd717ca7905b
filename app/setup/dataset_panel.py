"""Dataset group: path picker (files, folders, Hugging Face datasets: dataset_search.py), detected
format and kind, counts, token-length histogram, preview.

The panel shows a `DatasetSummary` (dataset_analysis.py); the Setup pane
decides when to analyse (model, method or any data setting changed) and calls `analyze(request)`, which runs on the thread pool. Errors
are the data's own UserError messages (file, line, what is wrong). The format row forces a
format, opens the column-mapping dialog (column_mapping.py), and says what happens to multi-turn
chats and to rows longer than max_seq_length (counted in the lengths line before Start).
"""

from __future__ import annotations

import html

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import (QGridLayout, QGroupBox, QHBoxLayout, QLabel, QMenu, QPushButton,
                               QTextBrowser, QVBoxLayout)

from app import settings
from app.setup.column_mapping import columns_field
from app.setup.dataset_analysis import AnalysisRequest, DatasetSummary, analyze
from app.setup.dataset_search import DatasetSearchDialog
from app.common.form import bool_field, choice_field, text_field
from app.common.plot_style import COLORS, small_plot
from app.common.tasks import LatestTask
from trainer_core.config import DATA_FORMATS, DATA_KINDS
from trainer_core.data import first_record
from trainer_core.data.formats import COLUMNS_HINT
from trainer_core.errors import UserError

RECENT_KEY = "recent/datasets"


def percentile(lengths, q: float) -> int:
    return int(np.percentile(np.asarray(lengths), q)) if len(lengths) else 0


def summary_line(summary: DatasetSummary) -> str:
    """'sharegpt → chat · 400 train / 50 valid · 45% of tokens trained' (native formats: just the kind)."""
    counts = " / ".join(f"{n:,} {split}" for split, n in summary.counts.items())
    shape = summary.kind if summary.format.startswith("native") else summary.format.replace(" -> ", " → ")
    text = f"{shape} · {counts}"
    if summary.stats is not None:
        text += f" · {summary.stats.trained_fraction:.0%} of tokens trained"
    return text


def lengths_line(summary: DatasetSummary) -> str:
    stats = summary.stats
    if stats is None:
        return f"{summary.kind} data: token statistics come with the method that uses it."
    limit = summary.request.max_seq_length
    cut = "left out" if summary.request.long_rows == "drop" else "truncated"
    return (f"median {percentile(stats.lengths, 50)} · p95 {percentile(stats.lengths, 95)} · "
            f"max {max(stats.lengths, default=0)} tokens · {stats.truncated:,} longer than {limit} ({cut}) · "
            f"{stats.empty:,} dropped")


class DatasetPanel(QGroupBox):
    summaryChanged = Signal()

    def __init__(self, parent=None):
        super().__init__("Dataset", parent)
        self.summary: DatasetSummary | None = None
        self.error = ""
        self._task = LatestTask()
        self.destroyed.connect(self._task.cancel)
        self.path = text_field("data", placeholder="a .jsonl file, a folder with train.jsonl (+ valid.jsonl), "
                                                "or a Hugging Face dataset id (org/name)")
        self.kind = choice_field("data_kind", [(k, k or "detect") for k in DATA_KINDS],
                                 tooltip="Force the data kind; 'detect' reads it from the first record.")
        self.mask_prompt = bool_field("mask_prompt", "Train on responses only",
                                      tooltip="Loss on assistant/completion tokens only (prompt tokens masked).")
        self.format = choice_field("data_format", [("", "detect")] + [(f, f) for f in DATA_FORMATS],
                                   tooltip="Force the record format; 'detect' reads it from the first record.")
        self.columns = columns_field(self._first_record)
        self.last_turn_only = bool_field("last_turn_only", "Last turn only",
                                         tooltip="Multi-turn chats: train only the last assistant reply "
                                                 "(default: every reply).")
        self.long_rows = choice_field("long_rows", [("truncate", "truncate"), ("drop", "leave out")],
                                      tooltip="Rows longer than max seq length: cut them, or leave them out.")
        choose = QPushButton()
        choose.setText("Choose…")
        self.choose_menu = QMenu(choose)
        self.choose_menu.aboutToShow.connect(self._fill_menu)
        choose.setMenu(self.choose_menu)

        self.summary_label = QLabel("—")
        self.summary_label.setObjectName("headline")
        self.lengths_label = QLabel("")
        self.lengths_label.setObjectName("secondary")
        self.lengths_label.setWordWrap(True)
        self.lengths_label.setToolTip("Truncated: longer than max seq length, cut. Dropped: no trained token left.")
        self.histogram = small_plot(100, grow=True)
        self.histogram.getPlotItem().setLabel("bottom", "tokens per example")
        self.bars = pg.BarGraphItem(x=[], height=[], width=1, brush=COLORS["train"], pen=None)
        self.histogram.addItem(self.bars)
        self.limit_line = pg.InfiniteLine(angle=90, pen=pg.mkPen(COLORS["limit"], width=1, style=Qt.DashLine))
        self.histogram.addItem(self.limit_line)
        self.preview = QTextBrowser()
        self.preview.setOpenLinks(False)
        self.preview.setMinimumHeight(130)

        top = QHBoxLayout()
        top.addWidget(QLabel("Data"))
        top.addWidget(self.path.editor, 1)
        top.addWidget(choose)
        top.addSpacing(12)
        top.addWidget(QLabel("Kind"))
        top.addWidget(self.kind.editor)
        top.addSpacing(12)
        top.addWidget(self.mask_prompt.editor)
        shape = QHBoxLayout()
        shape.addWidget(QLabel("Format"))
        shape.addWidget(self.format.editor)
        shape.addWidget(self.columns.editor)
        shape.addSpacing(12)
        shape.addWidget(self.last_turn_only.editor)
        shape.addSpacing(12)
        shape.addWidget(QLabel("Over max length"))
        shape.addWidget(self.long_rows.editor)
        shape.addStretch(1)
        left = QVBoxLayout()
        left.addWidget(self.summary_label)
        left.addWidget(self.histogram, 1)
        left.addWidget(self.lengths_label)
        grid = QGridLayout()
        grid.addLayout(left, 0, 0)
        grid.addWidget(self.preview, 0, 1)
        grid.setColumnStretch(0, 2)
        grid.setColumnStretch(1, 3)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.path.message)
        layout.addLayout(shape)
        layout.addWidget(self.columns.message)
        layout.addLayout(grid, 1)

    @property
    def fields(self):
        return [self.path, self.kind, self.mask_prompt, self.format, self.columns, self.last_turn_only,
                self.long_rows]

    def _first_record(self) -> dict | None:
        """The dataset's first record as read, for the column-mapping dialog (None: shown why)."""
        try:
            return first_record(self.path.value()).data
        except UserError as e:
            self._show_empty(str(e))
            return None

    # ---- choosing --------------------------------------------------------------------
    def _fill_menu(self) -> None:
        menu = self.choose_menu
        menu.clear()
        menu.addAction("Data file…", self._choose_file)
        menu.addAction("Folder with train.jsonl…", self._choose_folder)
        menu.addAction("Hugging Face dataset…", self._choose_hub)
        recent = settings.recent(RECENT_KEY)
        if recent:
            menu.addSeparator()
            for path in recent:
                menu.addAction(path, lambda p=path: self.path.editor.setText(p))

    def _choose_file(self) -> None:
        path = settings.ask_path(self, "open", "data", "Choose a data file",
                                 filters="Datasets (*.jsonl *.json *.csv *.tsv *.parquet);;All files (*)")
        if path:
            self.path.editor.setText(path)

    def _choose_hub(self) -> None:
        dialog = DatasetSearchDialog(self)
        if dialog.exec() and dialog.chosen:
            self.path.editor.setText(dialog.chosen)

    def _choose_folder(self) -> None:
        path = settings.ask_path(self, "folder", "data", "Choose a folder holding train.jsonl")
        if path:
            self.path.editor.setText(path)

    # ---- analysis --------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._task.running

    def analyze(self, request: AnalysisRequest) -> None:
        """Start (or restart) the analysis of `request` on the thread pool."""
        self.summary, self.error = None, ""
        if not request.data.strip():
            self._task.cancel()
            self._show_empty("Choose a dataset.")
            return
        self.summary_label.setText("Reading the dataset…")
        self._task.start(lambda task: analyze(request, task), self._ready, self._failed, self._progress)
        self.summaryChanged.emit()

    def _progress(self, text: str) -> None:
        self.summary_label.setText(text)

    def _ready(self, summary: DatasetSummary | None) -> None:
        if summary is None:
            return
        self.summary, self.error = summary, ""
        settings.push_recent(RECENT_KEY, summary.request.data)
        self.summary_label.setText(summary_line(summary))
        self.lengths_label.setText(lengths_line(summary))
        self._draw_histogram(summary)
        self.preview.setHtml(self._preview_html(summary))
        self.summaryChanged.emit()

    def _failed(self, message: str) -> None:
        if message.endswith(COLUMNS_HINT):  # the window's way instead of the command line's
            message = message[:-len(COLUMNS_HINT)] + "say which column is which with the Columns… button below."
        self.summary, self.error = None, message
        self._show_empty("The dataset can't be used yet — see the message above.")
        self.summaryChanged.emit()

    def _show_empty(self, text: str) -> None:
        self.summary_label.setText(text)
        self.lengths_label.setText("")
        self.bars.setOpts(x=[], height=[], width=1)
        self.histogram.setVisible(False)  # no lengths: no axes left from the last dataset
        self.preview.clear()

    def _draw_histogram(self, summary: DatasetSummary) -> None:
        self.histogram.setVisible(summary.stats is not None)
        lengths = summary.stats.lengths if summary.stats else []
        limit = summary.request.max_seq_length
        self.limit_line.setPos(limit)
        if not lengths:
            self.bars.setOpts(x=[], height=[], width=1)
            return
        low, top = min(lengths), max(max(lengths), 1)
        show_limit = limit < top * 1.5
        start = 0 if show_limit else max(0, low - (top - low) * 0.1)
        bins = int(min(40, max(5, (top - start) // 4)))
        counts, edges = np.histogram(lengths, bins=bins, range=(start, top + 1))
        width = edges[1] - edges[0]
        self.bars.setOpts(x=edges[:-1] + width / 2, height=counts, width=width * 0.9)
        self.histogram.setXRange(start, max(top, limit) * 1.03 if show_limit else top + width, padding=0)
        self.limit_line.setVisible(show_limit)

    def _preview_html(self, summary: DatasetSummary) -> str:
        if summary.preview and summary.preview[0].columns:
            return self._columns_html(summary)
        palette = self.palette()
        base, accent = palette.color(QPalette.Base), palette.color(QPalette.Highlight)
        mark = QColor.fromRgbF(*(0.65 * b + 0.35 * a for b, a in zip(base.getRgbF()[:3], accent.getRgbF()[:3])))
        muted = palette.color(QPalette.PlaceholderText).name()
        rows = []
        for row in summary.preview:
            parts = []
            for text, trained in row.segments:
                body = html.escape(text).replace("\n", f"<span style='color:{muted}'>↵</span><br>")
                parts.append(f"<span style='background-color:{mark.name()}'>{body}</span>" if trained else body)
            share = f"{row.trained / row.tokens:.0%}<br><span style='color:{muted}'>{row.tokens} tok</span>" \
                if row.tokens else ""
            rows.append(f"<tr><td style='color:{muted}'>{row.line}</td><td>{''.join(parts)}</td>"
                        f"<td align='right'>{share}</td></tr>")
        header = (f"<tr><th align='left'>line</th><th align='left'>rendered through the chat template — "
                  f"<span style='background-color:{mark.name()}'>&nbsp;trained tokens&nbsp;</span></th>"
                  f"<th align='right'>trained</th></tr>")
        return (f"<table width='100%' cellspacing='0' cellpadding='4' style='font-size:small'>{header}"
                f"{''.join(rows)}</table>")

    def _columns_html(self, summary: DatasetSummary) -> str:
        """Preference records: prompt, chosen and rejected side by side."""
        muted = self.palette().color(QPalette.PlaceholderText).name()
        names = list(summary.preview[0].columns)
        header = ("<tr><th align='left' nowrap>line</th>" + "".join(f"<th align='left'>{n}</th>" for n in names)
                  + "</tr>")
        rows = [f"<tr><td style='color:{muted}'>{row.line}</td>" + "".join(
            f"<td width='{100 // len(names)}%'>{html.escape(row.columns.get(n, '')).replace(chr(10), '<br>')}</td>"
            for n in names) + "</tr>" for row in summary.preview]
        return (f"<table width='100%' cellspacing='0' cellpadding='4' style='font-size:small'>{header}"
                f"{''.join(rows)}</table>")

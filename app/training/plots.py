"""The Training tab's live plots: loss, learning rate, grad norm, method metrics.

Every curve is created once and fed with `setData` from a `MetricsStore`
by the Training pane's timer (`draw_panel()`, one stale panel per tick), never
per step. Long runs keep the full history:
pyqtgraph's 'peak' downsampling draws min and max of each pixel column.
While "follow" is on the view tracks the data (the loss y-range ignores the
top 1% of raw spikes, so one outlier cannot squash the curve); zooming or
panning by hand turns follow off until the user asks again.
A click on a checkpoint ◆ emits `checkpointClicked(step)`; `highlight_checkpoint(step)`
rings the marker of the checkpoint selected in the Checkpoints tab.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QGridLayout, QWidget

from app.training.metrics_store import AXES, MetricsStore, metric_groups
from app.common.plot_style import COLORS, SERIES, ShortFloatAxis, faint, is_dark, style_plot

LEGEND = {"brush": (128, 128, 128, 40), "verSpacing": -6}  # one translucent row at the top: curves show through
DEFAULT_TICK_TEXT = [(0, 0.8), (2, 0.6), (4, 0.4), (6, 0.2)]  # pyqtgraph's AxisItem default
LOG_TICK_TEXT = [(0, 0.8), (2, 0.15)]  # log y: label the decades, minor ticks only where one decade fills the plot
TITLES = {"loss": "Loss", "learning_rate": "Learning rate", "grad_norm": "Gradient norm",
          "method": "Method metrics"}


def robust_range(arrays, log: bool) -> tuple[float, float] | None:
    """y-range covering the data minus the top 1% of spikes (in log10 units when `log`)."""
    parts = [np.asarray(a, dtype=float) for a in arrays if len(a)]
    values = np.concatenate(parts) if parts else np.array([])
    values = values[np.isfinite(values)]
    if log:
        values = np.log10(values[values > 0])
    if not len(values):
        return None
    low, high = float(values.min()), float(np.percentile(values, 99)) if len(values) > 50 else float(values.max())
    if high <= low:
        high = low + (abs(low) * 0.1 or 1e-3)
    pad = (high - low) * 0.06
    return low - pad, high + pad


class _Hover:
    """Crosshair + value readout for one plot."""

    def __init__(self, widget: pg.PlotWidget, describe):
        self.widget, self.describe = widget, describe
        self.line = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen((128, 128, 128, 140), width=1))
        self.label = pg.TextItem(anchor=(0, 0), color=widget.getPlotItem().getAxis("left").textPen().color())
        for item in (self.line, self.label):
            item.setVisible(False)
            widget.addItem(item, ignoreBounds=True)
        self.proxy = pg.SignalProxy(widget.scene().sigMouseMoved, rateLimit=30, slot=self._moved)

    def hide(self) -> None:
        self.line.setVisible(False)
        self.label.setVisible(False)

    def _moved(self, event) -> None:
        pos = event[0]
        vb = self.widget.getPlotItem().vb
        if not self.widget.sceneBoundingRect().contains(pos) or not vb.sceneBoundingRect().contains(pos):
            self.hide()
            return
        point = vb.mapSceneToView(pos)
        text = self.describe(point.x())
        if not text:
            return
        self.line.setPos(point.x())
        (x0, x1), (y0, y1) = vb.viewRange()
        self.label.setText(text)
        self.label.setPos(x0 + (x1 - x0) * 0.02 if point.x() > (x0 + x1) / 2 else point.x(), y1)
        self.line.setVisible(True)
        self.label.setVisible(True)


class TrainingPlots(QWidget):
    followChanged = Signal(bool)
    checkpointClicked = Signal(int)  # the step of a clicked checkpoint marker

    def __init__(self, store: MetricsStore, parent=None):
        super().__init__(parent)
        self.store = store
        self.axis = "step"
        self.smoothing = 0.9
        self.log_y = False
        self.follow = True
        self._drawn: dict[str, tuple] = {}
        self.highlighted: int | None = None  # step of the ringed checkpoint marker
        self._auto = False  # True while we move the view ourselves
        self.widgets: dict[str, pg.PlotWidget] = {}
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(8)
        for i, name in enumerate(TITLES):
            axes = {"left": ShortFloatAxis("left")} if name == "learning_rate" else None
            widget = style_plot(pg.PlotWidget(axisItems=axes))
            item = widget.getPlotItem()
            item.setTitle(TITLES[name], size="10pt")
            item.vb.sigRangeChangedManually.connect(self._manual_range)
            widget.setMinimumHeight(170)
            self.widgets[name] = widget
            grid.addWidget(widget, i // 2, i % 2)
        loss = self.widgets["loss"]
        self.loss_legend = loss.addLegend(offset=(-10, 4), labelTextSize="8pt", colCount=4, **LEGEND)
        self.curves = {
            "loss": loss.plot([], [], pen=pg.mkPen(faint(COLORS["train"], 80), width=1), name="train"),
            "loss_ema": loss.plot([], [], pen=pg.mkPen(COLORS["ema_dark"] if is_dark() else COLORS["ema"], width=2),
                                  name="train (EMA)"),
            "eval": loss.plot([], [], pen=None, symbol="o", symbolSize=7, symbolBrush=COLORS["eval"],
                              symbolPen=None, name="eval"),
            "checkpoint": loss.plot([], [], pen=None, symbol="d", symbolSize=10, symbolBrush=COLORS["checkpoint"],
                                    symbolPen=pg.mkPen("w", width=0.5), name="checkpoint"),
            "selected_checkpoint": loss.plot([], [], pen=None, symbol="o", symbolSize=18, symbolBrush=None,
                                             symbolPen=pg.mkPen(COLORS["checkpoint"], width=2)),
            "learning_rate": self.widgets["learning_rate"].plot([], [], pen=pg.mkPen(COLORS["lr"], width=2)),
            "grad_norm": self.widgets["grad_norm"].plot([], [], pen=pg.mkPen(faint(COLORS["grad_norm"], 90))),
            "grad_norm_ema": self.widgets["grad_norm"].plot([], [], pen=pg.mkPen(COLORS["grad_norm"], width=2)),
        }
        self.method_legend = self.widgets["method"].addLegend(offset=(-10, 4), labelTextSize="8pt", colCount=4,
                                                              **LEGEND)
        self.method_curves: dict[str, pg.PlotDataItem] = {}
        self.method_group: str | None = None  # None: the first of metric_groups()
        self.shown_group = ""
        self.band_upper, self.band_lower = pg.PlotDataItem(), pg.PlotDataItem()
        self.band = pg.FillBetweenItem(self.band_upper, self.band_lower, brush=faint(SERIES[0], 45))
        self.widgets["method"].addItem(self.band)
        for name, curve in self.curves.items():
            if name.endswith("checkpoint"):  # a few points, each clickable: never thinned
                continue
            curve.setClipToView(True)
            curve.setDownsampling(auto=True, method="peak")
        self.curves["checkpoint"].sigPointsClicked.connect(self._marker_clicked)
        self.hovers = [_Hover(w, lambda x, n=name: self._describe(n, x)) for name, w in self.widgets.items()]
        self.set_axis("step")

    def hide_hover(self) -> None:
        """No crosshair or readout (a new run, an exported picture)."""
        for hover in self.hovers:
            hover.hide()

    def _method_curve(self, key: str) -> pg.PlotDataItem:
        color = SERIES[len(self.method_curves) % len(SERIES)]
        curve = pg.PlotDataItem([], [], pen=pg.mkPen(color, width=2))
        self.widgets["method"].addItem(curve)
        curve.setClipToView(True)
        curve.setDownsampling(auto=True, method="peak")
        self.method_curves[key] = curve
        return curve

    # ---- options -------------------------------------------------------------------
    def set_axis(self, axis: str) -> None:
        self.axis = axis
        for widget in self.widgets.values():
            widget.getPlotItem().setLabel("bottom", AXES[axis])
        self.set_follow(True)

    def set_smoothing(self, smoothing: float) -> None:
        self.smoothing = smoothing
        self.redraw(force=True)

    def set_log_y(self, log_y: bool) -> None:
        self.log_y = log_y
        for name in ("loss", "grad_norm"):
            item = self.widgets[name].getPlotItem()
            item.setLogMode(y=log_y)
            item.getAxis("left").setStyle(textFillLimits=LOG_TICK_TEXT if log_y else DEFAULT_TICK_TEXT)
        self.redraw(force=True)

    def set_follow(self, follow: bool) -> None:
        if follow != self.follow:
            self.follow = follow
            self.followChanged.emit(follow)
        self.redraw(force=True)

    def _manual_range(self, *_) -> None:
        if not self._auto:
            self.set_follow(False)

    # ---- drawing -----------------------------------------------------------------------
    def redraw(self, force: bool = False) -> bool:
        """Push the store into every panel whose data changed (all with `force`); True if any drew."""
        drew = False
        for name in TITLES:
            drew = self.draw_panel(name, force) or drew
        return drew

    def draw_panel(self, name: str, force: bool = False) -> bool:
        """Feed one panel's curves from the store if it is stale; True if it drew."""
        key = (self.store.version, self.axis)
        if not force and self._drawn.get(name) == key:
            return False
        self._drawn[name] = key
        x = self.store.x(self.axis)
        getattr(self, f"_draw_{name}")(x)
        if self.follow:
            self._auto = True
            try:
                self._follow(name, x)
            finally:
                self._auto = False
        return True

    def stale_panels(self) -> list[str]:
        key = (self.store.version, self.axis)
        return [name for name in TITLES if self._drawn.get(name) != key]

    def _draw_loss(self, x) -> None:
        store = self.store
        loss_ema = store.smoothed("loss", self.smoothing)
        self.curves["loss"].setData(x, store.series("loss"), connect="finite")
        self.curves["loss_ema"].setData(x, loss_ema, connect="finite")
        evals = self._evals()
        self.curves["eval"].setData(store.x_at([e["step"] for e in evals], self.axis,
                                               [e.get("time", 0) for e in evals]), [e["loss"] for e in evals])
        marks = store.checkpoints
        ema_at = np.interp([c["step"] for c in marks], store.x("step"), np.nan_to_num(loss_ema)) \
            if marks and len(store) else []
        mark_x = store.x_at([c["step"] for c in marks], self.axis, [c.get("time", 0) for c in marks])
        self.curves["checkpoint"].setData(mark_x, ema_at, data=[int(c["step"]) for c in marks])
        chosen = [i for i, c in enumerate(marks) if c["step"] == self.highlighted][-1:]
        self.curves["selected_checkpoint"].setData([mark_x[i] for i in chosen], [ema_at[i] for i in chosen])

    def _marker_clicked(self, _item, points, _event) -> None:
        if len(points):
            self.checkpointClicked.emit(int(points[0].data()))

    def highlight_checkpoint(self, step: int | None) -> None:
        """Ring the checkpoint marker of `step` (None: no ring)."""
        self.highlighted = step
        self.draw_panel("loss", force=True)

    def _draw_learning_rate(self, x) -> None:
        self.curves["learning_rate"].setData(x, self.store.series("learning_rate"), connect="finite")

    def _draw_grad_norm(self, x) -> None:
        self.curves["grad_norm"].setData(x, self.store.series("grad_norm"), connect="finite")
        self.curves["grad_norm_ema"].setData(x, self.store.smoothed("grad_norm", self.smoothing), connect="finite")

    def groups(self) -> dict[str, list[str]]:
        return metric_groups(self.store.method_keys())

    def set_method_group(self, label: str | None) -> None:
        self.method_group = label
        self.draw_panel("method", force=True)

    def _draw_method(self, x) -> None:
        groups = self.groups()
        label = self.method_group if self.method_group in groups else next(iter(groups))
        keys = groups[label]
        for key in keys:
            if key not in self.method_curves:
                self._method_curve(key)
        if label != self.shown_group:  # legend and title follow the chosen group
            self.shown_group = label
            self.method_legend.clear()
            for key, curve in self.method_curves.items():
                curve.setVisible(key in keys)
                if key in keys and len(keys) > 1:  # one curve: the title and axis name it, no box over the peaks
                    self.method_legend.addItem(curve, key.replace("_", " ") if key != "tokens_per_sec" else "tokens/s")
            self.method_legend.setVisible(len(keys) > 1)
            title = "Throughput" if label == "tokens/s" else f"{TITLES['method']}: {label}"
            item = self.widgets["method"].getPlotItem()
            item.setTitle(title, size="10pt")
            item.setLabel("left", label if len(keys) == 1 else "")
        for key in keys:
            self.method_curves[key].setData(x, self.store.series(key), connect="finite")
        banded = "reward_mean" in keys and "reward_std" in self.store.columns
        self.band.setVisible(banded)
        if banded:  # reward mean ± std
            mean, std = self.store.series("reward_mean"), self.store.series("reward_std")
            self.band_upper.setData(x, mean + std, connect="finite")
            self.band_lower.setData(x, mean - std, connect="finite")

    def _evals(self) -> list[dict]:
        return [e for e in self.store.evals if isinstance(e.get("loss"), (int, float))]

    def _follow(self, name: str, x) -> None:
        vb = self.widgets[name].getPlotItem().vb
        finite = x[np.isfinite(x)]
        if name != "loss" or not len(finite):
            vb.enableAutoRange()
            return
        store = self.store
        span = robust_range([store.series("loss"), store.smoothed("loss", self.smoothing),
                             np.asarray([e["loss"] for e in self._evals()], dtype=float)], self.log_y)
        if span is None:
            vb.enableAutoRange()
            return
        vb.setXRange(float(finite.min()), float(finite.max()) if len(finite) > 1 else finite.min() + 1, padding=0.02)
        low, high = span
        vb.setYRange(low, high + (high - low) * self._legend_room(vb), padding=0)

    def _legend_room(self, vb) -> float:
        """Headroom above the data, as a fraction of its span, for the legend row at the top of the loss plot,
        so that the curves pass below its labels, not through them."""
        legend = self.loss_legend.mapRectToScene(self.loss_legend.boundingRect()).height() + 6
        plot = vb.sceneBoundingRect().height()
        return min(0.5, legend / (plot - legend)) if plot > 2 * legend else 0.2

    def _describe(self, name: str, x: float) -> str:
        store = self.store
        xs = store.x(self.axis)
        if not len(xs):
            return ""
        i = int(np.clip(np.searchsorted(xs, x), 0, len(xs) - 1))
        if i > 0 and abs(xs[i - 1] - x) < abs(xs[i] - x):
            i -= 1
        step = int(store.columns["step"][i])

        def fmt(v):
            return "—" if not math.isfinite(v) else f"{v:.4g}"
        if name == "loss":
            text = f"step {step} · loss {fmt(store.series('loss')[i])} · EMA {fmt(store.smoothed('loss', self.smoothing)[i])}"
            evals = [e for e in store.evals if e.get("step") == step and isinstance(e.get("loss"), (int, float))]
            return text + (f" · eval {evals[0]['loss']:.4g}" if evals else "")
        if name == "method":
            keys = self.groups().get(self.shown_group, [])
            return f"step {step} · " + " · ".join(f"{k} {fmt(store.series(k)[i])}" for k in keys)
        return f"step {step} · {name.replace('_', ' ')} {fmt(store.series(name)[i])}"

"""pyqtgraph widgets that follow the window's palette (light or dark).

`small_plot()` makes a compact PlotWidget for the Setup pane; `COLORS` are the
series colours every plot uses, readable on light and dark backgrounds.
"""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication, QSizePolicy

pg.setConfigOptions(antialias=True)

COLORS = {
    "train": "#3b82f6",     # blue
    "ema": "#1d4ed8",       # deep blue
    "ema_dark": "#60a5fa",  # light blue, for dark backgrounds
    "eval": "#f97316",      # orange
    "checkpoint": "#10b981",  # green
    "lr": "#8b5cf6",        # violet
    "grad_norm": "#ef4444",  # red
    "limit": "#ef4444",
}
SERIES = ["#3b82f6", "#f97316", "#10b981", "#8b5cf6", "#ef4444", "#14b8a6", "#eab308", "#ec4899"]


def palette_colors() -> tuple[QColor, QColor]:
    """(background, foreground) for plots, from the application palette."""
    palette = QApplication.palette()
    return palette.color(QPalette.Base), palette.color(QPalette.Text)


def is_dark() -> bool:
    background, _ = palette_colors()
    return background.lightness() < 128


def style_plot(widget: pg.PlotWidget) -> pg.PlotWidget:
    background, foreground = palette_colors()
    widget.setBackground(background)
    item = widget.getPlotItem()
    for name in ("left", "bottom"):
        axis = item.getAxis(name)
        axis.setPen(pg.mkPen(foreground.lighter(150) if is_dark() else foreground.darker(100), width=1))
        axis.setTextPen(pg.mkPen(foreground))
    item.showGrid(x=True, y=True, alpha=0.15)
    return widget


class ShortFloatAxis(pg.AxisItem):
    """Tick labels like 2e-4 / 1.5e-4 instead of 0.00015 (learning rates)."""

    def tickStrings(self, values, scale, spacing):
        values = [round(v * scale, 12) for v in values]
        if 0 < max((abs(v) for v in values), default=0) < 1e-2:  # one notation for the whole axis
            return ["0" if v == 0 else f"{v:.1e}".replace(".0e", "e").replace("e-0", "e-") for v in values]
        from app.common.form import format_float
        return [format_float(v) for v in values]


def small_plot(height: int = 120, short_floats: bool = False, grow: bool = False) -> pg.PlotWidget:
    """A compact, non-interactive plot for previews; `grow` lets it take spare height (never ask for it)."""
    widget = pg.PlotWidget(axisItems={"left": ShortFloatAxis("left")} if short_floats else None)
    style_plot(widget)
    widget.setMinimumHeight(height)
    widget.setMaximumHeight(height + (80 if grow else 30))
    if grow:
        widget.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Ignored)
    widget.setMouseEnabled(x=False, y=False)
    widget.hideButtons()
    widget.setMenuEnabled(False)
    return widget


def faint(color: str, alpha: int = 90) -> QColor:
    c = QColor(color)
    c.setAlpha(alpha)
    return c

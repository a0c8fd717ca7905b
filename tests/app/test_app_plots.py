"""Plot behaviour: EMA, x-axes, downsampling keeps extremes, follow/outliers, status line."""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
import pytest

from PySide6.QtCore import QPointF
import app  # noqa: F401  (trainer_core first, PySide6 workaround)
from app.training.metrics_store import MetricsStore, ema, metric_groups
from app.training.plots import TrainingPlots, robust_range
from app.status_bar import RunStatus, duration, format_status
from app.training.pane import TrainingPane


def train_record(step: int, loss: float, **extra) -> dict:
    return {"type": "train", "step": step, "time": 1000.0 + step, "epoch": step / 10, "loss": loss,
            "learning_rate": 1e-3, "grad_norm": 1.0, "tokens": 100, "tokens_per_sec": 500.0,
            "step_time": 1.0, "peak_memory_gb": 0.5, **extra}


def test_ema_equals_hand_computation():
    values = [1.0, 2.0, 3.0, math.nan, 5.0]
    # e0 = 1; e1 = .5*1 + .5*2 = 1.5; e2 = .5*1.5 + .5*3 = 2.25; NaN carries 2.25; e4 = .5*2.25 + .5*5 = 3.625
    assert list(ema(values, 0.5)) == [1.0, 1.5, 2.25, 2.25, 3.625]
    assert list(ema([4.0, 8.0], 0.0)) == [4.0, 8.0]
    assert np.isnan(ema([math.nan, 2.0], 0.9)[0]) and ema([math.nan, 2.0], 0.9)[1] == 2.0


def test_store_smoothing_is_incremental_and_exact():
    store = MetricsStore()
    rng = np.random.default_rng(0)
    losses = list(rng.normal(3, 1, 50))
    for i, loss in enumerate(losses[:20], 1):
        store.add(train_record(i, loss))
    first = store.smoothed("loss", 0.8)
    for i, loss in enumerate(losses[20:], 21):
        store.add(train_record(i, loss))
    assert store.smoothed("loss", 0.8) == pytest.approx(ema(losses, 0.8))
    assert first == pytest.approx(ema(losses[:20], 0.8))


def test_x_axes_and_event_positions():
    store = MetricsStore()
    for step in range(1, 11):
        store.add(train_record(step, 2.0))
    store.add({"type": "eval", "step": 5, "time": 1005.0, "loss": 1.5})
    store.add({"type": "checkpoint", "step": 10, "time": 1010.5, "path": "x"})
    assert list(store.x("step")) == list(range(1, 11))
    assert list(store.x("epoch")) == pytest.approx([s / 10 for s in range(1, 11)])
    assert list(store.x("tokens")) == [100.0 * s for s in range(1, 11)]
    assert list(store.x("time")) == pytest.approx(list(range(1, 11)))  # first step started at t=0
    assert store.x_at([5], "epoch") == pytest.approx([0.5])
    assert store.x_at([5], "tokens") == pytest.approx([500.0])
    assert store.x_at([10], "time", [1010.5]) == pytest.approx([10.5])


def test_method_metrics_are_grouped_by_scale():
    assert metric_groups(["reward_mean", "reward_std", "reward/exact_match", "kl", "completion_length"]) == {
        "rewards": ["reward_mean", "reward/exact_match"], "kl": ["kl"], "completion length": ["completion_length"],
        "tokens/s": ["tokens_per_sec"]}
    assert list(metric_groups(["rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy"])) == [
        "rewards", "reward accuracy", "tokens/s"]
    assert metric_groups([]) == {"tokens/s": ["tokens_per_sec"]}


def test_method_plot_shows_one_group_with_a_std_band(qtbot):
    store = MetricsStore()
    plots = TrainingPlots(store)
    qtbot.addWidget(plots)
    store.add(train_record(1, 2.0, reward_mean=0.5, reward_std=0.25, kl=0.01, **{"reward/exact_match": 1.0}))
    store.add(train_record(2, 1.0))  # a later record without them: NaN, not a shifted column
    plots.redraw()
    assert plots.shown_group == "rewards"
    assert plots.method_curves["reward_mean"].isVisible() and plots.band.isVisible()
    assert plots.method_legend.isVisible() and len(plots.method_legend.items) > 1  # several curves: named
    assert list(plots.band_upper.getData()[1][:1]) == [0.75] and list(plots.band_lower.getData()[1][:1]) == [0.25]
    assert math.isnan(store.series("reward_mean")[1])
    plots.set_method_group("kl")
    assert plots.method_curves["kl"].isVisible() and not plots.method_curves["reward_mean"].isVisible()
    assert not plots.band.isVisible()
    assert plots.widgets["method"].getPlotItem().titleLabel.text.endswith("kl")
    # one curve: no legend box over its peaks; the axis names it
    assert not plots.method_legend.isVisible() and not plots.method_legend.items
    assert plots.widgets["method"].getPlotItem().getAxis("left").labelText == "kl"


def test_pane_offers_metric_groups_as_they_arrive(qtbot):
    pane = TrainingPane()
    qtbot.addWidget(pane)
    assert [pane.fourth_plot.itemText(i) for i in range(pane.fourth_plot.count())] == ["tokens/s"]
    pane.add_metrics(train_record(1, 2.0, mask_ratio=0.4))
    pane._fill_metrics()
    assert [pane.fourth_plot.itemText(i) for i in range(pane.fourth_plot.count())] == ["mask ratio", "tokens/s"]


def shown_plots(qtbot, size: tuple[int, int], losses) -> TrainingPlots:
    """Plots on screen at `size`, fed one train record a step with `losses`."""
    plots = TrainingPlots(MetricsStore())
    qtbot.addWidget(plots)
    plots.resize(*size)
    plots.show()
    qtbot.waitExposed(plots)
    for step, loss in enumerate(losses, 1):
        plots.store.add(train_record(step, float(loss)))
    return plots


def test_downsampling_keeps_the_extremes(qtbot):
    n = 50_000
    losses = np.full(n, 2.0) + np.sin(np.arange(n) / 50) * 0.1
    losses[31_337], losses[12_345] = 9.0, 0.25
    plots = shown_plots(qtbot, (800, 600), losses)
    plots.redraw()
    qtbot.wait(50)
    x, shown = plots.curves["loss"].getData()
    assert len(shown) < n / 10  # downsampled to the screen...
    assert shown.max() == 9.0 and shown.min() == 0.25  # ...but the spike and the dip are still drawn
    assert x.max() >= n - 100  # the full history, not a window of the last points


def test_follow_ignores_a_spike_and_manual_zoom_turns_it_off(qtbot):
    store = MetricsStore()
    plots = TrainingPlots(store)
    qtbot.addWidget(plots)
    for step in range(1, 201):
        store.add(train_record(step, 100.0 if step == 150 else 3.0 - step / 200))
    plots.redraw()
    (_, _), (y0, y1) = plots.widgets["loss"].getPlotItem().vb.viewRange()
    assert y1 < 15 and y0 < 2.1  # one outlier (100) does not squash the curve (its EMA tail and the legend's row do)
    assert robust_range([np.array([1.0, 10.0, 100.0])], log=True) == pytest.approx((-0.12, 2.12))
    vb = plots.widgets["loss"].getPlotItem().vb
    vb.sigRangeChangedManually.emit([True, True])
    assert plots.follow is False
    plots.set_follow(True)
    assert plots.follow is True


def test_the_loss_legend_sits_above_the_curves(qtbot):
    plots = shown_plots(qtbot, (1100, 520), [3.0 - step / 40 for step in range(1, 41)])
    plots.redraw(force=True)
    qtbot.wait(50)
    plots.redraw(force=True)  # the plot's size is known now
    vb = plots.widgets["loss"].getPlotItem().vb
    legend = plots.loss_legend.mapRectToScene(plots.loss_legend.boundingRect())
    highest = vb.mapViewToScene(QPointF(1, max(plots.curves["loss"].getData()[1])))
    assert highest.y() > legend.bottom()  # the top of the curve is drawn below the legend row, not through it


def test_log_y_and_axis_switch_redraw(qtbot):
    pane = TrainingPane()
    qtbot.addWidget(pane)
    for step in range(1, 21):
        pane.add_metrics(train_record(step, 10.0 / step))
    pane.log_y.setChecked(True)
    assert pane.plots.widgets["loss"].getPlotItem().ctrl.logYCheck.isChecked()
    pane.axis.setCurrentIndex(pane.axis.findData("tokens"))
    x, _ = pane.plots.curves["loss"].getData()
    assert x[-1] == 2000.0
    assert pane.plots.widgets["loss"].getPlotItem().getAxis("bottom").labelText == "tokens trained"
    csv = pane.store.to_csv().splitlines()
    assert csv[0].startswith("step,time,epoch,loss") and len(csv) == 21


def test_status_line_format():
    assert duration(192) == "3:12" and duration(3723) == "1:02:03" and duration(None) == "—"
    text = format_status(120, 480, 0.25, 1840.4, 192, 65, 1.3, 1.9e-4)
    assert text == "step 120/480 · epoch 0.25 · 1,840 tok/s · ETA 3:12 · elapsed 1:05 · peak 1.3 GB · lr 1.9e-4"


def test_run_status_eta_from_recent_steps():
    status = RunStatus(total_steps=100)
    for step in range(1, 11):
        status.add(train_record(step, 1.0) | {"time": 2.0 * step})  # 2 s per step
    assert status.seconds_per_step() == pytest.approx(2.0)
    assert "ETA 3:00" in status.text() and "step 10/100" in status.text()


def test_hover_reads_out_the_nearest_step(qtbot):
    store = MetricsStore()
    plots = TrainingPlots(store)
    qtbot.addWidget(plots)
    plots.resize(900, 600)
    plots.show()
    for step in range(1, 11):
        store.add(train_record(step, 10.0 - step))
    store.add({"type": "eval", "step": 4, "time": 1004.0, "loss": 5.5})
    plots.redraw()
    qtbot.wait(20)
    widget = plots.widgets["loss"]
    vb = widget.getPlotItem().vb
    scene_pos = vb.mapViewToScene(pg.Point(4.2, 6.0))
    hover = plots.hovers[0]
    hover._moved((scene_pos,))
    assert hover.label.isVisible()
    assert hover.label.toPlainText().startswith("step 4 · loss 6 · EMA") and "eval 5.5" in hover.label.toPlainText()


def test_long_log_lines_wrap_instead_of_hiding_behind_a_scroll_bar(qtbot):
    pane = TrainingPane()
    qtbot.addWidget(pane)
    pane.resize(900, 700)
    pane.show()
    pane.append_log("The quantized base is dequantized for training " * 8)
    qtbot.waitUntil(lambda: pane.log.isVisible())
    assert pane.log.horizontalScrollBar().maximum() == 0

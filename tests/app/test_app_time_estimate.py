"""The Setup tab's time estimate: measured on first use off the GUI thread, cached per model, priced from the
dataset's tokens, refined by a running run's own speed."""

from __future__ import annotations

import threading

import pytest

import app  # noqa: F401  (trainer_core first, PySide6 workaround)
from app.setup.pane import SetupPane
from app.setup.time_panel import TimePanel
from trainer_core import runner
from trainer_core.config import RunConfig
from trainer_core.training import time_estimate as te

from tests.app.test_app_setup import TIMEOUT, config, ready  # noqa: F401  (fixture)
from tests.app_home import studio_home  # noqa: F401  (autouse: fresh app home, no thread left)


def test_first_use_measures_a_few_steps_off_the_gui_thread_and_caches_them(qtbot, config, monkeypatch):
    monkeypatch.setattr(TimePanel, "auto_measure", True)
    threads = []
    measure = runner.measure_speed
    monkeypatch.setattr(runner, "measure_speed", lambda *a, **k: threads.append(threading.current_thread())
                        or measure(*a, **k))
    config.max_steps = 30
    pane = ready(qtbot, SetupPane(config))
    qtbot.addWidget(pane)
    assert te.load_rate(te.rate_key(pane.config())) is None
    qtbot.waitUntil(lambda: pane.time_panel.text().startswith("Time ≈"), timeout=60_000)
    assert threads and threads[0] is not threading.main_thread()  # MLX never on the GUI thread
    rate = te.load_rate(te.rate_key(pane.config()))
    assert rate is not None and rate.source == "measured" and rate.steps == 3
    assert "on this" in pane.time_panel.text() and "30 steps" in pane.time_panel.toolTip()


def test_a_cached_speed_prices_the_dataset_tokens_times_epochs(qtbot, config):
    config.max_steps, config.epochs = 0, 3
    pane = ready(qtbot, SetupPane(config))
    qtbot.addWidget(pane)
    stats = pane.dataset_panel.summary.stats
    tokens = stats.total_tokens * 3
    te.save_rate(te.rate_key(pane.config()), te.Rate(tokens_per_sec=tokens / (14 * 60), rows_per_sec=1.0))
    pane.refresh()
    work = pane.time_panel._plan[1]
    summary, steps = pane.dataset_panel.summary, work.steps  # evaluations: forward passes over the valid split
    evals = (steps // config.eval_every + (steps % config.eval_every > 0)) * summary.counts["valid"]
    assert work.eval_tokens == round(evals * stats.total_tokens / stats.examples) > 0
    minutes = 14 * (1 + work.eval_tokens / 3 / tokens)
    assert pane.time_panel.text().startswith(f"Time {te.format_duration(minutes * 60)} on this")
    assert f"{tokens:,} tokens + evaluations over {work.eval_tokens:,} tokens" in pane.time_panel.toolTip()
    pane.form["epochs"].set_value(6)  # twice the work, twice the time
    pane.refresh()
    assert pane.time_panel.text().startswith(f"Time {te.format_duration(2 * minutes * 60)}")


def test_without_a_speed_it_offers_to_measure_and_never_starts_on_its_own(qtbot, config):
    pane = ready(qtbot, SetupPane(config))
    qtbot.addWidget(pane)
    assert "Measure" in pane.time_panel.text() and not pane.time_panel.measuring


def test_a_start_cancels_a_measurement(qtbot, config):
    pane = ready(qtbot, SetupPane(config))
    qtbot.addWidget(pane)
    pane.time_panel.measure()
    assert pane.time_panel.measuring
    pane.set_locked(True)
    assert not pane.time_panel.measuring or pane.time_panel._task.task is None
    qtbot.wait(200)
    assert te.load_rate(te.rate_key(pane.config())) is None


def test_a_running_runs_speed_replaces_the_cached_one(qtbot, config, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config.batch_size, config.gradient_accumulation_steps = 2, 2
    config.save(run_dir / "config.toml")
    key = te.rate_key(config)
    te.save_rate(key, te.Rate(10.0, 1.0))
    panel = TimePanel()
    qtbot.addWidget(panel)
    panel.set_running(True)
    panel.follow_run(run_dir)
    for step in range(1, 8):
        panel.live({"type": "train", "step": step, "tokens_per_sec": 20.0 if step == 1 else 500.0,
                    "step_time": 0.5})
    rate = te.load_rate(key)
    assert rate.source == "live" and rate.tokens_per_sec == 500.0 and rate.rows_per_sec == 8.0

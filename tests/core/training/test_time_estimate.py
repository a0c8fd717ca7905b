"""The time estimate before Start: tokens to process, the cached speed per model, measuring it, formatting."""

from pathlib import Path

import pytest

from tests.train_helpers import make_config, write_chat_data
from trainer_core import runner
from trainer_core.config import RunConfig
from trainer_core.training import time_estimate as te


def test_workload_by_epochs_counts_the_dataset_tokens_times_epochs():
    work = te.workload(300, 4, dataset_tokens=50_000, dataset_rows=400, epochs=3, max_steps=0)
    assert (work.steps, work.rows, work.tokens) == (300, 1200, 150_000)


def test_workload_by_steps_is_steps_times_rows_times_the_mean_row():
    work = te.workload(10, 8, dataset_tokens=50_000, dataset_rows=400, epochs=3, max_steps=10)
    assert work.tokens == 80 * 125
    assert te.workload(10, 8, dataset_tokens=None, dataset_rows=400, epochs=1, max_steps=10).tokens is None


def test_estimate_prices_tokens_else_rows():
    rate = te.Rate(tokens_per_sec=100.0, rows_per_sec=2.0)
    assert te.estimate_seconds(te.Workload(10, 40, 6000), rate) == 60.0
    assert te.estimate_seconds(te.Workload(10, 40, None), rate) == 20.0
    assert te.estimate_seconds(te.Workload(10, 40, 6000), None) is None


def test_evaluations_are_priced_as_forward_passes_on_the_loops_schedule():
    # 25 steps, an eval every 10: at 10, 20 and the end (25); 40 valid rows of 30 tokens, or 2 batches of 4 rows
    assert te.evaluation_tokens(25, 10, 40, 30.0, 4, 0) == 3 * 40 * 30
    assert te.evaluation_tokens(20, 10, 40, 30.0, 4, 2) == 2 * 8 * 30  # the end is step 20: no third
    assert te.evaluation_tokens(25, 0, 40, 30.0, 4, 0) == 40 * 30  # only at the end
    assert te.evaluation_tokens(25, 10, 0, 30.0, 4, 0) == 0  # no valid split
    rate = te.Rate(tokens_per_sec=100.0, rows_per_sec=2.0)
    work = te.workload(10, 4, dataset_tokens=1200, dataset_rows=40, epochs=1, max_steps=10, eval_tokens=3000)
    assert te.estimate_seconds(work, rate) == pytest.approx((1200 + 3000 / 3) / 100)


@pytest.mark.parametrize("seconds, text", [(4, "≈ 10 s"), (44, "≈ 40 s"), (14 * 60 + 10, "≈ 14 min"),
                                           (2 * 3600 + 9 * 60, "≈ 2 h 10 min"), (3 * 3600, "≈ 3 h"),
                                           (5 * 86400, "≈ 5 days")])
def test_format_duration(seconds, text):
    assert te.format_duration(seconds) == text


def test_rate_skips_the_compiling_first_step_and_takes_the_median():
    records = [{"step": 1, "tokens_per_sec": 10.0, "step_time": 9.0},
               {"step": 2, "tokens_per_sec": 400.0, "step_time": 0.5},
               {"step": 3, "tokens_per_sec": 500.0, "step_time": 0.4},
               {"step": 4, "tokens_per_sec": 600.0, "step_time": 0.5}]
    rate = te.rate_from_records(records, rows_per_step=4)
    assert rate.tokens_per_sec == 500.0 and rate.rows_per_sec == 8.0 and rate.steps == 3
    assert te.rate_from_records(records[:1], 4) is None


def test_rates_are_cached_per_model_method_type_and_recompute(tmp_path):
    path = tmp_path / "speed.json"
    lora = RunConfig(model="m1", method="lora")
    te.save_rate(te.rate_key(lora), te.Rate(900.0, 3.0), path)
    assert te.load_rate(te.rate_key(lora), path).tokens_per_sec == 900.0
    assert te.load_rate(te.rate_key(RunConfig(model="m1", method="sft")), path) is None  # full weights: not priced
    assert te.load_rate(te.rate_key(RunConfig(model="m2", method="lora")), path) is None
    recomputed = RunConfig(model="m1", method="lora", gradient_checkpointing=True)  # ~1/3 slower: its own speed
    assert te.load_rate(te.rate_key(recomputed), path) is None
    path.write_text("{not json", encoding="utf-8")
    assert te.load_rate(te.rate_key(lora), path) is None  # a broken cache is only a missing estimate


def test_the_default_cache_lives_in_the_user_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("FINETUNE_STUDIO_HOME", str(tmp_path))
    te.save_rate("k", te.Rate(1.0, 1.0))
    assert (tmp_path / "cache" / te.RATES_FILE).is_file()


def test_measure_speed_times_real_steps_and_leaves_nothing_behind(tiny_model_dir, tmp_path):
    data = write_chat_data(tmp_path / "data", 16, 4)
    out = tmp_path / "runs"
    config = make_config(tiny_model_dir, data, out, method="lora", max_steps=100, save_every=5, eval_every=2)
    rate = runner.measure_speed(config, steps=3)
    assert rate is not None and rate.tokens_per_sec > 0 and rate.rows_per_sec > 0 and rate.steps == 2
    assert not out.exists() or not any(Path(out).iterdir())  # the throw-away run is gone


def test_measure_speed_stops_when_asked(tiny_model_dir, tmp_path):
    config = make_config(tiny_model_dir, write_chat_data(tmp_path / "data", 16), tmp_path / "runs", method="lora")
    assert runner.measure_speed(config, steps=5, should_stop=lambda: True) is None

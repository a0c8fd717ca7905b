"""The guard inside and after steps (training/guard.py): the memory limit stops a run with a checkpoint and
the out_of_memory reason, and the run resumes exactly; progress inside a GRPO rollout; Stop during a rollout
ends the run promptly (the partial step discarded) and it resumes exactly."""

from __future__ import annotations

import json

import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx

from tests.core.methods.test_grpo import run_config
from tests.helpers import train_losses
from tests.train_helpers import build
from trainer_core import runner
from trainer_core.errors import UserError
from trainer_core.training import guard
from trainer_core.training.callbacks import Callback, StopFlag, read_metrics

HOG = 64_000_000  # bytes the second step holds on top of what the first needed


class HogAtSecondStep(Callback):
    """Makes the second step need HOG bytes more than the first (an array held from its start)."""

    def __init__(self):
        self.held, self.peaks = None, []

    def on_step_begin(self, info):
        if info["step"] == 1:
            self.held = mx.zeros((HOG // 4,), dtype=mx.float32) + 1
            mx.eval(self.held)

    def on_step_end(self, metrics):
        self.peaks.append(metrics["peak_memory_gb"])

    def on_train_end(self, info):
        self.held = None


def stopped_events(run_dir):
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("event") == "stopped"]


def test_memory_limit_between_two_steps_checkpoints_stops_and_resumes(tmp_path, tiny_model_dir):
    probe = HogAtSecondStep()
    build(tiny_model_dir, tmp_path / "probe", max_steps=2, callbacks=[probe]).train()
    first = probe.peaks[0] * 1e9
    assert probe.peaks[1] * 1e9 > first + HOG / 2  # the second step does need more
    limit_gb = (first + HOG / 4) / 1e9

    hog = HogAtSecondStep()
    run = build(tiny_model_dir, tmp_path, max_steps=4, max_memory_gb=limit_gb, callbacks=[hog])
    with pytest.raises(UserError) as error:
        run.train()
    hog.held = None
    run_dir = tmp_path / "runs" / "run"
    assert error.value.reason == "out_of_memory"
    assert "peak" in str(error.value) and f"limit {limit_gb:.2f} GB" in str(error.value)
    assert "gradient_checkpointing" in str(error.value)  # what to try
    (event,) = stopped_events(run_dir)
    assert event["reason"] == "out_of_memory" and event["step"] == 2
    assert (run_dir / "checkpoints" / "step-000002").is_dir()

    full = build(tiny_model_dir, tmp_path / "full", max_steps=4)
    full.train()
    assert runner.resume(run_dir).step == 4  # without the hog, the steps fit
    assert train_losses(run_dir) == pytest.approx(train_losses(tmp_path / "full" / "runs" / "run"), rel=1e-6)


def test_default_limit_is_a_share_of_the_available_memory(monkeypatch):
    monkeypatch.setattr(guard, "available_memory", lambda: 10_000_000_000)
    monkeypatch.setattr(guard.mx, "get_active_memory", lambda: 0)
    assert guard.memory_limit(0) == 8_500_000_000 and guard.memory_limit(2.5) == 2_500_000_000
    monkeypatch.setattr(guard, "available_memory", lambda: 0)
    assert guard.memory_limit(0) == 0  # unknown: no limit


class Progress(Callback):
    def __init__(self, stop_at_step=None, flag=None):
        self.events, self.stop_at_step, self.flag = [], stop_at_step, flag

    def on_progress(self, info):
        self.events.append(dict(info))
        if self.flag is not None and info["step"] == self.stop_at_step and 0 < info["done"] < info["total"]:
            self.flag.request()


def test_a_rollout_reports_progress_not_written_to_metrics(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(guard, "PROGRESS_EVERY", 0.0)  # every token
    progress = Progress()
    runner.train(run_config(tmp_path, tiny_model_dir, "p", max_steps=2, generation_batch_size=4), [progress])
    rollout = [e for e in progress.events if e["phase"] == "rollout"]
    assert {e["step"] for e in rollout} == {1, 2}
    total = 2 * 4 * 6  # batch 2 x group 4 rows, at most 6 tokens each
    assert all(e["total"] == total and 0 < e["done"] <= total and e["per_sec"] >= 0 for e in rollout)
    step1 = [e["done"] for e in rollout if e["step"] == 1]
    assert step1 == sorted(step1) and step1[-1] == total and len(step1) > 2
    lines = (tmp_path / "runs" / "p" / "metrics.jsonl").read_text().splitlines()
    assert not any(json.loads(line).get("phase") for line in lines)


def test_stop_during_a_rollout_discards_the_step_and_resumes_exactly(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(guard, "PROGRESS_EVERY", 0.0)
    runner.train(run_config(tmp_path, tiny_model_dir, "full", max_steps=3))
    flag = StopFlag()
    progress = Progress(stop_at_step=2, flag=flag)
    result = runner.train(run_config(tmp_path, tiny_model_dir, "half", max_steps=3), [flag, progress])
    assert result.status == "stopped" and result.step == 1  # the second step never ran
    stop_seen = max(i for i, e in enumerate(progress.events) if e["step"] == 2 and 0 < e["done"] < e["total"])
    assert stop_seen == len(progress.events) - 1  # no token was sampled after the request
    run_dir = tmp_path / "runs" / "half"
    assert stopped_events(run_dir)[0]["reason"] == "user"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step-")) == ["step-000001"]
    assert runner.resume(run_dir).step == 3
    assert train_losses(run_dir) == pytest.approx(train_losses(tmp_path / "runs" / "full"), rel=1e-6, abs=1e-7)


class MlxLimit(Callback):
    def __init__(self):
        self.seen = []

    def on_step_end(self, metrics):
        self.seen.append(mx.get_memory_limit())


def test_mlx_memory_limit_while_it_trains_is_max_memory_gb_and_never_raised(tmp_path, tiny_model_dir):
    """MLX's limit during a run is the run's max_memory_gb (below MLX's own), restored afterwards (the GUI's chat
    shares the process); a max_memory_gb above MLX's own limit leaves MLX's."""
    before = mx.get_memory_limit()
    probe = MlxLimit()
    build(tiny_model_dir, tmp_path, max_steps=2, max_memory_gb=3.5, callbacks=[probe]).train()
    assert probe.seen == [min(3_500_000_000, before)] * 2
    assert mx.get_memory_limit() == before
    probe = MlxLimit()
    build(tiny_model_dir, tmp_path / "huge", max_steps=1, max_memory_gb=before * 4 / 1e9, callbacks=[probe]).train()
    assert probe.seen == [before] and mx.get_memory_limit() == before  # never raised above MLX's own


def test_mlx_memory_limit_holds_back_run_ahead():
    """Why the limit is set (guard.mlx_memory_limit): the fused head's backward in 16 chunks of 256 rows x 8192
    logits (8 MB each) peaks with several chunks in flight; held to a limit just above the live set, lower."""
    from trainer_core.training import head_loss
    h = mx.random.normal((4096, 64), key=mx.random.key(1)) * 0.1
    w = mx.random.normal((8192, 64), key=mx.random.key(2)) * 0.1
    t = mx.random.randint(0, 8192, (4096,), key=mx.random.key(3))
    mx.eval(h, w, t)
    grad = mx.grad(lambda h: head_loss.head_nll(h, w, t, False).sum())

    def peak():
        mx.synchronize()
        mx.reset_peak_memory()
        before = mx.get_active_memory()
        mx.eval(grad(h))
        return mx.get_peak_memory() - before
    assert head_loss.chunk_rows(8192) == 1024
    previous = head_loss.CHUNK
    head_loss.CHUNK = 256
    try:
        free = peak()
        with guard.mlx_memory_limit(mx.get_active_memory() + 20_000_000):
            held = peak()
    finally:
        head_loss.CHUNK = previous
    assert free > 3 * 8_388_608 and held < free / 2, (free, held)

"""Numerical faults that come from the data side (tests/core/training/test_loop.py poisons a weight instead):
a NaN/Inf loss skips the update and is recorded with its step and batch indices, a checkpoint
written right after a bad step holds the last good (finite) weights and optimizer state, only
K *consecutive* bad steps stop the run (which then resumes from its last good checkpoint), and
a gradient-norm explosion shows in metrics.jsonl as the unclipped norm."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from tests.crash_harness import check_checkpoint
from tests.train_helpers import build
from trainer_core import runner
from trainer_core.training.callbacks import read_metrics
from trainer_core.errors import UserError


def inject(loop, factors: dict[int, float]) -> None:
    """Multiply the loss of optimizer steps `factors` (0-based) by a factor: nan, inf, 1e4...

    Goes through the batch (`batch_for_step` adds the factor, `loss` applies it), so the
    weights and the compiled step stay untouched. Call before `loop.train()` (the first step traces)."""
    method = loop.method
    batch_for_step, loss = method.batch_for_step, method.loss

    def faulty_batch(batch, step):
        return {**batch_for_step(batch, step), "fault": mx.array(factors.get(step, 1.0), dtype=mx.float32)}

    def faulty_loss(model, batch):
        batch = dict(batch)
        fault = batch.pop("fault")
        loss_sum, weight, metrics = loss(model, batch)
        return loss_sum * fault, weight, metrics

    method.batch_for_step, method.loss = faulty_batch, faulty_loss


def arrays(path):
    return {k: np.array(v) for k, v in mx.load(str(path)).items()}


@pytest.mark.parametrize("factor", [math.nan, math.inf])
@pytest.mark.parametrize("accumulation", [1, 2])
def test_bad_loss_skips_the_update_and_the_next_checkpoint_is_the_last_good_one(tiny_model_dir, tmp_path,
                                                                                factor, accumulation):
    run = build(tiny_model_dir, tmp_path, n_train=16, method="lora", max_steps=5, batch_size=2, save_every=1,
                gradient_accumulation_steps=accumulation, learning_rate=1e-2, keep_last=0)
    inject(run.loop, {2: factor})
    order = run.loop._epoch_order(0)
    assert run.train().status == "finished"
    records = read_metrics(run.run_dir / "metrics.jsonl")
    bad = [r for r in records if r["type"] == "event" and r.get("event") == "bad_step"]
    assert len(bad) == 1 and bad[0]["step"] == 3
    assert bad[0]["batch_indices"] == [i for m in order[2 * accumulation:3 * accumulation] for i in m]
    train = {r["step"]: r for r in records if r["type"] == "train"}
    assert train[3]["loss"] is None and train[3]["grad_norm"] is None  # NaN/Inf written as null
    assert all(math.isfinite(train[s]["loss"]) for s in (1, 2, 4, 5))
    folder = run.run_dir / "checkpoints"
    for step in range(1, 6):
        assert check_checkpoint(folder / f"step-{step:06d}") == []  # all finite, complete
    before, after = folder / "step-000002", folder / "step-000003"
    for name in ("adapters.safetensors", "optimizer.safetensors"):
        a, b = arrays(before / name), arrays(after / name)
        assert all(np.array_equal(a[k], b[k]) for k in a), name  # the bad step changed nothing


def test_only_consecutive_bad_steps_stop(tiny_model_dir, tmp_path):
    run = build(tiny_model_dir, tmp_path, method="lora", max_steps=8, batch_size=2, max_bad_steps=3)
    inject(run.loop, {1: math.nan, 2: math.nan, 4: math.inf, 5: math.nan})
    assert run.train().status == "finished"
    bad = [r["step"] for r in read_metrics(run.run_dir / "metrics.jsonl") if r.get("event") == "bad_step"]
    assert bad == [2, 3, 5, 6]


def test_k_consecutive_bad_steps_stop_clearly_and_the_run_resumes(tiny_model_dir, tmp_path):
    whole = build(tiny_model_dir, tmp_path / "whole", method="lora", max_steps=8, batch_size=2, save_every=1,
                  keep_last=0)
    whole.train()
    run = build(tiny_model_dir, tmp_path / "bad", method="lora", max_steps=8, batch_size=2, save_every=1,
                keep_last=0, max_bad_steps=3)
    inject(run.loop, {3: math.nan, 4: math.nan, 5: math.nan})  # e.g. a bad stretch of data
    with pytest.raises(UserError) as err:
        run.train()
    message = str(err.value)
    assert "stopped at step 6" in message and "3 consecutive" in message and "no NaN was saved" in message
    folder = run.run_dir / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == [f"step-{s:06d}" for s in range(1, 6)]
    assert all(check_checkpoint(p) == [] for p in folder.iterdir())
    assert not (run.run_dir / "final").exists()
    # the fault gone (here: a fresh process without the injection), the run resumes from step 5
    result = runner.resume(run.run_dir)
    assert result.status == "finished" and result.step == 8
    final = arrays(run.run_dir / "final" / "adapters.safetensors")
    assert all(np.isfinite(v).all() for v in final.values())
    # the 3 skipped steps are missing from its history, so it differs from the uninterrupted run
    ref = arrays(whole.run_dir / "final" / "adapters.safetensors")
    assert any(not np.array_equal(final[k], ref[k]) for k in ref)


def test_gradient_norm_explosion_is_recorded_unclipped(tiny_model_dir, tmp_path):
    run = build(tiny_model_dir, tmp_path, method="lora", max_steps=6, batch_size=2, max_grad_norm=1.0,
                learning_rate=1e-3)
    inject(run.loop, {3: 1e4})
    assert run.train().status == "finished"
    train = {r["step"]: r for r in read_metrics(run.run_dir / "metrics.jsonl") if r["type"] == "train"}
    norms = [train[s]["grad_norm"] for s in (1, 2, 3, 5, 6)]
    assert train[4]["grad_norm"] > 1000 * max(norms)  # the spike is visible, not clipped away
    assert all(math.isfinite(train[s]["loss"]) for s in train)  # clipping kept the run going
    assert not [r for r in read_metrics(run.run_dir / "metrics.jsonl") if r.get("event") == "bad_step"]

"""trainer_core.training.loop / step: accumulation, clipping, NaN guard, metrics, stop, final (what trains:
test_what_trains.py).

Runs use the tiny random Llama (conftest) and a small chat dataset written into tmp_path.
"""

import json
import math

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from trainer_core import runner
from trainer_core.training.callbacks import Callback, read_metrics
from trainer_core.training.checkpoint import read_state
from trainer_core.config import LoraConfig
from trainer_core.errors import UserError
from trainer_core.training.losses import sft_loss
from tests.train_helpers import build, flat_params, reference_loss

DESIGN_TRAIN_KEYS = {"type", "step", "time", "loss", "learning_rate", "grad_norm", "tokens", "tokens_per_sec",
                     "peak_memory_gb"}


def spread_examples(run, n=4):
    """n training examples with clearly different numbers of target tokens."""
    examples = sorted(run.loop.train_examples, key=lambda e: sum(e.target_mask))
    picks = [examples[round(i * (len(examples) - 1) / (n - 1))] for i in range(n)]
    assert len({sum(e.target_mask) for e in picks}) == n
    return picks


def mean_gradient(model, batches):
    """Gradient of the mean over micro-batches of each micro-batch's per-token loss."""
    def loss(m):
        return sum(s / n for s, n, _ in (sft_loss(m, b) for b in batches)) / len(batches)
    _, grads = nn.value_and_grad(model, loss)(model)
    return {k: np.array(v) for k, v in tree_flatten(grads)}


TOLERANCE = 5e-5  # of the largest update entry (float32 noise is ~1e-6)


# ---- gradient accumulation ------------------------------------------------------------

@pytest.mark.parametrize("method", ["sft", "lora"])
def test_accumulation_equals_one_big_batch(tiny_model_dir, tmp_path, method):
    """k micro-batches in one step = one k-times-bigger batch: same loss, grad norm and update.

    adam_eps = 1 makes the first Adam update lr * g / (|g| + 1), a smooth function of the
    gradient (with a tiny eps it would be lr * sign(g), hiding gradient differences).
    """
    splits = [(4,), (2, 2), (1, 1, 1, 1), (3, 1), (1, 3)]
    lr = 0.5
    outcomes = []
    for n, split in enumerate(splits):
        run = build(tiny_model_dir, tmp_path / f"r{n}", method=method, max_grad_norm=0.0, adam_eps=1.0,
                    learning_rate=lr, lora=LoraConfig(rank=4))
        examples = spread_examples(run)
        collate = run.loop.method.collate
        before = flat_params(run.loop.model, trainable=True)
        batches, start = [], 0
        for size in split:
            batches.append(collate(examples[start:start + size]))
            start += size
        if n == 0:
            # the comparison below can fail: weighting micro-batches by their mean (not by tokens)
            # moves the gradient by far more than the tolerance used
            right = mean_gradient(run.loop.model, [collate(examples)])
            wrong = mean_gradient(run.loop.model, [collate(examples[:3]), collate(examples[3:])])
            gap = max(np.abs(right[k] - wrong[k]).max() for k in right) / max(np.abs(g).max() for g in right.values())
            assert gap > 20 * TOLERANCE
        loss_sum, weight, _, norm, ok = run.loop.steps.train_step(batches, lr)
        assert ok.item()
        after = flat_params(run.loop.model, trainable=True)
        outcomes.append((before, {k: after[k] - before[k] for k in after}, loss_sum.item() / weight.item(),
                         weight.item(), norm.item()))
    ref_before, ref_delta, ref_loss, ref_weight, ref_norm = outcomes[0]
    scale = max(np.abs(d).max() for d in ref_delta.values())
    assert scale > 0
    moved = [k for k, d in ref_delta.items() if np.abs(d).max() > 0]
    assert len(moved) >= len(ref_delta) // 2
    for split, (before, delta, loss, weight, norm) in zip(splits[1:], outcomes[1:]):
        assert weight == ref_weight, split
        assert loss == pytest.approx(ref_loss, rel=1e-5), split
        assert norm == pytest.approx(ref_norm, rel=1e-4), split
        for k in ref_delta:
            np.testing.assert_array_equal(before[k], ref_before[k])  # same start
            np.testing.assert_allclose(delta[k], ref_delta[k], rtol=0, atol=TOLERANCE * scale, err_msg=f"{split} {k}")


def test_accumulating_loop_consumes_k_micro_batches_per_step(tiny_model_dir, tmp_path):
    run = build(tiny_model_dir, tmp_path, batch_size=2, gradient_accumulation_steps=2, max_steps=0, epochs=1)
    assert (run.loop.micro_per_epoch, run.loop.steps_per_epoch, run.loop.total_steps) == (8, 4, 4)
    run.train()
    train = [r for r in read_metrics(run.run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    # every example was seen exactly once: the trained tokens add up to the dataset's
    assert sum(r["tokens"] for r in train) == sum(sum(e.target_mask[1:]) for e in run.loop.train_examples)


# ---- clipping ---------------------------------------------------------------------------

def test_clipping_bounds_the_update(tiny_model_dir, tmp_path):
    """First Adam step with eps = 1: delta = -lr * gc / (|gc| + 1), gc = g * min(1, c / |g|)."""
    lr = 0.5
    probe = build(tiny_model_dir, tmp_path / "probe")
    examples = spread_examples(probe)
    batch = probe.loop.method.collate(examples)
    model = probe.loop.model

    def mean_loss(m):
        loss_sum, n, _ = sft_loss(m, batch)
        return loss_sum / n

    _, grads = nn.value_and_grad(model, mean_loss)(model)
    grads = {k: np.array(v, dtype=np.float64) for k, v in tree_flatten(grads)}
    grad_norm = math.sqrt(sum((g ** 2).sum() for g in grads.values()))
    max_norm = grad_norm / 10

    run = build(tiny_model_dir, tmp_path / "run", max_grad_norm=max_norm, adam_eps=1.0, learning_rate=lr)
    before = flat_params(run.loop.model)
    _, _, _, norm, ok = run.loop.steps.train_step([run.loop.method.collate(examples)], lr)
    after = flat_params(run.loop.model)
    assert ok.item()
    assert norm.item() == pytest.approx(grad_norm, rel=1e-4)  # reported norm is the pre-clip norm
    delta = {k: after[k].astype(np.float64) - before[k] for k in before}
    update_norm = math.sqrt(sum((d ** 2).sum() for d in delta.values()))
    assert update_norm <= lr * max_norm * (1 + 1e-4)
    unclipped_lower_bound = lr * grad_norm / (1 + max(np.abs(g).max() for g in grads.values()))
    assert unclipped_lower_bound > 2 * lr * max_norm  # without clipping the bound would be broken
    scale = max_norm / grad_norm
    for k, g in grads.items():
        expected = -lr * (g * scale) / (np.abs(g * scale) + 1.0)
        np.testing.assert_allclose(delta[k], expected, rtol=0, atol=1e-4 * lr * max_norm, err_msg=k)


# ---- NaN guard ----------------------------------------------------------------------------

POISONED = "model.layers.0.mlp.down_proj.weight"


class Poison(Callback):
    """Puts a NaN into one weight before step `at` (0-based) and restores it after that step."""

    def __init__(self, at, restore=True):
        self.at, self.restore, self.loop = at, restore, None
        self.seen = {}

    def on_step_begin(self, info):
        if info["step"] != self.at:
            return
        model = self.loop.model
        self.seen["before"] = flat_params(model)
        self.seen["t_before"] = self.loop.steps.optimizer_state["t"].item()
        self.seen["m_before"] = {k: np.array(v) for k, v in self.loop.steps.optimizer_state["m"].items()}
        self.original = dict(tree_flatten(model.parameters()))[POISONED]
        poisoned = np.array(self.original)
        poisoned[0, 0] = np.nan
        model.load_weights([(POISONED, mx.array(poisoned))], strict=False)

    def on_step_end(self, metrics):
        if metrics["step"] != self.at + 1:
            return
        self.seen["after"] = flat_params(self.loop.model)
        self.seen["t_after"] = self.loop.steps.optimizer_state["t"].item()
        self.seen["m_after"] = {k: np.array(v) for k, v in self.loop.steps.optimizer_state["m"].items()}
        if self.restore:
            self.loop.model.load_weights([(POISONED, self.original)], strict=False)


def test_nan_step_is_skipped_and_recorded(tiny_model_dir, tmp_path):
    poison = Poison(at=1)
    run = build(tiny_model_dir, tmp_path, callbacks=[poison], max_steps=4, learning_rate=1e-2)
    poison.loop = run.loop
    result = run.train()
    seen = poison.seen
    assert result.status == "finished" and result.step == 4
    # the bad step changed nothing: weights (NaN included, nothing else touched) and optimizer moments
    for k, v in seen["before"].items():
        if k == POISONED:
            assert np.isnan(seen["after"][k][0, 0]) and np.isnan(seen["after"][k]).sum() == 1
            np.testing.assert_array_equal(seen["after"][k].ravel()[1:], v.ravel()[1:])
        else:
            np.testing.assert_array_equal(seen["after"][k], v, err_msg=k)
    assert seen["t_after"] == seen["t_before"] == 1
    for k, v in seen["m_before"].items():
        np.testing.assert_array_equal(seen["m_after"][k], v)
    records = read_metrics(run.run_dir / "metrics.jsonl")
    bad = [r for r in records if r["type"] == "event" and r.get("event") == "bad_step"]
    assert [r["step"] for r in bad] == [2]
    train = {r["step"]: r for r in records if r["type"] == "train"}
    assert train[2]["loss"] is None  # NaN written as null
    assert all(math.isfinite(train[s]["loss"]) for s in (1, 3, 4))
    assert run.loop.steps.optimizer_state["t"].item() == 3  # 4 steps, one skipped
    final = mx.load(str(run.run_dir / "final" / "adapters.safetensors"))
    assert all(not mx.isnan(v).any().item() for v in final.values())


def test_consecutive_bad_steps_stop_training(tiny_model_dir, tmp_path):
    poison = Poison(at=0, restore=False)
    run = build(tiny_model_dir, tmp_path, callbacks=[poison], max_steps=10, max_bad_steps=3)
    poison.loop = run.loop
    with pytest.raises(UserError, match="3 consecutive"):
        run.train()
    assert run.loop.step == 3
    assert not (run.run_dir / "final").exists()


# ---- learning ----------------------------------------------------------------------------------

def test_overfitting_a_tiny_set_lowers_the_loss(tiny_model_dir, tmp_path):
    run = build(tiny_model_dir, tmp_path, n_train=4, max_steps=30, learning_rate=3e-3)
    examples = run.loop.train_examples
    start_sum, count = reference_loss(run.loop.model, examples)
    result = run.train()
    end_sum, _ = reference_loss(run.loop.model, examples)
    assert end_sum / count < 0.5 * start_sum / count
    assert result.last_train_loss < 0.6 * start_sum / count
    losses = [r["loss"] for r in read_metrics(run.run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert losses[0] == pytest.approx(start_sum / count, rel=1e-4)  # first step reports the loss before it
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


# ---- metrics.jsonl, eval, checkpoints, stop, final ------------------------------------------------

def test_metrics_records(tiny_model_dir, tmp_path):
    peak = 1e-3
    run = build(tiny_model_dir, tmp_path, n_valid=5, batch_size=2, gradient_accumulation_steps=2, max_steps=4,
                lr_schedule="cosine", warmup_steps=1, learning_rate=peak, eval_every=2, save_every=2)
    result = run.train()
    records = read_metrics(run.run_dir / "metrics.jsonl")
    lines = (run.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(records)  # every line parses
    for r in records:
        assert isinstance(r["step"], int) and isinstance(r["time"], float)
        assert r["type"] in ("train", "eval", "checkpoint", "event")
    train = [r for r in records if r["type"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    for r in train:
        assert DESIGN_TRAIN_KEYS <= set(r), DESIGN_TRAIN_KEYS - set(r)
        assert math.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["tokens"] > 0
        assert r["tokens_per_sec"] > 0 and r["peak_memory_gb"] >= 0
    expected_lr = [peak] + [peak * (1 + math.cos(math.pi * p / 3)) / 2 for p in range(3)]  # warmup 1, then 3 decay
    assert [r["learning_rate"] for r in train] == pytest.approx(expected_lr)
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4]
    want_sum, want_count = reference_loss(run.loop.model, run.loop.valid_examples)  # final weights = step 4
    assert evals[-1]["loss"] == pytest.approx(want_sum / want_count, rel=1e-4)
    assert evals[-1]["tokens"] == want_count
    assert result.last_eval_loss == pytest.approx(evals[-1]["loss"])
    assert result.best_eval_loss == pytest.approx(min(r["loss"] for r in evals))
    checkpoints = [r for r in records if r["type"] == "checkpoint"]
    assert [r["step"] for r in checkpoints] == [2, 4]
    assert all((run.run_dir / "checkpoints" / f"step-{s:06d}").is_dir() for s in (2, 4))
    assert records[-2]["type"] == "event" and records[-2]["event"] == "train_end"
    assert (records[-1]["event"], records[-1]["reason"]) == ("stopped", "finished")  # DESIGN.md: the last record
    assert records[-2]["status"] == "finished"
    assert (run.run_dir / "log.txt").read_text().strip()
    assert runner.load_run_config(run.run_dir) == run.config


def test_report_every_thins_train_records(tiny_model_dir, tmp_path):
    run = build(tiny_model_dir, tmp_path, max_steps=5, report_every=2)
    run.train()
    steps = [r["step"] for r in read_metrics(run.run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert steps == [2, 4, 5]  # the last step is always reported


class StopAfter(Callback):
    def __init__(self, step, via_loop=False):
        self.step, self.via_loop, self.loop, self.done = step, via_loop, None, False

    def on_step_end(self, metrics):
        if metrics["step"] == self.step:
            if self.via_loop:
                self.loop.request_stop()
            self.done = True

    def should_stop(self):
        return self.done and not self.via_loop


@pytest.mark.parametrize("via_loop", [False, True])
def test_stop_request_ends_with_a_checkpoint(tiny_model_dir, tmp_path, via_loop):
    stop = StopAfter(2, via_loop)
    run = build(tiny_model_dir, tmp_path, callbacks=[stop], max_steps=6)
    stop.loop = run.loop
    result = run.train()
    assert result.status == "stopped" and result.step == 2 and result.final_dir is None
    checkpoint = run.run_dir / "checkpoints" / "step-000002"
    assert read_state(checkpoint)["step"] == 2
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "adapter_config.json", "adapters.safetensors", "optimizer.safetensors", "samples.json", "trainer_state.json"]
    assert not (run.run_dir / "final").exists()
    records = read_metrics(run.run_dir / "metrics.jsonl")
    assert max(r["step"] for r in records if r["type"] == "train") == 2
    assert records[-2]["event"] == "train_end" and records[-2]["status"] == "stopped"
    assert (records[-1]["event"], records[-1]["reason"]) == ("stopped", "user")


def test_final_written_at_the_end(tiny_model_dir, tmp_path):
    run = build(tiny_model_dir, tmp_path, max_steps=3, learning_rate=1e-2)
    result = run.train()
    final = run.run_dir / "final"
    assert result.status == "finished" and result.final_dir == str(final)
    assert sorted(p.name for p in final.iterdir()) == [
        "adapter_config.json", "adapters.safetensors", "optimizer.safetensors", "samples.json", "trainer_state.json"]
    state = json.loads((final / "trainer_state.json").read_text())
    assert state["step"] == state["total_steps"] == 3
    assert json.loads((final / "adapter_config.json").read_text())["fine_tune_type"] == "full"
    saved = {k: np.array(v) for k, v in mx.load(str(final / "adapters.safetensors")).items()}
    current = flat_params(run.loop.model)
    assert saved.keys() == current.keys()
    for k in current:
        np.testing.assert_array_equal(saved[k], current[k])
    assert (run.run_dir / "checkpoints" / "step-000003").is_dir()  # the last step is also a checkpoint
    assert not list(run.run_dir.rglob(".tmp-*"))

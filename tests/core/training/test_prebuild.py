"""The next step recorded while this one runs (training/prebuild.py): a run with it equals a run without it,
bit for bit (losses, gradient norms, final weights, optimizer moments, checkpoints), a stop in the middle saves
the state of the last step done, and the run resumes to the same end."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from tests.helpers import train_losses
from tests.train_helpers import build
from trainer_core import runner
from trainer_core.training import prebuild
from trainer_core.training.callbacks import Callback, read_metrics


def run_with(monkeypatch, enabled, model_dir, tmp_path, callbacks=(), **fields):
    monkeypatch.setattr(prebuild, "ENABLED", enabled)
    committed = []
    commit = prebuild.commit

    def counting(loop, pre):
        out = commit(loop, pre)
        committed.append(out is not None)
        return out
    monkeypatch.setattr(prebuild, "commit", counting)
    run = build(model_dir, tmp_path, callbacks=callbacks, **fields)
    result = run.train()
    return run, result, sum(committed)


def trained(run) -> dict:
    out = {f"w.{k}": np.array(v) for k, v in mx.load(str(run.run_dir / "final" / "adapters.safetensors")).items()}
    out.update({f"m.{k}": np.array(v) for k, v in run.loop.steps.optimizer_state["m"].items()})
    out["t"] = np.array(run.loop.steps.optimizer_state["t"])
    return out


def grad_norms(run) -> list[float]:
    return [r["grad_norm"] for r in read_metrics(run.run_dir / "metrics.jsonl") if r["type"] == "train"]


SETTINGS = dict(max_steps=9, eval_every=4, save_every=3, n_valid=4, learning_rate=1e-3, lr_schedule="cosine",
                warmup_steps=2, weight_decay=0.01, n_train=12)  # crosses epochs; evaluates and saves in between


def test_a_run_that_records_ahead_equals_one_that_does_not(monkeypatch, tiny_model_dir, tmp_path):
    off, _, none = run_with(monkeypatch, False, tiny_model_dir, tmp_path / "off", **SETTINGS)
    on, result, committed = run_with(monkeypatch, True, tiny_model_dir, tmp_path / "on", **SETTINGS)
    assert none == 0 and committed >= 3, "steps were recorded ahead and committed"
    assert result.status == "finished" and result.step == 9
    assert train_losses(on.run_dir) == train_losses(off.run_dir)
    assert grad_norms(on) == grad_norms(off)
    a, b = trained(on), trained(off)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for step in (3, 6, 9):
        name = f"checkpoints/step-{step:06d}/adapters.safetensors"
        for k, v in mx.load(str(off.run_dir / name)).items():
            np.testing.assert_array_equal(np.array(mx.load(str(on.run_dir / name))[k]), np.array(v), err_msg=name)


class StopAfter(Callback):
    """Asks the loop to stop at the end of step `at`: the next step has been recorded by then."""

    def __init__(self, at):
        self.at, self.loop = at, None

    def on_step_end(self, metrics):
        if metrics["step"] == self.at:
            self.loop.request_stop()


def test_a_stop_saves_the_last_step_done_and_resumes_to_the_same_end(monkeypatch, tiny_model_dir, tmp_path):
    fields = dict(max_steps=8, save_every=0, learning_rate=1e-3, n_train=16)
    whole, _, _ = run_with(monkeypatch, False, tiny_model_dir, tmp_path / "whole", **fields)
    stop = StopAfter(5)
    monkeypatch.setattr(prebuild, "ENABLED", True)
    run = build(tiny_model_dir, tmp_path / "stopped", callbacks=[stop], **fields)
    stop.loop = run.loop
    assert run.train().status == "stopped"
    state = json.loads((run.run_dir / "checkpoints" / "step-000005" / "trainer_state.json").read_text())
    assert state["step"] == 5
    assert train_losses(run.run_dir) == train_losses(whole.run_dir)[:5]
    runner.resume(run.run_dir)
    assert train_losses(run.run_dir) == train_losses(whole.run_dir)
    final = mx.load(str(run.run_dir / "final" / "adapters.safetensors"))
    for k, v in mx.load(str(whole.run_dir / "final" / "adapters.safetensors")).items():
        np.testing.assert_array_equal(np.array(final[k]), np.array(v), err_msg=k)


def test_on_a_cpu_it_is_off_unless_asked_for(monkeypatch, tiny_model_dir, tmp_path):
    monkeypatch.setattr(prebuild, "ENABLED", None)
    monkeypatch.delenv(prebuild.VARIABLE, raising=False)
    run = build(tiny_model_dir, tmp_path, max_steps=3)
    run.loop.step = 1
    assert mx.default_device() == mx.cpu and not prebuild.possible(run.loop)
    monkeypatch.setenv(prebuild.VARIABLE, "1")
    assert prebuild.possible(run.loop)
    monkeypatch.setattr(prebuild, "ENABLED", False)
    assert not prebuild.possible(run.loop)
    run.release()


def test_diffusion_draws_its_random_masks_the_same(monkeypatch, tiny_model_dir, tmp_path):
    """Diffusion masks tokens at random in every step: the RNG seeded for the recorded step is the one it draws."""
    fields = dict(max_steps=5, learning_rate=1e-3, method="diffusion")
    off, _, _ = run_with(monkeypatch, False, tiny_model_dir, tmp_path / "off", **fields)
    on, _, committed = run_with(monkeypatch, True, tiny_model_dir, tmp_path / "on", **fields)
    assert committed >= 3 and train_losses(on.run_dir) == train_losses(off.run_dir)


def test_a_step_that_fails_to_record_is_met_again_when_the_loop_takes_it(monkeypatch, tiny_model_dir, tmp_path):
    """Recording is speculative: an error while drawing the next step leaves the state of the step before and is
    raised by the loop when it takes that step (here the third draw fails, whichever path makes it)."""
    monkeypatch.setattr(prebuild, "ENABLED", True)
    run = build(tiny_model_dir, tmp_path, max_steps=5, learning_rate=1e-3)
    draws = []
    draw = run.loop._draw_step

    def failing():
        draws.append(run.loop.step)
        if run.loop.step == 2:
            raise RuntimeError("collating failed")
        return draw()
    monkeypatch.setattr(run.loop, "_draw_step", failing)
    with pytest.raises(RuntimeError, match="collating failed"):
        run.train()
    assert run.loop.step == 2 and draws.count(2) == 2  # tried ahead once, then by the loop itself
    losses = train_losses(run.run_dir)
    assert len(losses) == 2

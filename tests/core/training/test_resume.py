"""Checkpoints resume exactly; resume refuses changed inputs; atomic writes; retention."""

import os
from pathlib import Path

import mlx.core as mx
import pytest

from tests.helpers import train_losses, write_chat_data
from trainer_core import runner
from trainer_core.training.callbacks import read_metrics
from trainer_core.training.checkpoint import CheckpointManager, write_checkpoint_dir
from trainer_core.config import RunConfig
from trainer_core.errors import UserError
from tests.train_helpers import StopAfter


def make_config(tmp_path, model, name, **overrides):
    data = write_chat_data(tmp_path / "data", n_train=10)
    base = dict(method="lora", model=str(model), data=str(data), output_dir=str(tmp_path / "runs"), run_name=name,
                max_steps=8, batch_size=2, learning_rate=1e-2, save_every=0, eval_every=0,
                sample_max_tokens=4)  # samples stay on (and must not change resume), short
    base.update(overrides)
    lora = base.pop("lora", {})
    config = RunConfig(**base)
    for k, v in lora.items():
        setattr(config.lora, k, v)
    return config


def weights(run_dir):
    return mx.load(str(Path(run_dir) / "final" / "adapters.safetensors"))


@pytest.mark.parametrize("method,accumulation,dropout", [("lora", 2, 0.2), ("sft", 2, 0.0), ("lora", 1, 0.0)])
def test_stop_and_resume_equals_uninterrupted(tmp_path, tiny_model_dir, method, accumulation, dropout):
    kw = dict(method=method, gradient_accumulation_steps=accumulation, lora={"dropout": dropout})
    full = make_config(tmp_path, tiny_model_dir, "full", **kw)
    runner.train(full)
    half = make_config(tmp_path, tiny_model_dir, "half", **kw)
    assert runner.train(half, [StopAfter(3)]).status == "stopped"
    run_dir = tmp_path / "runs" / "half"
    assert CheckpointManager(run_dir / "checkpoints").latest().name == "step-000003"
    result = runner.resume(run_dir)
    assert result.status == "finished" and result.step == 8
    assert train_losses(run_dir) == pytest.approx(train_losses(tmp_path / "runs" / "full"), rel=1e-6, abs=1e-6)
    a, b = weights(tmp_path / "runs" / "full"), weights(run_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert mx.allclose(a[k], b[k], atol=1e-6).item(), k


@pytest.mark.parametrize("first,second", [(True, True), (True, False), (False, True)],
                         ids=["joined", "joined-then-per-array", "per-array-then-joined"])
def test_resume_is_exact_whichever_adamw_layout_wrote_the_checkpoint(tmp_path, tiny_model_dir, monkeypatch,
                                                                     first, second):
    """The joined AdamW (GPU default) saves its moments per parameter name: a run resumes exactly with either layout."""
    from trainer_core.training import optim
    monkeypatch.setattr(optim, "JOIN_ON_CPU", True)
    runner.train(make_config(tmp_path, tiny_model_dir, "full"))
    monkeypatch.setattr(optim, "JOIN_ON_CPU", first)
    assert runner.train(make_config(tmp_path, tiny_model_dir, "half"), [StopAfter(3)]).status == "stopped"
    run_dir = tmp_path / "runs" / "half"
    moments = mx.load(str(CheckpointManager(run_dir / "checkpoints").latest() / "optimizer.safetensors"))
    assert "m.*" not in moments and any(k.startswith("m.") and k.endswith("lora_a") for k in moments)
    monkeypatch.setattr(optim, "JOIN_ON_CPU", second)
    assert runner.resume(run_dir).status == "finished"
    assert train_losses(run_dir) == pytest.approx(train_losses(tmp_path / "runs" / "full"), rel=1e-6, abs=1e-6)
    a, b = weights(tmp_path / "runs" / "full"), weights(run_dir)
    for k in a:
        assert mx.allclose(a[k], b[k], atol=1e-6).item(), k


def test_dropout_changes_losses(tmp_path, tiny_model_dir):
    """Guards the test above: with dropout on, the random stream really matters."""
    runner.train(make_config(tmp_path, tiny_model_dir, "d0", lora={"dropout": 0.0}))
    runner.train(make_config(tmp_path, tiny_model_dir, "d5", lora={"dropout": 0.5}))
    assert train_losses(tmp_path / "runs" / "d0")[1:] != train_losses(tmp_path / "runs" / "d5")[1:]


def test_resume_extends_max_steps_and_records_event(tmp_path, tiny_model_dir):
    runner.train(make_config(tmp_path, tiny_model_dir, "r", max_steps=4))
    run_dir = tmp_path / "runs" / "r"
    result = runner.resume(run_dir, max_steps=6)
    assert result.step == 6
    events = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "event"]
    assert any(e.get("event") == "config_changed" and e.get("field") == "max_steps" for e in events)


def test_resume_refuses_changed_data(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, tiny_model_dir, "r", max_steps=4)
    runner.train(config, [StopAfter(2)])
    with open(Path(config.data) / "train.jsonl", "a") as f:
        f.write('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}\n')
    with pytest.raises(UserError, match="train data file changed"):
        runner.resume(tmp_path / "runs" / "r")


def test_resume_refuses_changed_maths(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, tiny_model_dir, "r", max_steps=4)
    runner.train(config, [StopAfter(2)])
    run_dir = tmp_path / "runs" / "r"
    text = (run_dir / "config.toml").read_text().replace("learning_rate = 0.01", "learning_rate = 0.5")
    (run_dir / "config.toml").write_text(text)
    with pytest.raises(UserError, match="learning_rate"):
        runner.resume(run_dir)


def test_resume_without_checkpoint_is_clear(tmp_path):
    (tmp_path / "config.toml").write_text('method = "lora"\n')
    (tmp_path / "final").mkdir()  # a finished run whose checkpoints were deleted (no final: starts at step 0)
    with pytest.raises(UserError, match="no complete checkpoint"):
        runner.resume(tmp_path)


def _parts(step, eval_loss=None):
    state = {"step": step, "metrics": {"eval_loss": eval_loss} if eval_loss is not None else {}}
    return dict(weights={"w": mx.array([float(step)])}, adapter_config={"fine_tune_type": "lora"},
                optimizer={"t": mx.array(step)}, state=state)


def test_crash_between_write_and_rename_leaves_previous_set(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path / "checkpoints")
    manager.save(1, **_parts(1))

    def crash(self, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "rename", crash)
    with pytest.raises(UserError, match="earlier checkpoints are intact"):
        manager.save(2, **_parts(2))
    monkeypatch.undo()
    assert manager.latest().name == "step-000001"
    # a leftover temp folder from a hard crash is ignored and cleaned by the next manager
    (tmp_path / "checkpoints" / ".tmp-step-000002-1-1").mkdir()
    assert manager.latest().name == "step-000001"
    CheckpointManager(tmp_path / "checkpoints")
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_incomplete_folder_is_never_latest(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints")
    manager.save(1, **_parts(1))
    (tmp_path / "checkpoints" / "step-000009").mkdir()  # e.g. copied by hand, no state file
    assert manager.latest().name == "step-000001"


def test_retention_keeps_best_and_latest(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last=2)
    for step, loss in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 2.5), (5, 2.7)]:
        manager.save(step, **_parts(step, loss))
    names = [p.name for p in manager.list()]
    assert names == ["step-000002", "step-000004", "step-000005"]
    assert manager.best().name == "step-000002"


def test_atomic_replace_of_existing_checkpoint(tmp_path):
    target = tmp_path / "final"
    write_checkpoint_dir(target, **_parts(1))
    write_checkpoint_dir(target, **_parts(2))
    assert mx.load(str(target / "adapters.safetensors"))["w"].item() == 2.0
    assert sorted(os.listdir(tmp_path)) == ["final"]

"""Crash safety: SIGKILL a real `finetune` run at random moments, then resume; plus the pieces
that make it hold (torn metrics lines, superseded records, retention mid-delete, no checkpoint yet,
atomic config.toml). bench/crash_kills.py runs the harness with many more kills."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx
import pytest

from tests.crash_harness import RunSpec, check_checkpoint, kill_runs, reference_run
from tests.train_helpers import make_config, write_chat_data
from trainer_core.training import checkpoint as checkpoint_module
from trainer_core import runner
from trainer_core.training.callbacks import MetricsWriter, read_metrics
from trainer_core.training.checkpoint import CheckpointManager
from trainer_core.config import RunConfig


def test_sigkill_at_random_moments_then_resume_is_exact(tiny_model_dir, tmp_path):
    """8 SIGKILLs on one chain of `finetune train` / `finetune resume` processes (~30 s)."""
    spec = RunSpec(tiny_model_dir, write_chat_data(tmp_path / "data", 32, 4))
    ref = reference_run(spec, tmp_path / "work", in_process=True)
    report = kill_runs(spec, tmp_path / "work", kills=8, seed=int.from_bytes(os.urandom(2), "little"),
                       max_kills_per_chain=8, vary_chains=False, ref=ref)
    print(json.dumps(report.summary()))
    assert report.failures == []
    assert report.kills == 8 and report.corrupt_checkpoints == 0
    assert report.resumed_exactly == report.kills
    assert report.chains_finished_exactly == report.chains


# ---- the pieces, each checked deterministically ------------------------------------------------

def test_writer_starts_a_new_line_after_a_torn_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"type": "train", "step": 1, "loss": 2.0}\n{"type": "train", "step": 2, "lo')
    writer = MetricsWriter(path)
    writer.on_event({"step": 1, "event": "resumed"})
    writer.on_step_end({"step": 2, "loss": 1.5})
    records = read_metrics(path)
    assert [(r["type"], r["step"]) for r in records] == [("train", 1), ("event", 1), ("train", 2)]
    assert records[-1]["loss"] == 1.5


def test_records_after_the_resumed_step_are_superseded(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"type": "train", "step": s, "loss": 10.0 + s} for s in (1, 2, 3, 4)]
    lines += [{"type": "checkpoint", "step": 2}, {"type": "eval", "step": 4, "loss": 1.0}]
    lines += [{"type": "event", "step": 2, "event": "resumed"}]
    lines += [{"type": "train", "step": s, "loss": 20.0 + s} for s in (3, 4, 5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    train = [(r["step"], r["loss"]) for r in read_metrics(path) if r["type"] == "train"]
    assert train == [(1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0), (5, 25.0)]
    assert not [r for r in read_metrics(path) if r["type"] == "eval"]
    assert len(read_metrics(path, raw=True)) == len(lines)


def _parts(step):
    return dict(weights={"w": mx.array([float(step)])}, adapter_config={"fine_tune_type": "lora"},
                optimizer={"t": mx.array(step)}, state={"step": step, "metrics": {}})


def test_crash_while_retention_deletes_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last=1)
    manager.save(1, **_parts(1))

    def killed_after_one_file(path, ignore_errors=False):
        next(Path(path).iterdir()).unlink()
        raise KeyboardInterrupt  # stands in for SIGKILL halfway through the delete

    monkeypatch.setattr(checkpoint_module.shutil, "rmtree", killed_after_one_file)
    with pytest.raises(KeyboardInterrupt):
        manager.save(2, **_parts(2))
    monkeypatch.undo()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names[0].startswith(".old-step-000001-") and names[1:] == ["step-000002"]
    assert check_checkpoint(tmp_path / "checkpoints" / "step-000002") == []
    CheckpointManager(tmp_path / "checkpoints")  # the next run cleans the leftover
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-000002"]


def test_interrupted_checkpoint_write_removes_its_temp_folder(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path / "checkpoints")
    manager.save(1, **_parts(1))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module, "fsync_path", interrupted)
    with pytest.raises(KeyboardInterrupt):
        manager.save(2, **_parts(2))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-000001"]


def test_killed_before_the_first_checkpoint_resumes_from_step_zero(tiny_model_dir, tmp_path):
    data = write_chat_data(tmp_path / "data", 16)
    whole = make_config(tiny_model_dir, data, tmp_path / "runs", run_name="whole", method="lora", max_steps=4)
    runner.train(whole)
    config = make_config(tiny_model_dir, data, tmp_path / "runs", run_name="killed", method="lora", max_steps=4)
    run = runner.build_run(config)  # the run folder and config.toml exist; then the process died
    run.release()  # (as its exit would: the OS drops the run lock)
    with open(run.run_dir / "metrics.jsonl", "a") as f:  # a record of a step that will be redone
        f.write(json.dumps({"type": "train", "step": 1, "loss": 99.0}) + "\n")
    result = runner.resume(run.run_dir)
    assert result.status == "finished" and result.step == 4
    a = mx.load(str(tmp_path / "runs" / "whole" / "final" / "adapters.safetensors"))
    b = mx.load(str(run.run_dir / "final" / "adapters.safetensors"))
    assert all(mx.array_equal(a[k], b[k]).item() for k in a)
    train = [r for r in read_metrics(run.run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and train[0]["loss"] != 99.0


def test_config_toml_is_replaced_atomically(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    RunConfig(max_steps=7).save(path)

    def no_room(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_room)
    with pytest.raises(OSError):
        RunConfig(max_steps=9).save(path)
    monkeypatch.undo()
    assert RunConfig.load(path).max_steps == 7


def test_leftovers_of_a_crashed_final_write_are_removed(tmp_path):
    """A kill between the two renames that replace final/ leaves .old-final-* (a whole copy of the
    weights, beside the run's checkpoints folder where no manager cleans); the next write removes it."""
    old, tmp = tmp_path / ".old-final-1-2", tmp_path / ".tmp-final-1-3"
    old.mkdir()
    tmp.mkdir()
    (tmp_path / ".tmp-finally-1-4").mkdir()  # another target's: left alone
    checkpoint_module.write_checkpoint_dir(tmp_path / "final", **_parts(5))
    assert sorted(os.listdir(tmp_path)) == [".tmp-finally-1-4", "final"]

"""`finetune train --dry-run` prints the memory plan; a run whose estimate is above the memory available is
refused with the estimate, the limit and the fixes, unless `--force`."""

import json
import re

from trainer_core import cli
from trainer_core.training import memory
from tests.train_helpers import write_chat_data


def train_args(tiny_model_dir, tmp_path, *extra):
    data = write_chat_data(tmp_path / "data", 8)
    return ["train", "--method", "lora", "--model", str(tiny_model_dir), "--data", str(data), "--output-dir",
            str(tmp_path / "runs"), "--run-name", "r", "--max-steps", "1", "--set", "num_samples=0", *extra]


def test_dry_run_prints_the_estimate_and_trains_nothing(tiny_model_dir, tmp_path, capsys):
    assert cli.main(train_args(tiny_model_dir, tmp_path, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "estimated peak memory:" in out and "weights" in out and "activations" in out and "logits" in out
    assert re.search(r"^estimated peak memory: \d+\.\d\d GB$", out, re.MULTILINE)
    assert not (tmp_path / "runs").exists()


def test_an_estimate_over_the_limit_is_refused_unless_forced(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 1000)
    assert cli.main(train_args(tiny_model_dir, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "Estimated peak memory" in err and "0.00 GB available" in err and "Traceback" not in err
    assert "--set gradient_checkpointing=true" in err and "batch size 2 x accumulation 2" in err
    assert "--force" in err and not (tmp_path / "runs" / "r").exists()
    assert cli.main(train_args(tiny_model_dir, tmp_path, "--force")) == 0
    assert (tmp_path / "runs" / "r" / "final").is_dir()


def test_resume_checks_the_estimate_too_and_takes_force(tiny_model_dir, tmp_path, capsys, monkeypatch):
    assert cli.main(train_args(tiny_model_dir, tmp_path, "--set", "save_every=1")) == 0
    run = tmp_path / "runs" / "r"
    before = (run / "metrics.jsonl").read_text()
    monkeypatch.setattr(memory, "available_memory", lambda: 1000)
    capsys.readouterr()
    assert cli.main(["resume", str(run), "--max-steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "Estimated peak memory" in err and "--force" in err and "Traceback" not in err
    assert (run / "metrics.jsonl").read_text() == before  # refused before anything was written
    assert cli.main(["resume", str(run), "--max-steps", "2", "--force"]) == 0
    steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "train"]
    assert steps == [1, 2]

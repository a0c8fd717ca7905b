"""Gradient checkpointing is recommended where it pays (memory.checkpointing_pays): long rows and big batches,
where it at least halves the estimated peak and saves >= 2 GB; `finetune train` turns it on when the user left it
unset, records it in config.toml and says so; a user's own setting stays (issue 23: LoRA 4 x 2048 on the demo
<= 3 GB with the defaults)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_model import make_tiny_llama
from tests.core.training.test_memory import DEMO, long_text, lora
from tests.train_helpers import make_config, write_jsonl
from trainer_core import runner
from trainer_core.config import RunConfig
from trainer_core.training import memory


def test_on_for_long_rows_on_the_demo_and_off_for_its_own_data():
    pays, without, with_it = memory.checkpointing_pays(DEMO, lora(batch_size=4, max_seq_length=2048), 2048)
    assert pays and with_it < 3e9 < without  # measured: 2.50 GB with it, 13.03 GB without
    # the demo dataset (longest row 137 tokens, batch 4): 1.74 GB, the activations are not what makes the peak
    assert not memory.checkpointing_pays(DEMO, lora(batch_size=4, max_seq_length=512), 137)[0]
    assert memory.checkpointing_pays(DEMO, lora(batch_size=4, max_seq_length=512), 512)[0]  # 4.16 -> 1.39 GB
    # the rule reads the config's shape, not its own setting
    assert memory.checkpointing_pays(DEMO, lora(batch_size=4, max_seq_length=2048, gradient_checkpointing=True),
                                     2048)[:1] == (True,)


def test_a_saving_under_two_gigabytes_is_not_worth_a_third_of_the_speed():
    pays, without, with_it = memory.checkpointing_pays(DEMO, lora(batch_size=4, max_seq_length=256), 256)
    assert with_it < without / 2 and without - with_it < memory.CHECKPOINTING_SAVES and not pays  # 2.81 -> 1.07


@pytest.fixture(scope="module")
def deep_model_dir(tmp_path_factory):
    """A tiny Llama with enough blocks that keeping one block's input instead of its activations pays."""
    return make_tiny_llama(tmp_path_factory.mktemp("deep-llama"), layers=8)


@pytest.fixture
def long_rows(tmp_path) -> Path:
    write_jsonl(tmp_path / "data" / "train.jsonl", [{"text": long_text(i, 700)} for i in range(4)])
    return tmp_path / "data"


def build(model_dir, data, out, recommend, **fields) -> runner.Run:
    config = make_config(model_dir, data, out, method="lora", max_steps=1, batch_size=2, max_seq_length=1024,
                         num_samples=0, **fields)
    return runner.build_run(config, recommend=frozenset(recommend))


def test_the_cli_turns_it_on_when_unset_and_records_it(deep_model_dir, long_rows, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "CHECKPOINTING_SAVES", 0)  # the tiny model's saving is megabytes, not a gigabyte
    run = build(deep_model_dir, long_rows, tmp_path / "runs", {"gradient_checkpointing"})
    assert run.config.gradient_checkpointing
    assert all(type(block).__name__.startswith("Recomputed") for block in run.loop.model.layers)
    assert "gradient checkpointing on" in " ".join(run.memory.notes)
    run.train()
    assert RunConfig.load(run.run_dir / "config.toml").gradient_checkpointing
    assert "Recommended: gradient_checkpointing = true" in (run.run_dir / "log.txt").read_text()


def test_a_user_setting_or_short_rows_keep_it_off(deep_model_dir, long_rows, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "CHECKPOINTING_SAVES", 0)
    run = build(deep_model_dir, long_rows, tmp_path / "a", set())  # the user gave gradient_checkpointing = false
    assert not run.config.gradient_checkpointing
    assert not any(type(block).__name__.startswith("Recomputed") for block in run.loop.model.layers)
    run.train()
    write_jsonl(tmp_path / "short" / "train.jsonl", [{"text": long_text(i, 3)} for i in range(4)])
    run = build(deep_model_dir, tmp_path / "short", tmp_path / "b", {"gradient_checkpointing"})
    assert not run.config.gradient_checkpointing
    run.train()
    assert "gradient_checkpointing" not in (run.run_dir / "log.txt").read_text()

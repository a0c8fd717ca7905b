"""The Setup pane: RunConfig binding, inline validation, Start blockers, dataset analysis,
LR preview, Copy as CLI, presets, memory estimate."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

import app  # noqa: F401  (trainer_core first, PySide6 workaround)
from PySide6.QtGui import QFontMetrics
from trainer_core.training import memory
from app.common.cli_line import cli_command
from app.setup.dataset_analysis import steps_per_epoch
from app.setup.hparams_panel import schedule_values
from app.main_window import MainWindow
from app.setup.pane import SetupPane
from trainer_core import runner
from trainer_core.cli import build_parser, config_from_args
from trainer_core.config import ParamGroup, RunConfig
from trainer_core.data import load_dataset, tokenize_sft
from trainer_core.models.loading import load_model
from trainer_core.training.schedules import learning_rate_at

from tests.app.test_app_worker import write_data
from tests.app_home import studio_home  # noqa: F401  (autouse: fresh app home, no thread left)

TIMEOUT = 30_000


@pytest.fixture
def config(tiny_model_dir, tmp_path) -> RunConfig:
    return RunConfig(model=str(tiny_model_dir), data=str(write_data(tmp_path / "data")),
                     output_dir=str(tmp_path / "runs"), batch_size=2)


def ready(qtbot, pane: SetupPane) -> SetupPane:
    """Wait until the model metadata and the dataset analysis have arrived."""
    qtbot.waitUntil(lambda: pane.model_panel.info is not None or bool(pane.model_panel.error), timeout=TIMEOUT)
    qtbot.waitUntil(lambda: not pane.dataset_panel.busy and not pane._analysis_timer.isActive()
                    and not pane._refresh_timer.isActive(), timeout=TIMEOUT)
    return pane


@pytest.fixture
def pane(qtbot, config):
    pane = SetupPane(config)
    qtbot.addWidget(pane)
    return ready(qtbot, pane)


@pytest.fixture
def window(qtbot, config):
    window = MainWindow(config)
    qtbot.addWidget(window)
    window.show()
    ready(qtbot, window.setup)
    return window


def test_form_round_trips_a_run_config(pane, config):
    config.method, config.fine_tune_type = "lora", "dora"
    config.learning_rate, config.lr_schedule, config.warmup_steps = 3e-4, "linear", 7
    config.batch_size, config.gradient_accumulation_steps, config.epochs, config.max_steps = 3, 2, 2, 40
    config.max_grad_norm, config.weight_decay, config.max_seq_length, config.seed = 0.5, 0.01, 256, 11
    config.save_every, config.eval_every, config.run_name, config.mask_prompt = 20, 10, "my run", False
    config.lora.rank, config.lora.alpha, config.lora.dropout, config.lora.num_layers = 16, 32.0, 0.05, 1
    config.lora.targets = ["self_attn.q_proj", "self_attn.v_proj"]
    config.dpo.beta, config.dpo.loss_type = 0.2, "ipo"
    config.grpo.group_size, config.grpo.rewards = 4, ["exact_match", "format"]
    config.diffusion.schedule, config.diffusion.eps = "cosine", 1e-2
    config.gradient_checkpointing, config.mixed_precision = True, False
    config.adam_beta2 = 0.95  # not on the form: kept from the loaded config
    config.param_groups = [ParamGroup("layers.0.*", 0.5)]
    pane.set_config(config)
    assert pane.config() == config


def test_editing_a_widget_changes_the_config(pane):
    pane.form["batch_size"].editor.setValue(7)
    pane.form["learning_rate"].editor.setText("5e-5")
    pane.form["lora.targets"].editor.setText("self_attn.q_proj, mlp.up_proj")
    pane.method_panel.buttons.button(0).setChecked(True)  # SFT
    pane.form["gradient_checkpointing"].editor.setChecked(True)
    pane.form["mixed_precision"].editor.setChecked(False)
    config = pane.config()
    assert config.gradient_checkpointing and not config.mixed_precision
    assert (config.batch_size, config.learning_rate, config.method) == (7, 5e-5, "sft")
    assert config.lora.targets == ["self_attn.q_proj", "mlp.up_proj"]


def test_invalid_field_shows_runconfig_message_and_disables_start(qtbot, window):
    assert window.start_action.isEnabled(), window.setup.start_blocker()
    field = window.setup.form["learning_rate"]
    field.editor.setText("5")
    qtbot.waitUntil(lambda: not window.start_action.isEnabled(), timeout=TIMEOUT)
    expected = RunConfig(learning_rate=5.0).problems()["learning_rate"]
    assert field.message.text() == expected and field.message.isVisible()
    assert field.editor.property("invalid") is True
    assert expected in window.blocker_label.full
    assert not window.setup.copy_cli_button.isEnabled()
    label = window.blocker_label  # a long reason: one line that fits inside the label's margins, ending in …
    label.set_full_text("Can't start: " + "the model file is not a GGUF file, re-convert it " * 6)
    label.resize(300, label.height())
    shown = label.text()
    assert QFontMetrics(label.font()).horizontalAdvance(shown) <= label.contentsRect().width()
    assert shown.endswith("…") and label.toolTip() == label.full

    field.editor.setText("abc")
    qtbot.waitUntil(lambda: "must be a number" in field.message.text(), timeout=TIMEOUT)
    assert not window.start_action.isEnabled()

    field.editor.setText("3e-4")
    qtbot.waitUntil(window.start_action.isEnabled, timeout=TIMEOUT)
    assert not field.message.isVisible() and field.editor.property("invalid") is False
    assert window.blocker_label.full == ""


def test_section_field_message_lands_on_its_field(qtbot, pane):
    pane.method_panel.buttons.button(3).setChecked(True)  # GRPO
    assert pane.method_panel.grpo_box.isVisibleTo(pane) and not pane.method_panel.dpo_box.isVisibleTo(pane)
    pane.form["grpo.group_size"].editor.setValue(1)
    qtbot.waitUntil(lambda: pane.form["grpo.group_size"].message.text() != "", timeout=TIMEOUT)
    invalid = RunConfig()
    invalid.grpo.group_size = 1
    assert pane.form["grpo.group_size"].message.text() == invalid.problems()["grpo.group_size"]
    assert pane.start_blocker() is not None


def test_zero_trained_tokens_blocks_start(qtbot, window, tmp_path):
    long = [{"messages": [{"role": "user", "content": "tell me a long story about the fox " * 4},
                          {"role": "assistant", "content": "ok"}]} for _ in range(6)]
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in long))
    window.setup.form["max_seq_length"].editor.setValue(8)
    window.setup.form["data"].editor.setText(str(path))
    qtbot.waitUntil(lambda: "0% of tokens would be trained" in window.blocker_label.full, timeout=TIMEOUT)
    assert not window.start_action.isEnabled()
    assert window.start() is False and not window.controller.running


def test_unreadable_data_shows_file_and_line_next_to_the_data_field(qtbot, window, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n')
    window.setup.form["data"].editor.setText(str(bad))
    field = window.setup.form["data"]
    qtbot.waitUntil(lambda: "line 2" in field.message.text(), timeout=TIMEOUT)
    assert str(bad) in field.message.text()
    assert not window.start_action.isEnabled()


def test_missing_model_is_reported_on_the_model_field(qtbot, window, tmp_path):
    window.setup.model_panel.select(str(tmp_path / "no-such-model"))
    field = window.setup.form["model"]
    qtbot.waitUntil(lambda: "does not exist" in field.message.text(), timeout=TIMEOUT)
    assert not window.start_action.isEnabled()


def test_method_needing_other_data_blocks_start(qtbot, window):
    window.setup.method_panel.buttons.button(2).setChecked(True)  # DPO on chat data
    qtbot.waitUntil(lambda: not window.start_action.isEnabled(), timeout=TIMEOUT)
    assert "DPO" in window.blocker_label.full


def test_dataset_summary_matches_the_core_tokenisation(pane, config, tiny_model_dir):
    summary = pane.dataset_panel.summary
    assert summary.kind == "chat" and summary.counts == {"train": 24, "valid": 4}
    splits = load_dataset(config.data)
    tokenizer = load_model(str(tiny_model_dir)).tokenizer
    examples, stats = tokenize_sft(splits.train, tokenizer, "chat", config.max_seq_length, True)
    assert summary.stats.trained_tokens == stats.trained_tokens
    assert summary.stats.lengths == stats.lengths
    assert "chat · 24 train / 4 valid" in pane.dataset_panel.summary_label.text()
    first = summary.preview[0]
    trained_text = "".join(text for text, trained in first.segments if trained)
    reply = splits.train[0].data["messages"][1]["content"]
    assert trained_text == reply + "<|im_end|>"
    assert first.trained == sum(examples[0].target_mask)


def test_lr_preview_is_the_run_schedule(qtbot, pane, config):
    pane.form["warmup_steps"].editor.setValue(3)
    pane.form["learning_rate"].editor.setText("3e-4")
    pane.form["epochs"].editor.setValue(2)
    qtbot.waitUntil(lambda: not pane._refresh_timer.isActive(), timeout=TIMEOUT)
    config = pane.config()
    steps, rates = pane.lr_preview.curve.getData()
    total, _ = pane.total_steps(config)
    run = runner.build_run(config)  # the real loop decides the run length
    assert total == run.loop.total_steps == 2 * run.loop.steps_per_epoch
    assert list(steps) == list(range(total))
    assert list(rates) == pytest.approx([learning_rate_at(s, schedule="cosine", peak=3e-4, total_steps=total,
                                                          warmup_steps=3) for s in range(total)])
    assert list(rates) == pytest.approx([run.loop.learning_rate(s) for s in range(total)])


def test_long_schedule_preview_samples_exact_values():
    config = RunConfig(learning_rate=1e-3, warmup_steps=500, lr_schedule="polynomial", polynomial_power=2.0)
    steps, rates = schedule_values(config, 100_000)
    assert len(steps) < 1000 and {0, 499, 500, 99_999} <= set(steps.tolist())
    assert rates[list(steps).index(499)] == pytest.approx(1e-3)
    assert list(rates) == pytest.approx([learning_rate_at(int(s), schedule="polynomial", peak=1e-3,
                                                          total_steps=100_000, warmup_steps=500, power=2.0)
                                         for s in steps])


@pytest.mark.parametrize("examples,batch,accumulation", [(24, 2, 1), (25, 4, 3), (400, 4, 1), (1000, 3, 2)])
def test_steps_per_epoch_matches_the_batching(examples, batch, accumulation):
    from trainer_core.data.batching import epoch_batches
    micro = len(epoch_batches([10 + i % 7 for i in range(examples)], batch, seed=0, epoch=0))
    assert steps_per_epoch(examples, batch, accumulation) == micro // accumulation


def test_copy_as_cli_parses_back_to_the_same_config(qtbot, pane, config):
    config.method, config.run_name, config.learning_rate = "lora", "my run 'quoted'", 3e-4
    config.max_steps, config.lr_schedule, config.seed, config.mask_prompt = 12, "linear", 5, False
    config.lora.targets, config.lora.alpha, config.lora.dora = ["self_attn.q_proj"], 8.0, True
    config.grpo.rewards, config.dpo.label_smoothing = ["exact_match", "length"], 0.1
    config.diffusion.mask_token = "true"  # a string that TOML would read as a bool unless quoted
    config.param_groups = [ParamGroup("layers.1.*", 2.0)]
    pane.set_config(config)
    line = pane.copy_cli()
    assert line.startswith("finetune train --method lora --model ")
    from PySide6.QtWidgets import QApplication
    assert QApplication.clipboard().text() == line
    args = build_parser().parse_args(shlex.split(line)[1:])
    assert config_from_args(args) == config
    assert "--batch-size 2" in line and "--epochs" not in line  # only non-default values
    assert cli_command(RunConfig(data="d")) == "finetune train --method lora --model demo --data d"


def test_copy_as_cli_with_distributed_ticked_copies_the_launcher_line(qtbot, pane, config, tmp_path):
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([{"ssh": "localhost", "ips": ["127.0.0.1"]}]))
    panel = pane.distributed
    panel.setChecked(True)
    panel.hostfile.setText(str(hostfile))
    panel.processes.setValue(2)
    line = shlex.split(pane.copy_cli())
    split = line.index("--")
    assert line[:4] == ["python", "-m", "trainer_core.launch", "--hostfile"] and line[5:split] == ["--backend", "ring"]
    expanded = json.loads(Path(line[4]).read_text())  # one entry per process; this Mac without ssh
    assert expanded == [{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}] * 2
    assert config_from_args(build_parser().parse_args(line[split + 1:])) == pane.config()

    hostfile.write_text(json.dumps(expanded))  # already one entry per process: the file itself
    panel.processes.setValue(1)
    panel.backend.setCurrentText("mpi")
    qtbot.waitUntil(lambda: panel.problem() is None, timeout=TIMEOUT)
    assert shlex.split(pane.copy_cli())[3:7] == ["--hostfile", str(hostfile), "--backend", "mpi"]
    panel.setChecked(False)
    assert pane.copy_cli().startswith("finetune train --method ")


def test_presets_save_and_load(qtbot, pane, tmp_path):
    pane.form["batch_size"].editor.setValue(5)
    preset = tmp_path / "p.toml"
    pane.save_preset_to(preset)
    assert RunConfig.load(preset) == pane.config()
    other = pane.config()
    other.learning_rate, other.lora.rank = 1e-5, 4
    other.save(tmp_path / "q.toml")
    pane.load_preset_from(tmp_path / "q.toml")
    assert pane.config() == other
    assert pane.form["lora.rank"].editor.value() == 4
    (tmp_path / "bad.toml").write_text("learning_rate = [")
    pane.load_preset_from(tmp_path / "bad.toml")
    assert "not valid TOML" in pane.notice.text() and pane.config() == other


def test_memory_estimate_warns_and_offers_one_click_fixes(qtbot, pane, monkeypatch):
    assert "✓" in pane.memory_panel.text() and not pane.memory_panel.fix_buttons
    assert "estimated peak memory" in pane.memory_panel.label.toolTip()
    at_two = pane.memory_panel.estimate.peak
    pane.form["batch_size"].editor.setValue(4)
    qtbot.waitUntil(lambda: pane.memory_panel.estimate.peak > at_two, timeout=TIMEOUT)
    before = pane.memory_panel.estimate.peak
    monkeypatch.setattr(memory, "available_memory", lambda: int(before * 0.9))
    pane.form["batch_size"].editor.setValue(3)
    pane.form["batch_size"].editor.setValue(4)
    qtbot.waitUntil(lambda: "⚠" in pane.memory_panel.text(), timeout=TIMEOUT)
    assert "more than this machine" in pane.memory_panel.text()
    labels = [b.text() for b in pane.memory_panel.fix_buttons]
    assert any(t.startswith("batch size 2 x accumulation 2") for t in labels), labels
    assert any(t.startswith("gradient checkpointing") for t in labels), labels
    button = next(b for b in pane.memory_panel.fix_buttons if b.text().startswith("batch size 2"))
    accumulation = pane.config().gradient_accumulation_steps
    button.click()
    qtbot.waitUntil(lambda: pane.config().batch_size == 2, timeout=TIMEOUT)
    assert pane.config().gradient_accumulation_steps == 2 * accumulation
    qtbot.waitUntil(lambda: pane.memory_panel.estimate.peak < before, timeout=TIMEOUT)


def test_chosen_models_are_remembered(qtbot, pane, tiny_model_dir, tiny_quant_model_dir):
    pane.model_panel.select(str(tiny_quant_model_dir))
    qtbot.waitUntil(lambda: pane.model_panel.info is not None, timeout=TIMEOUT)
    assert pane.model_panel.info.quantization.startswith("4-bit")
    from trainer_core.models.loading import quantized_kernels_slow
    expected = "dequantized to float for training" if quantized_kernels_slow() else "QLoRA"
    assert expected in pane.model_panel.details["quantization"].text()
    again = SetupPane(RunConfig(data=pane.config().data))
    qtbot.addWidget(again)
    specs = [again.model_panel.combo.itemData(i) for i in range(again.model_panel.combo.count())]
    assert specs[0] == "demo" and str(tiny_quant_model_dir) in specs and str(tiny_model_dir) in specs
    ready(qtbot, again)


def test_demo_data_follows_the_method(qtbot, tiny_model_dir, tmp_path):
    from trainer_core import resources
    pane = SetupPane(RunConfig(model=str(tiny_model_dir), data=str(resources.demo_dataset("lora"))))
    qtbot.addWidget(pane)
    ready(qtbot, pane)
    pane.method_panel.buttons.button(3).setChecked(True)  # GRPO
    assert Path(pane.config().data) == resources.demo_dataset("grpo")
    ready(qtbot, pane)
    assert pane.dataset_panel.summary.kind == "prompt_answer"
    pane.form["data"].editor.setText(str(write_data(tmp_path / "mine")))
    pane.method_panel.buttons.button(0).setChecked(True)  # SFT: the user's own data stays
    assert pane.config().data == str(tmp_path / "mine")

"""GRPO's reward list and reward file, recommended hyper-parameters in the form, inline warnings
(issue 25 items 3, 6, 11, 13, 13b; issue 24 item 5)."""

from __future__ import annotations

from PySide6.QtCore import Qt

import app  # noqa: F401  (trainer_core first, PySide6 workaround)
from app.main_window import MainWindow
from app.setup.pane import SetupPane
from app.setup.reward_picker import file_functions
from trainer_core import resources
from trainer_core.config import METHODS, RunConfig
from trainer_core.config.recommend import recommended, recommended_rewards
from trainer_core.methods.rewards import BUILTINS

from tests.app.test_app_setup import TIMEOUT, config, pane, ready  # noqa: F401  (fixtures)
from tests.app_home import studio_home  # noqa: F401  (autouse: fresh app home, no thread left)


def click_method(pane: SetupPane, method: str) -> None:
    pane.method_panel.buttons.button(METHODS.index(method)).click()


def test_rewards_are_a_list_of_the_built_ins_with_what_the_data_needs(pane):
    picker = pane.method_panel.rewards
    rows = {picker.table.item(r, 0).text(): picker.table.item(r, 3).text() for r in range(picker.table.rowCount())}
    assert set(BUILTINS) <= set(rows)
    assert "answer" in rows["numeric_match"] and rows["length_penalty"] == "nothing"
    picker.table.item(list(rows).index("numeric_match"), 0).setCheckState(Qt.Checked)
    assert "numeric_match" in pane.config().grpo.rewards


def test_demo_grpo_data_gets_rewards_that_score_it():
    import json
    records = [json.loads(line) for line in (resources.demo_dataset("grpo") / "train.jsonl").open()]
    names, weights = recommended_rewards(records)
    assert names == ["numeric_match", "xml_format"] and weights == [1.0, 0.2]
    assert recommended_rewards([{"prompt": "Name a colour.", "answer": "blue"}])[0] == ["normalized_match"]


def test_reward_file_is_shown_and_its_functions_listed_without_running_it(pane, tmp_path):
    marker = tmp_path / "ran"
    file = tmp_path / "rewards.py"
    file.write_text(f"open({str(marker)!r}, 'w')\n\ndef brevity(completion):\n    return -len(completion)\n")
    config = pane.config()
    config.method, config.grpo.reward_file, config.grpo.rewards = "grpo", str(file), ["brevity"]
    pane.set_config(config)  # a preset naming a reward file
    picker = pane.method_panel.rewards
    assert str(file) in picker.file_label.text() and picker.file_label.isVisibleTo(pane)
    assert file_functions(str(file)) == ["brevity"] and not marker.exists()
    assert pane.config().grpo.reward_file == str(file) and pane.config().grpo.rewards == ["brevity"]
    assert picker.needs_confirmation(str(file))


def test_start_asks_before_running_a_reward_file_not_chosen_here(qtbot, config, tmp_path):
    file = tmp_path / "rewards.py"
    file.write_text("def one(completion):\n    return 1.0\n")
    config.method, config.grpo.reward_file, config.grpo.rewards = "grpo", str(file), ["one"]
    config.data = str(resources.demo_dataset("grpo"))
    window = MainWindow(config)
    qtbot.addWidget(window)
    ready(qtbot, window.setup)
    qtbot.waitUntil(window.start_action.isEnabled, timeout=TIMEOUT)
    asked = []
    window.confirm_reward_file = lambda path: asked.append(path) or False
    assert window.start() is False and asked == [str(file)] and not window.running


def test_dpo_demo_data_is_usable_on_the_first_click_and_previewed_side_by_side(qtbot, pane):
    config = pane.config()
    config.data = str(resources.demo_dataset("sft"))
    pane.set_config(config)
    ready(qtbot, pane)
    click_method(pane, "dpo")
    qtbot.waitUntil(lambda: pane.dataset_panel.summary is not None
                    and pane.dataset_panel.summary.kind == "preference", timeout=TIMEOUT)
    ready(qtbot, pane)
    assert pane.start_blocker() is None
    html = pane.dataset_panel.preview.toHtml()
    assert all(word in html for word in ("prompt", "chosen", "rejected"))
    assert not pane.dataset_panel.histogram.isVisibleTo(pane)


def test_recommendations_follow_the_method_but_keep_what_the_user_edited(qtbot, pane):
    pane.recommend.follow()
    pane.refresh()
    ready(qtbot, pane)
    full = recommended("sft", "full", pane.model_panel.info.num_parameters, 24)
    click_method(pane, "sft")
    qtbot.waitUntil(lambda: pane.config().learning_rate == full["learning_rate"], timeout=TIMEOUT)
    pane.form["learning_rate"].editor.setText("3e-4")  # the user's own value
    click_method(pane, "lora")
    ready(qtbot, pane)
    assert pane.config().learning_rate == 3e-4
    assert pane.recommend.reset_label.isVisibleTo(pane) and "2e-4" in pane.recommend.reset_label.text()
    assert pane.recommend.values["max_steps"] == 0  # a step count of 0 reads as the field shows it
    pane.form["max_steps"].set_value(20)
    pane.recommend.refresh()
    assert "max steps “use epochs”" in pane.recommend.reset_label.text()
    assert "max steps 0" not in pane.recommend.reset_label.text()
    pane.recommend.reset_label.linkActivated.emit("reset")
    assert pane.config().learning_rate == 2e-4
    assert not pane.recommend.reset_label.isVisibleTo(pane)


def test_a_loaded_preset_is_not_overwritten(qtbot, pane):
    config = pane.config()
    config.learning_rate, config.warmup_steps = 7e-4, 3
    pane.set_config(config)
    click_method(pane, "sft")
    ready(qtbot, pane)
    assert (pane.config().learning_rate, pane.config().warmup_steps) == (7e-4, 3)


def test_full_fine_tuning_is_recommended_a_smaller_rate_than_lora():
    assert recommended("sft", "full", 135_000_000, 400)["learning_rate"] == 1e-5
    lora = recommended("lora", "lora", 135_000_000, 400, batch_size=4)
    assert lora["learning_rate"] == 2e-4 and lora["epochs"] == 3 and lora["warmup_steps"] == 9
    assert recommended("lora", "lora", 7_000_000_000, 50_000)["learning_rate"] == 1e-4


def test_eval_without_a_validation_split_says_so_and_offers_a_held_out_fraction(qtbot, pane, tmp_path):
    data = tmp_path / "only_train.jsonl"
    data.write_text("".join(f'{{"prompt": "q{i}", "completion": "a{i}"}}\n' for i in range(24)))
    pane.form["data"].editor.setText(str(data))
    pane.form["eval_every"].set_value(5)
    qtbot.waitUntil(lambda: "no validation split" in pane.form["eval_every"].message.text(), timeout=TIMEOUT)
    assert pane.form["eval_every"].message.isVisibleTo(pane) and pane.start_blocker() is None
    pane.form["eval_every"].message.linkActivated.emit("hold")
    assert pane.config().val_fraction == 0.05
    qtbot.waitUntil(lambda: not pane.form["eval_every"].message.text(), timeout=TIMEOUT)


def test_very_long_max_seq_length_is_warned_about(qtbot, pane):
    pane.form["max_seq_length"].set_value(1_000_000)
    pane.refresh()
    field = pane.form["max_seq_length"]
    assert "very long" in field.message.text() and field.message.isVisibleTo(pane)
    assert field.editor.property("invalid") in (None, False)


def test_an_invalid_batch_size_says_why_instead_of_silently_reverting(qtbot, pane):
    field = pane.form["batch_size"]
    box = field.editor
    before = box.value()
    box.lineEdit().selectAll()
    qtbot.keyClicks(box.lineEdit(), "0")
    box.editingFinished.emit()
    assert "is not allowed: batch_size is a whole number from 1 to" in field.message.text()
    assert field.message.isVisibleTo(pane) and box.value() == before
    box.lineEdit().selectAll()
    qtbot.keyClicks(box.lineEdit(), "3")
    assert box.value() == 3 and not field.message.text()


def test_resume_asks_before_running_a_run_s_reward_file(qtbot, config, tmp_path, monkeypatch):
    """Resuming a GRPO run runs its reward file: a file not chosen in this window is asked about first."""
    import app.main_window as main_window
    file = tmp_path / "rewards.py"
    file.write_text("def one(completion):\n    return 1.0\n")
    run_dir = tmp_path / "runs" / "grpo-run"
    run_dir.mkdir(parents=True)
    saved = RunConfig(method="grpo", data=str(resources.demo_dataset("grpo")), run_name="grpo-run")
    saved.grpo.reward_file, saved.grpo.rewards = str(file), ["one"]
    saved.save(run_dir / "config.toml")
    resumed = []
    monkeypatch.setattr(main_window, "resume_run", lambda window, run, checkpoint: resumed.append(run) or True)
    window = MainWindow(config)
    qtbot.addWidget(window)
    asked = []
    window.confirm_reward_file = lambda path: asked.append(path) or False
    assert window.resume(run_dir) is False and asked == [str(file)] and resumed == []
    window.confirm_reward_file = lambda path: asked.append(path) or True
    assert window.resume(run_dir) is True and resumed == [run_dir]
    assert window.resume(run_dir) is True and len(asked) == 2  # said yes once: not asked again in this window


def test_typing_past_a_spin_box_maximum_says_why(qtbot, pane):
    field = pane.form["batch_size"]
    box = field.editor
    box.lineEdit().selectAll()
    qtbot.keyClicks(box.lineEdit(), "5000")  # the last 0 goes past 4,096: Qt refuses the keystroke
    assert box.value() == 500
    assert "5000 is not allowed: batch_size is a whole number from 1 to 4,096." in field.message.text()
    qtbot.keyClicks(box.lineEdit(), "\b")
    assert box.value() == 50 and not field.message.text()


def test_save_memory_is_ticked_for_long_rows_unless_the_user_unticked_it(qtbot, pane, tmp_path, monkeypatch):
    from tests.tiny_model import make_tiny_llama
    from trainer_core.training import memory
    monkeypatch.setattr(memory, "CHECKPOINTING_SAVES", 0)  # the tiny model saves megabytes, not gigabytes
    deep = make_tiny_llama(tmp_path / "deep", layers=8)  # enough blocks that keeping block inputs pays
    data = tmp_path / "long.jsonl"
    data.write_text("".join(f'{{"text": "{" ".join(["purple sand island"] * 300)} {i}"}}\n' for i in range(24)))
    pane.model_panel.select(str(deep))
    qtbot.waitUntil(lambda: pane.model_panel.info is not None and pane.model_panel.info.num_layers == 8,
                    timeout=TIMEOUT)
    pane.recommend.follow()
    pane.form["max_seq_length"].set_value(1024)
    pane.form["data"].editor.setText(str(data))
    ready(qtbot, pane)
    qtbot.waitUntil(lambda: pane.config().gradient_checkpointing, timeout=TIMEOUT)
    note = pane.form["gradient_checkpointing"].message
    assert "Recommended for rows this long" in note.text() and note.isVisibleTo(pane)  # says why
    pane.form["gradient_checkpointing"].set_value(False)  # the user chooses speed
    pane.form["batch_size"].set_value(4)
    pane.refresh()
    ready(qtbot, pane)
    assert not pane.config().gradient_checkpointing
    assert "save memory on" in pane.recommend.reset_label.text()
    pane.recommend.reset_label.linkActivated.emit("reset")
    assert pane.config().gradient_checkpointing
    pane.form["max_seq_length"].set_value(8)  # short rows: no longer worth a third of the speed
    pane.refresh()
    ready(qtbot, pane)
    qtbot.waitUntil(lambda: not pane.config().gradient_checkpointing, timeout=TIMEOUT)
    assert not pane.form["gradient_checkpointing"].message.text()

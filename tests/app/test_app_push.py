"""Push to Hugging Face Hub… from the Checkpoints tab: the menu entry, the dialog's checks, and a real upload to
the loopback fake Hub off the GUI thread (issue 20 item 4)."""

from __future__ import annotations

import app  # noqa: F401  (trainer_core first)
from app.checkpoints.pane import CheckpointsPane
from app.checkpoints.push_dialog import PushDialog
from tests.app.test_app_checkpoints import TIMEOUT, finished_run, run_copy  # noqa: F401  (fixtures)
from tests.app_home import studio_home  # noqa: F401  (autouse: fresh app home, no thread left)
from tests.fake_hub import fake_hub, hf_cache  # noqa: F401  (fixtures)
from tests.fake_hub_upload import fake_hub_upload  # noqa: F401  (fixture)


def test_the_dialog_checks_the_repo_id_and_says_when_no_token_is_set(qtbot, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login either
    dialog = PushDialog(tmp_path / "step-000002", adapters=False)
    qtbot.addWidget(dialog)
    assert "No Hugging Face token" in dialog.note.text()
    assert dialog.fmt.currentData() == "fused"  # a full fine-tune has no adapters to push
    assert not dialog.fmt.model().item(0).isEnabled()
    dialog.repo.setText("not a repo")
    dialog.buttons.accepted.emit()
    assert dialog.result() == 0 and "user/name" in dialog.problem.text()
    dialog.repo.setText("alice/my-model")
    dialog.buttons.accepted.emit()
    assert dialog.result() == 1 and dialog.answer() == ("alice/my-model", "fused", True)


def test_push_uploads_the_checkpoint_with_a_card_off_the_gui_thread(qtbot, run_copy, fake_hub_upload, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_alice")
    pane = CheckpointsPane()
    qtbot.addWidget(pane)
    pane.set_run(run_copy)
    qtbot.waitUntil(lambda: pane.table.rowCount() > 0, timeout=TIMEOUT)
    pane.table.selectRow(0)
    asked = []
    pane.ask_push = lambda checkpoint, adapters: asked.append((checkpoint, adapters)) or ("alice/tiny-lora", "adapter",
                                                                                          False)
    with qtbot.waitSignal(pane.exported, timeout=TIMEOUT) as done:
        pane.export_menu.push_action.trigger()
        assert not pane.export_button.isEnabled()  # one job at a time
    assert done.args == [f"{fake_hub_upload.url}/alice/tiny-lora"] and asked[0][1] is True
    files = fake_hub_upload.repos["alice/tiny-lora"].files
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "mlx/adapters.safetensors"} <= set(files)
    assert "Pushed" in pane.message.text() and pane.export_button.isEnabled()

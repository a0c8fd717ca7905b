"""The model picker (app/setup/model_picker.py) on fake LM Studio / Ollama folders, a pre-filled
Hugging Face cache and the loopback fake Hub: greyed entries with reasons, choosing, downloading
with progress, cancelling, and the Model group taking the choice."""

from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from app.setup.model_panel import BROWSE, ModelPanel
from app.setup.model_picker import ModelPicker, progress_text
from tests.core.hub.test_download import folder_files
from tests.core.hub.test_local import machine  # noqa: F401  (fixture: fake LM Studio, Ollama, HF cache)

TIMEOUT = 30_000


def items(tree):
    out = {}
    for i in range(tree.topLevelItemCount()):
        top = tree.topLevelItem(i)
        out.update({f"{top.text(0)}/{top.child(j).text(0)}": top.child(j) for j in range(top.childCount())})
        if not top.childCount():
            out[top.text(0)] = top
    return out


def listed(qtbot, picker):
    qtbot.waitUntil(lambda: not picker._list_task.running and picker.local.topLevelItemCount() > 0, timeout=TIMEOUT)
    return items(picker.local)


@pytest.fixture
def picker(qtbot, machine):  # noqa: F811
    dialog = ModelPicker(["/models/recent-one"])
    qtbot.addWidget(dialog)
    return dialog


def test_on_this_mac_greys_what_cannot_train(qtbot, picker):
    found = listed(qtbot, picker)
    assert "Recent//models/recent-one" in found
    falcon = found["LM Studio/lmstudio-community/Tiny-GGUF/Falcon-Q8_0.gguf"]
    assert not falcon.flags() & Qt.ItemIsEnabled and "'falcon' is not supported" in falcon.toolTip(0)
    assert "only PyTorch .bin" in found["LM Studio/someone/Old"].text(2)
    assert found["Ollama/tiny:latest"].flags() & Qt.ItemIsEnabled
    assert "can be trained" in picker.status.text()


def test_choosing_a_local_model(qtbot, picker):
    item = listed(qtbot, picker)["Ollama/tiny:latest"]
    picker.local.setCurrentItem(item)
    assert picker.choose_button.isEnabled()
    with qtbot.waitSignal(picker.modelChosen, timeout=TIMEOUT) as chosen:
        picker.choose_button.click()
    assert chosen.args == [item.data(0, Qt.UserRole)] and Path(chosen.args[0]).name.startswith("sha256-")


def test_search_download_with_progress(qtbot, picker, fake_hub, tiny_model_dir):
    fake_hub.add_repo("org/tiny-model", folder_files(tiny_model_dir), downloads=7, tags=["mlx"])
    fake_hub.bytes_per_second = 2 * 2**20
    listed(qtbot, picker)
    picker.tabs.setCurrentIndex(1)
    picker.search_box.setText("tiny")
    picker.search()
    qtbot.waitUntil(lambda: picker.hub.topLevelItemCount() == 1, timeout=TIMEOUT)
    picker.hub.setCurrentItem(picker.hub.topLevelItem(0))
    assert picker.hub.topLevelItem(0).text(1) == "MLX"
    with qtbot.waitSignal(picker.modelChosen, timeout=TIMEOUT) as chosen:
        picker.choose()
        assert not picker.progress.isHidden() and not picker.cancel_button.isHidden()
    assert chosen.args == ["org/tiny-model"]
    assert picker.progress.isHidden()
    assert list(fake_hub.cache.rglob("model.safetensors"))


def test_cancel_a_download(qtbot, picker, fake_hub):
    fake_hub.add_repo("org/big-GGUF", {"big-Q4_K_M.gguf": b"\1" * 2**21})
    fake_hub.bytes_per_second = 2**20
    listed(qtbot, picker)
    picker.tabs.setCurrentIndex(1)
    picker.search()
    qtbot.waitUntil(lambda: picker.hub.topLevelItemCount() == 1, timeout=TIMEOUT)
    picker.hub.setCurrentItem(picker.hub.topLevelItem(0))
    chosen = []
    picker.modelChosen.connect(chosen.append)
    picker.choose()
    qtbot.waitUntil(lambda: "MB/s" in picker.status.text(), timeout=TIMEOUT)  # bytes are arriving
    task = picker._download_task.task
    picker.cancel_button.click()
    assert picker.progress.isHidden() and "cancelled" in picker.status.text()
    qtbot.waitUntil(task.finished.is_set, timeout=TIMEOUT)
    qtbot.wait(50)  # let any queued result arrive: none may
    assert chosen == [] and not list(fake_hub.cache.glob("models--org--big-GGUF/snapshots/*/*.gguf"))


def test_the_model_group_opens_the_picker_and_takes_the_choice(qtbot, machine):  # noqa: F811
    panel = ModelPanel()
    qtbot.addWidget(panel)
    qtbot.waitUntil(lambda: panel.info is not None or bool(panel.error), timeout=TIMEOUT)  # the demo's metadata
    assert panel.combo.findData(BROWSE) >= 0
    picker = panel.open_picker()
    item = listed(qtbot, picker)["LM Studio/lmstudio-community/Tiny-GGUF/Tiny-Q8_0.gguf"]
    picker.local.setCurrentItem(item)
    picker.choose()
    assert panel.spec == item.data(0, Qt.UserRole)
    qtbot.waitUntil(lambda: panel.info is not None or bool(panel.error), timeout=TIMEOUT)
    assert panel.info is not None and panel.info.architecture == "llama"


def test_a_typed_id_that_does_not_exist_says_so_inline(qtbot, picker, fake_hub):
    listed(qtbot, picker)
    picker.tabs.setCurrentIndex(1)
    picker.search_box.setText("org/no-such-model")
    picker.search()
    qtbot.waitUntil(lambda: picker.hub.topLevelItemCount() == 1, timeout=TIMEOUT)
    picker.hub.setCurrentItem(picker.hub.topLevelItem(0))
    picker.choose()
    qtbot.waitUntil(lambda: "was not found on Hugging Face" in picker.status.text(), timeout=TIMEOUT)
    assert picker.progress.isHidden() and picker.choose_button.isEnabled()


def test_progress_text():
    assert progress_text(120_000_000, 1_200_000_000, 10) == "120 MB of 1.2 GB · 12.0 MB/s · 1:30 left"


def test_recents_refuse_a_folder_that_is_not_a_model(qtbot, tiny_model_dir, tmp_path, monkeypatch):
    from app import settings
    monkeypatch.setenv("FINETUNE_STUDIO_HOME", str(tmp_path / "home"))  # empty recents
    from app.setup.model_panel import RECENT_KEY

    notes = tmp_path / "my-notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("not a model", encoding="utf-8")
    half = tmp_path / "half-download"
    half.mkdir()
    (half / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")  # no weights
    panel = ModelPanel()
    qtbot.addWidget(panel)
    for folder in (notes, half):
        panel.select(str(folder))
        qtbot.waitUntil(lambda: bool(panel.error), timeout=TIMEOUT)
        assert str(folder) not in settings.recent(RECENT_KEY)
        assert "not added to the recent models" in panel.error
    panel.select(str(tiny_model_dir))  # a real model is remembered
    qtbot.waitUntil(lambda: panel.info is not None, timeout=TIMEOUT)
    assert settings.recent(RECENT_KEY) == [str(tiny_model_dir)]
    settings.push_recent(RECENT_KEY, str(notes))  # an entry from an older version, or a folder emptied since
    panel._fill()
    combo = [panel.combo.itemData(i) for i in range(panel.combo.count())]
    assert str(notes) not in combo and str(tiny_model_dir) in combo
    picker = ModelPicker(settings.recent(RECENT_KEY))
    qtbot.addWidget(picker)
    picker._show_local([])
    recent = items(picker.local)
    refused = recent[f"Recent/{notes}"]
    assert not refused.flags() & Qt.ItemIsEnabled and "no config.json" in refused.toolTip(0)
    assert recent[f"Recent/{tiny_model_dir}"].flags() & Qt.ItemIsEnabled


def test_local_model_problem_names_what_is_missing(tmp_path, tiny_model_dir):
    from trainer_core.models.loading import local_model_problem

    assert local_model_problem(str(tiny_model_dir)) is None and local_model_problem("demo") is None
    assert local_model_problem("org/name") is None  # a Hugging Face id: checked when it resolves
    assert "does not exist" in local_model_problem(str(tmp_path / "gone"))
    assert "no config.json" in local_model_problem(str(tmp_path))
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    assert "not a .gguf" in local_model_problem(str(tmp_path / "notes.txt"))

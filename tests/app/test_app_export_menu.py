"""Export ▾: every format and GGUF type offered; what the selected checkpoint cannot be exported as is greyed
with the reason as tooltip (k-quants without llama-cpp-python, PEFT of a full fine-tune, GGUF of an architecture
the writer lacks); a type or MLX bits picked in the menu reaches the export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import app  # noqa: F401  (trainer_core first)
from app.checkpoints.export_menu import GGUF_TYPE_LABELS, ExportMenu
from app.checkpoints.pane import CheckpointsPane
from tests.app.test_app_checkpoints import TIMEOUT, finished_run, run_copy  # noqa: F401  (fixtures)
from tests.app_home import studio_home  # noqa: F401  (autouse: fresh app home, no thread left)
from trainer_core.export import choices
from trainer_core.export.exporter import FORMATS, GGUF_TYPES

K_QUANTS = {"q4_k_m", "q5_k_m", "q6_k"}


def pane_on_final(qtbot, run_dir: Path) -> CheckpointsPane:
    """A pane showing `run_dir` with final/ selected and the menu's greying applied."""
    pane = CheckpointsPane()
    qtbot.addWidget(pane)
    with qtbot.waitSignal(pane.listed, timeout=10_000):
        pane.set_run(run_dir)
    final = next(i for i, row in enumerate(pane.rows) if row.path.name == "final")
    with qtbot.waitSignal(pane.export_menu.updated, timeout=10_000):
        pane.table.selectRow(final)
    return pane


def every_action(menu: ExportMenu) -> list:
    return [a for _, a in menu.format_actions] + [a for _, _, a in menu.type_actions]


def test_every_format_and_type_is_offered(qtbot):
    menu = ExportMenu()
    qtbot.addWidget(menu)
    assert {fmt for fmt, _ in menu.format_actions} == set(FORMATS)
    assert sorted(t for t, _ in GGUF_TYPE_LABELS) == sorted(GGUF_TYPES)
    for fmt in ("gguf", "ollama", "lmstudio"):
        assert sorted(t for f, t, _ in menu.type_actions if f == fmt) == sorted(GGUF_TYPES)


def test_k_quants_are_greyed_without_llama_cpp(qtbot, run_copy, monkeypatch):
    monkeypatch.setattr(choices, "llama_cpp", lambda: None)
    pane = pane_on_final(qtbot, run_copy)
    for fmt, gguf_type, action in pane.export_menu.type_actions:
        assert action.isEnabled() == (gguf_type not in K_QUANTS), (fmt, gguf_type)
        if gguf_type in K_QUANTS:
            assert "install fine-tune-studio[gguf] (llama-cpp-python)" in action.toolTip()
    assert all(action.isEnabled() for _, action in pane.export_menu.format_actions)

    monkeypatch.setattr(choices, "llama_cpp", lambda: object())  # installed: offered like the rest
    with qtbot.waitSignal(pane.export_menu.updated, timeout=10_000):
        pane.table.selectRow(0)
    assert all(action.isEnabled() for action in every_action(pane.export_menu))


def test_formats_the_checkpoint_cannot_take_are_greyed_with_the_reason(qtbot, run_copy, tmp_path):
    config_file = run_copy / "final" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "fine_tune_type": "full"}))
    pane = pane_on_final(qtbot, run_copy)
    peft = pane.export_menu.action_for("peft")
    assert not peft.isEnabled() and "full fine-tune has no adapters" in peft.toolTip()
    assert pane.export_menu.action_for("gguf").isEnabled()

    other = tmp_path / "other-arch"  # a base whose architecture the GGUF writer does not know
    other.mkdir()
    (other / "model.safetensors").symlink_to(Path(config["base_model"]) / "model.safetensors")
    base = json.loads((Path(config["base_model"]) / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**base, "model_type": "starcoder2"}))
    config_file.write_text(json.dumps({**config, "base_model": str(other)}))
    pane = pane_on_final(qtbot, run_copy)
    for fmt in ("gguf", "ollama", "lmstudio"):
        action = pane.export_menu.action_for(fmt)
        assert not action.isEnabled() and "starcoder2" in action.toolTip(), action.toolTip()
    assert pane.export_menu.action_for("fused").isEnabled() and pane.export_menu.action_for("peft").isEnabled()

    config_file.write_text(json.dumps({**config, "base_model": str(tmp_path / "gone")}))
    pane = pane_on_final(qtbot, run_copy)
    assert [fmt for fmt, a in pane.export_menu.format_actions if a.isEnabled()] == ["mlx-lm", "peft"]
    assert "gone" in pane.export_menu.action_for("fused").toolTip()


@pytest.mark.parametrize("entry, written", [(("gguf", "q4_0", None), "done-Q4_0.gguf"),
                                            (("fused", None, 4), "config.json")])
def test_the_picked_type_reaches_the_export(qtbot, run_copy, tmp_path, entry, written):
    pane = pane_on_final(qtbot, run_copy)
    out = tmp_path / "exported"
    pane.choose_export_folder = lambda checkpoint, fmt: out
    with qtbot.waitSignal(pane.exported, timeout=TIMEOUT):
        pane.export_menu.action_for(*entry).trigger()
    assert (out / written).is_file()
    if entry[0] == "fused":
        assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 4

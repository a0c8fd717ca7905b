"""The Dataset group with other formats: the detected format and the long-row count before Start,
and the column-mapping dialog writing data_columns into the run config."""

from __future__ import annotations

import json

import pytest
from PySide6.QtWidgets import QDialog, QDialogButtonBox

import app  # noqa: F401  (trainer_core first, PySide6 workaround)
from app.setup.column_mapping import ColumnMappingDialog
from app.setup.pane import SetupPane
from trainer_core.config import RunConfig

from tests.app_home import studio_home  # noqa: F401  (autouse: fresh app home, no thread left)

TIMEOUT = 30_000


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def pane(qtbot, tiny_model_dir, tmp_path):
    rows = [{"conversations": [{"from": "human", "value": f"hi {i}"}, {"from": "gpt", "value": "hello " * (i * 20)}]}
            for i in range(1, 5)]
    pane = SetupPane(RunConfig(model=str(tiny_model_dir), data=str(write(tmp_path / "train.jsonl", rows)),
                               max_seq_length=64, output_dir=str(tmp_path / "runs")))
    qtbot.addWidget(pane)
    return pane


def settled(qtbot, pane):
    qtbot.waitUntil(lambda: not pane.dataset_panel.busy and not pane._analysis_timer.isActive()
                    and not pane._refresh_timer.isActive() and pane.dataset_panel.summary is not None
                    or bool(pane.dataset_panel.error), timeout=TIMEOUT)


def test_detected_format_and_long_rows_are_shown_before_start(qtbot, pane):
    settled(qtbot, pane)
    panel = pane.dataset_panel
    assert panel.summary_label.text().startswith("sharegpt → chat · 4 train")
    long = panel.summary.stats.truncated
    assert long >= 2 and f"{long} longer than 64 (truncated)" in panel.lengths_label.text()
    assert panel.summary.stats.examples == 4
    panel.long_rows.editor.setCurrentIndex(panel.long_rows.editor.findData("drop"))
    qtbot.waitUntil(lambda: "(left out)" in panel.lengths_label.text(), timeout=TIMEOUT)
    assert panel.summary.stats.examples == 4 - long
    assert pane.config().long_rows == "drop"


def test_mapping_dialog_accepts_only_a_mapping_that_names_a_kind(qtbot):
    record = {"q": "What is 2+2?\nThink.", "a": "4", "id": 7}
    dialog = ColumnMappingDialog(record, {}, None)
    qtbot.addWidget(dialog)
    ok = dialog.buttons.button(QDialogButtonBox.Ok)
    assert [dialog.table.item(r, 0).text() for r in range(3)] == ["q", "a", "id"]
    assert dialog.table.item(0, 1).text() == "What is 2+2? ↵ Think."
    assert not ok.isEnabled()
    dialog.choices[0].setCurrentText("prompt")
    assert ok.isEnabled() and "prompt_answer" in dialog.verdict.text()
    dialog.choices[1].setCurrentText("prompt")
    assert not ok.isEnabled() and "twice" not in dialog.verdict.text() and "two columns" in dialog.verdict.text()
    dialog.choices[1].setCurrentText("completion")
    assert ok.isEnabled() and "completions" in dialog.verdict.text()
    assert dialog.mapping() == {"prompt": "q", "completion": "a"}


def test_mapping_from_the_panel_reaches_the_config_and_the_analysis(qtbot, pane, tmp_path, monkeypatch):
    path = write(tmp_path / "odd.jsonl", [{"q": "Hi", "a": "Hello"}, {"q": "Yo", "a": "Hey"}])
    panel = pane.dataset_panel
    panel.path.editor.setText(str(path))
    qtbot.waitUntil(lambda: "cannot tell" in panel.error, timeout=TIMEOUT)  # no format fits: say how to map,
    assert panel.error.endswith("with the Columns… button below.") and "--set" not in panel.error  # the window's way
    assert not panel.histogram.isVisibleTo(panel)  # no lengths to draw: no empty axes either
    qtbot.waitUntil(lambda: "rows of up to" in pane.memory_panel.text(), timeout=TIMEOUT)  # why it is higher
    assert f"{pane.config().max_seq_length:,} tokens" in pane.memory_panel.text()

    def choose(dialog):
        dialog.choices[0].setCurrentText("prompt")
        dialog.choices[1].setCurrentText("completion")
        return QDialog.Accepted

    monkeypatch.setattr(ColumnMappingDialog, "exec", choose)
    panel.columns.editor.click()
    assert panel.columns.editor.text() == "Columns: prompt=q, completion=a"
    assert pane.config().data_columns == {"prompt": "q", "completion": "a"}
    qtbot.waitUntil(lambda: panel.summary is not None and panel.summary.request.data == str(path), timeout=TIMEOUT)
    assert panel.summary.kind == "completions"
    assert panel.histogram.isVisibleTo(panel)
    qtbot.waitUntil(lambda: "rows of up to" not in pane.memory_panel.text(), timeout=TIMEOUT)
    assert panel.summary_label.text().startswith("columns (prompt=q, completion=a) → completions · 2 train")

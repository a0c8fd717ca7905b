"""Every file dialog opens in the user's Documents (or a folder of the user's, e.g. the runs folder) or the folder
last used for that kind of file — never the program's own folder — and remembers where the user went."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from PySide6.QtCore import QStandardPaths
from PySide6.QtWidgets import QFileDialog

import app  # noqa: F401  (trainer_core first, PySide6 workaround)
from app.checkpoints.chat_pane import ChatPane
from app.checkpoints.pane import CheckpointsPane
from app.distributed.panel import DistributedPanel
from app.setup.dataset_panel import DatasetPanel
from app.setup.model_panel import CHOOSE_FOLDER, CHOOSE_GGUF, ModelPanel
from app.training.pane import TrainingPane
from tests.app_home import studio_home  # noqa: F401  (autouse: fresh app home, no thread left)

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = QStandardPaths.writableLocation(QStandardPaths.DocumentsLocation)
if not Path(DOCUMENTS).is_dir():  # a fresh Linux account has none: the dialogs open in the home folder
    DOCUMENTS = str(Path.home())


@pytest.fixture
def dialogs(monkeypatch):
    """Record where each QFileDialog would open; answer with `answer[0]` (default: cancelled)."""
    opened, answer = [], [""]

    def save_or_open(parent, title, start="", filters=""):
        opened.append((title, start))
        return answer[0], ""

    def folder(parent, title, start=""):
        opened.append((title, start))
        return answer[0]

    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(save_or_open))
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(save_or_open))
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(folder))
    return opened, answer


def test_a_missing_documents_folder_is_not_offered(monkeypatch, tmp_path):
    from app import settings
    documents = tmp_path / "Documents"
    monkeypatch.setattr(QStandardPaths, "writableLocation", staticmethod(lambda kind: str(documents)))
    assert settings.dialog_folder("never-used") == str(Path.home())  # not a file named "Documents"
    documents.mkdir()
    assert settings.dialog_folder("never-used") == str(documents)


def test_dialogs_open_in_documents_and_never_in_the_program_folder(qtbot, dialogs, tmp_path):
    opened, answer = dialogs
    training, checkpoints, chat = TrainingPane(), CheckpointsPane(), ChatPane()
    data, model, distributed = DatasetPanel(), ModelPanel(), DistributedPanel()
    for widget in (training, checkpoints, chat, data, model, distributed):
        qtbot.addWidget(widget)
    training.export_csv()
    training.export_png()
    checkpoints._choose_folder(tmp_path / "run" / "checkpoints" / "step-000010", "gguf")
    chat._choose_checkpoint()
    data._choose_file()
    data._choose_folder()
    model._activated(model.combo.findData(CHOOSE_FOLDER))
    model._activated(model.combo.findData(CHOOSE_GGUF))
    distributed._browse()
    assert len(opened) == 9
    for title, start in opened:
        assert start and Path(start).is_absolute(), title
        assert not Path(start).resolve().is_relative_to(REPO) and Path(start) != Path.cwd(), (title, start)
    named = dict(opened)
    assert named["Export metrics as CSV"] == str(Path(DOCUMENTS) / "metrics.csv")
    assert named["Export step-000010 as gguf (a new folder)"] == str(Path(DOCUMENTS) / "run-step-000010-gguf")
    assert named["Choose a data file"] == DOCUMENTS

    elsewhere = tmp_path / "my exports"
    elsewhere.mkdir()
    answer[0] = str(elsewhere / "metrics.csv")  # the user saves somewhere else ...
    training.export_csv()
    answer[0] = ""
    training.export_png()  # ... and the next export dialog opens there
    assert opened[-1] == ("Export plots as PNG", str(elsewhere / "plots.png"))
    data._choose_file()  # another kind of file keeps its own folder
    assert opened[-1] == ("Choose a data file", DOCUMENTS)


def test_every_file_dialog_in_the_app_names_where_it_opens():
    """A QFileDialog.get*() without a start folder opens in the current directory: the program's folder."""
    missing = []
    for path in (REPO / "app").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "QFileDialog"
                    and node.func.attr.startswith("get")):
                start = node.args[2] if len(node.args) > 2 else None
                if start is None or (isinstance(start, ast.Constant) and not start.value):
                    missing.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not missing, missing

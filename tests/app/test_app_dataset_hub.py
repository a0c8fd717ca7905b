"""The Dataset group with a Hugging Face dataset id: downloaded off the GUI thread from the loopback
fake Hub (tests/fake_hub.py) and analysed like a local folder; an unknown id is one inline message."""

from __future__ import annotations

import pytest

import app  # noqa: F401  (trainer_core first, PySide6 workaround)
from app.setup.pane import SetupPane
from trainer_core.config import RunConfig

from tests.app_home import studio_home  # noqa: F401  (autouse: fresh app home, no thread left)
from tests.app.test_app_dataset_formats import settled
from tests.core.data.test_data_hub import HF_LAYOUT


@pytest.fixture
def pane_on(qtbot, tiny_model_dir, tmp_path, fake_hub):
    fake_hub.add_repo("org/alpaca", HF_LAYOUT, repo_type="dataset")

    def make(data: str) -> SetupPane:
        pane = SetupPane(RunConfig(model=str(tiny_model_dir), data=data, max_seq_length=64,
                                   output_dir=str(tmp_path / "runs")))
        qtbot.addWidget(pane)
        return pane
    return make


def test_a_hub_id_is_downloaded_and_analysed(qtbot, pane_on, fake_hub):
    pane = pane_on("org/alpaca")
    settled(qtbot, pane)
    assert pane.dataset_panel.error == ""
    assert pane.dataset_panel.summary_label.text().startswith("alpaca → chat · 5 train")
    assert any((fake_hub.cache / "datasets--org--alpaca").rglob("train-00001-of-00002-*.parquet"))
    assert pane.config().data == "org/alpaca"  # the user's spelling; the run records the commit


def test_an_unknown_id_is_one_inline_message(qtbot, pane_on):
    pane = pane_on("org/nope")
    settled(qtbot, pane)
    assert "dataset 'org/nope' was not found on Hugging Face" in pane.dataset_panel.error
    assert "/datasets/org/nope" in pane.dataset_panel.error


def test_the_search_box_lists_datasets_by_downloads_and_picks_one(qtbot, fake_hub, monkeypatch):
    from app.setup.dataset_panel import DatasetPanel
    from app.setup.dataset_search import DatasetSearchDialog

    fake_hub.add_repo("tatsu-lab/alpaca", HF_LAYOUT, repo_type="dataset", downloads=90)
    fake_hub.add_repo("org/alpaca-small", HF_LAYOUT, repo_type="dataset", downloads=5000)
    fake_hub.add_repo("org/gsm8k", HF_LAYOUT, repo_type="dataset", downloads=100_000)
    fake_hub.add_repo("org/alpaca-model", {"config.json": b"{}"}, downloads=10**6)  # a model: not listed
    dialog = DatasetSearchDialog()
    qtbot.addWidget(dialog)
    dialog.search.setText("alpaca")
    ids = lambda: [dialog.results.item(i).text().split()[0] for i in range(dialog.results.count())]  # noqa: E731
    qtbot.waitUntil(lambda: ids() == ["org/alpaca-small", "tatsu-lab/alpaca"], timeout=10_000)
    assert dialog.results.item(0).text().endswith("5,000 downloads")
    dialog.results.setCurrentRow(1)
    dialog.buttons.button(dialog.buttons.StandardButton.Ok).click()
    assert dialog.result() == DatasetSearchDialog.Accepted and dialog.chosen == "tatsu-lab/alpaca"

    panel = DatasetPanel()  # the Choose… menu's entry writes the pick into the Data field
    qtbot.addWidget(panel)
    monkeypatch.setattr(DatasetSearchDialog, "exec", lambda self: (setattr(self, "chosen", "org/gsm8k"), 1)[1])
    panel._fill_menu()
    next(a for a in panel.choose_menu.actions() if a.text() == "Hugging Face dataset…").trigger()
    assert panel.path.value() == "org/gsm8k"


def test_the_search_box_says_when_it_is_offline(qtbot, hf_cache):
    from app.setup.dataset_search import DatasetSearchDialog

    dialog = DatasetSearchDialog()
    qtbot.addWidget(dialog)
    qtbot.waitUntil(lambda: "HF_HUB_OFFLINE is set" in dialog.status.text(), timeout=10_000)
    assert dialog.results.count() == 0

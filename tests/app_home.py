"""The GUI tests' per-test app home (imported by each tests/app/test_app_*.py; autouse there)."""

import gc

import pytest

from app.common.tasks import cancel_all


@pytest.fixture(autouse=True)
def studio_home(tmp_path, monkeypatch):
    """A fresh FINETUNE_STUDIO_HOME for every test; afterwards no pool thread is left running."""
    monkeypatch.setenv("FINETUNE_STUDIO_HOME", str(tmp_path / "home"))
    # no speed measurement behind every window (tests that want one turn it back on)
    monkeypatch.setattr("app.setup.time_panel.TimePanel.auto_measure", False)
    yield
    assert cancel_all(wait_ms=30_000)  # no pool thread outlives the test (or the interpreter)
    gc.collect()  # this test's Qt garbage goes here, on the GUI thread
    gc.enable()  # the app turned automatic collection off (gc_policy.py); other tests expect it on

"""Checkpoints tab samples, loss-curve markers linked to the Checkpoints tab, and a resumed run's full plots
(real micro runs on the tiny model)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PySide6.QtCore import QPointF, Qt
from PySide6.QtTest import QTest

import app  # noqa: F401  (trainer_core first)
from app.checkpoints.pane import CheckpointsPane
from app.training.worker import TrainingController
from tests.app.test_app_checkpoints import micro_config
from tests.train_helpers import StopAfter
from trainer_core import runner
from trainer_core.training.callbacks import read_metrics
from trainer_core.generation.samples import read_samples
from tests.app_home import studio_home  # noqa: F401  (autouse: fresh app home, no thread left)

TIMEOUT = 60_000


@pytest.fixture(scope="module")
def sampled_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A finished 6-step run, checkpoints at 2, 4, 6 and final/, two sample prompts of 8 tokens."""
    tmp = tmp_path_factory.mktemp("samples-run")
    runner.train(micro_config(tiny_model_dir, tmp, "sampled", num_samples=2, sample_max_tokens=8))
    return tmp / "runs" / "sampled"


def shown(pane: CheckpointsPane) -> list[tuple[str, str]]:
    return pane.samples.texts()


def stored(checkpoint: Path) -> list[tuple[str, str]]:
    return [(s["prompt"], s["answer"]) for s in read_samples(checkpoint)]


def test_the_selected_checkpoint_shows_its_samples(qtbot, sampled_run):
    pane = CheckpointsPane()
    qtbot.addWidget(pane)
    with qtbot.waitSignal(pane.listed, timeout=10_000):
        pane.set_run(sampled_run)
    step4, step6 = (sampled_run / "checkpoints" / f"step-00000{s}" for s in (4, 6))
    assert "newest" in pane.samples.title.text() and shown(pane) == stored(sampled_run / "final")
    pane.select_step(4)
    assert pane.current() == step4 and pane.samples.title.text() == "Samples at step 4"
    assert shown(pane) == stored(step4) and len(shown(pane)) == 2 and all(answer for _, answer in shown(pane))
    assert shown(pane) != stored(sampled_run / "checkpoints" / "step-000002")  # another checkpoint, other answers
    pane.table.selectRow(3)
    assert pane.current().name == "final" and shown(pane) == stored(step6)


def test_a_checkpoint_without_samples_json_shows_its_samples_event(qtbot, sampled_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(sampled_run, run)
    (run / "checkpoints" / "step-000002" / "samples.json").unlink()
    pane = CheckpointsPane()
    qtbot.addWidget(pane)
    with qtbot.waitSignal(pane.listed, timeout=10_000):
        pane.set_run(run)
    pane.select_step(2)
    assert shown(pane) == stored(sampled_run / "checkpoints" / "step-000002")
    (run / "checkpoints" / "step-000004" / "samples.json").unlink()
    (run / "metrics.jsonl").write_text("")
    with qtbot.waitSignal(pane.listed, timeout=10_000):
        pane.reload()
    pane.select_step(4)
    assert shown(pane) == [] and "No samples" in pane.samples.note.text()


def test_samples_appear_live_as_checkpoints_are_written(qtbot, tiny_model_dir, tmp_path):
    pane = CheckpointsPane()
    qtbot.addWidget(pane)
    controller = TrainingController()
    controller.runCreated.connect(lambda run_dir: pane.set_run(Path(run_dir)))
    controller.metrics.connect(lambda r: r.get("event") == "samples" and pane.samples_written(r))
    titles = []
    pane.listed.connect(lambda _: titles.append((pane.samples.title.text(), len(shown(pane)))))
    with qtbot.waitSignal(controller.finished, timeout=TIMEOUT):
        controller.start(micro_config(tiny_model_dir, tmp_path, "live", max_steps=4, num_samples=1,
                                      sample_max_tokens=4))
    qtbot.waitUntil(lambda: not controller.running, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: ("Samples at step 4 (final) · newest checkpoint", 1) in titles, timeout=10_000)
    assert ("Samples at step 2 · newest checkpoint", 1) in titles


def click_marker(qtbot, plots, step: int) -> None:
    """A real mouse click on the loss plot's ◆ marker of checkpoint `step`."""
    plots.redraw(force=True)
    steps = [c["step"] for c in plots.store.checkpoints]
    xs, ys = plots.curves["checkpoint"].getData()
    widget = plots.widgets["loss"]
    scene = widget.getPlotItem().vb.mapViewToScene(QPointF(xs[steps.index(step)], ys[steps.index(step)]))
    QTest.mouseClick(widget.viewport(), Qt.LeftButton, Qt.NoModifier, widget.mapFromScene(scene))


@pytest.fixture
def window(qtbot, sampled_run):
    from app.__main__ import default_config
    from app.main_window import MainWindow
    from app.preferences import set_runs_root
    set_runs_root(sampled_run.parent)
    window = MainWindow(default_config())
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    yield window
    window.shutdown()


def test_clicking_a_checkpoint_marker_selects_it_and_a_selected_checkpoint_rings_its_marker(qtbot, window,
                                                                                        sampled_run):
    window.show_run(sampled_run)  # plots only: the Checkpoints tab shows no run yet
    assert window.tabs.currentWidget() is window.training and window.checkpoints.run_dir is None
    clicked = []
    window.training.plots.checkpointClicked.connect(clicked.append)
    click_marker(qtbot, window.training.plots, 4)
    assert clicked == [4]
    assert window.tabs.currentWidget() is window.checkpoints and window.checkpoints.run_dir == sampled_run
    qtbot.waitUntil(lambda: window.checkpoints.current() is not None, timeout=10_000)
    assert window.checkpoints.current() == sampled_run / "checkpoints" / "step-000004"
    assert window.training.plots.highlighted == 4
    ring = window.training.plots.curves["selected_checkpoint"].getData()
    assert list(ring[0]) == [4.0]
    window.checkpoints.select_step(2)
    assert window.training.plots.highlighted == 2
    window.checkpoints.table.clearSelection()
    assert window.training.plots.highlighted is None


def test_a_resumed_run_plots_its_history_before_the_new_steps(qtbot, window, tiny_model_dir, tmp_path):
    config = micro_config(tiny_model_dir, tmp_path, "resumed", num_samples=0)
    assert runner.train(config, [StopAfter(3)]).status == "stopped"
    run_dir = tmp_path / "runs" / "resumed"
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT):
        assert window.resume(run_dir)
    qtbot.waitUntil(lambda: not window.controller.running, timeout=TIMEOUT)
    store = window.training.store
    assert list(store.series("step")) == [1, 2, 3, 4, 5, 6]
    losses = {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "train"}
    assert list(store.series("loss")) == [losses[s] for s in range(1, 7)]
    assert [c["step"] for c in store.checkpoints] == [2, 3, 4, 6]  # before the stop, then after the resume
    assert [e["step"] for e in store.evals] == [2, 4, 6]


def test_the_setup_tab_edits_the_sample_settings_and_keeps_a_presets_prompts(qtbot, tiny_model_dir, tmp_path):
    from app.setup.pane import SetupPane
    from tests.app.test_app_setup import ready
    preset = micro_config(tiny_model_dir, tmp_path, "setup", sample_prompts=["Mine?"])
    pane = SetupPane(preset)
    qtbot.addWidget(pane)
    ready(qtbot, pane)
    samples, length = pane.hparams.named["num_samples"].editor, pane.hparams.named["sample_max_tokens"].editor
    assert samples.value() == 3 and length.value() == 4
    samples.setValue(0)
    assert samples.text() == "off"
    length.setValue(32)
    config = pane.config()
    assert (config.num_samples, config.sample_max_tokens, config.sample_prompts) == (0, 32, ["Mine?"])


def test_a_long_answer_is_shown_whole(qtbot):
    from app.checkpoints.samples_view import SamplesView

    view = SamplesView()
    qtbot.addWidget(view)
    view.resize(380, 500)
    view.show()
    answer = " ".join(f"word{i}" for i in range(400)) + " THE-END"
    view.show_samples("Samples at step 9", [{"prompt": "short?", "answer": "yes"},
                                           {"prompt": "Tell me everything", "answer": answer}])
    assert view.texts()[1] == ("Tell me everything", answer)  # the cell holds it all, wrapped
    qtbot.waitUntil(lambda: view.table.verticalScrollBar().isVisible() and not view._fit.isActive())
    assert view.table.wordWrap() and view.table.rowHeight(1) >= view.table.sizeHintForRow(1) > 3 * view.table.rowHeight(0)
    assert view.detail.toPlainText() == "Prompt:\nshort?\n\nAnswer:\nyes"  # the first row until another is chosen
    view.table.selectRow(1)
    assert view.detail.toPlainText().endswith(answer) and "THE-END" in view.detail.toPlainText()
    view.show_samples("Samples at step 10", [{"prompt": "other", "answer": "new"}])
    assert view.detail.toPlainText().endswith("new")  # never a stale sample from the previous checkpoint
    view.show_samples("Samples", None)
    assert view.detail.toPlainText() == "" and view.detail.isHidden()

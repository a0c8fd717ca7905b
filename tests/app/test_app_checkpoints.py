"""Checkpoints tab and run history sidebar: a real micro run, live listing, delete, export, resume (tiny model)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import app  # noqa: F401  (trainer_core first)
from app.checkpoints.pane import CheckpointsPane, list_checkpoints
from app.training.worker import TrainingController
from tests.app.test_app_worker import write_data
from trainer_core import runner
from trainer_core.config import RunConfig
from tests.app_home import studio_home  # noqa: F401  (autouse: fresh app home, no thread left)

TIMEOUT = 60_000


def micro_config(model, tmp: Path, name: str, **changes) -> RunConfig:
    config = RunConfig(method="lora", model=str(model), data=str(write_data(tmp / "data")),
                       output_dir=str(tmp / "runs"), run_name=name, max_steps=6, batch_size=2,
                       eval_every=2, save_every=2, learning_rate=1e-3,
                       sample_max_tokens=4)  # short samples (test_app_samples.py looks at them)
    for key, value in changes.items():
        setattr(config, key, value)
    return config


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A finished 6-step run with checkpoints at steps 2, 4, 6 and final/."""
    tmp = tmp_path_factory.mktemp("ckpt-run")
    runner.train(micro_config(tiny_model_dir, tmp, "done"))
    return tmp / "runs" / "done"


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    target = tmp_path / "runs" / finished_run.name
    shutil.copytree(finished_run, target)
    return target


def test_list_checkpoints_reads_steps_losses_and_best(finished_run):
    rows = list_checkpoints(finished_run)
    assert [r.step for r in rows if r.path.name != "final"] == [2, 4, 6]
    assert rows[-1].path.name == "final"
    assert all(r.train_loss is not None and r.eval_loss is not None and r.size_bytes > 0 for r in rows)
    best = [r for r in rows if r.best]
    assert len(best) == 1 and best[0].eval_loss == min(r.eval_loss for r in rows if r.path.name != "final")


def test_pane_lists_checkpoints_of_a_live_run_as_they_are_written(qtbot, tiny_model_dir, tmp_path):
    pane = CheckpointsPane()
    qtbot.addWidget(pane)
    controller = TrainingController()
    controller.runCreated.connect(lambda run_dir: pane.set_run(Path(run_dir)))
    controller.checkpointSaved.connect(pane.checkpoint_saved)
    counts = []
    pane.listed.connect(counts.append)
    with qtbot.waitSignal(controller.finished, timeout=TIMEOUT):
        controller.start(micro_config(tiny_model_dir, tmp_path, "live"))
    qtbot.waitUntil(lambda: not controller.running, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: [r.step for r in pane.rows] == [2, 4, 6, 6], timeout=10_000)
    assert any(0 < c < 4 for c in counts), counts  # listed while the run was still writing checkpoints
    assert pane.table.rowCount() == 4
    assert pane.table.item(3, 0).text() == "final"
    assert sum(pane.table.item(i, 5).text() == "★ best" for i in range(4)) == 1
    assert pane.current().name == "final"  # the selection followed each new checkpoint to the newest


def test_newest_checkpoint_is_selected_until_the_user_picks_one(qtbot, run_copy):
    pane = CheckpointsPane()
    qtbot.addWidget(pane)
    with qtbot.waitSignal(pane.listed, timeout=10_000):
        pane.set_run(run_copy)
    assert pane.current().name == "final" and "newest checkpoint" in pane.samples.title.text()
    assert pane.chat_button.isEnabled() and pane.export_button.isEnabled()
    pane.table.selectRow(0)  # the user's choice stays through a reload
    with qtbot.waitSignal(pane.listed, timeout=10_000):
        pane.reload()
    assert pane.current().name == "step-000002" and "newest" not in pane.samples.title.text()
    assert pane.resume_button.isEnabled()
    with qtbot.waitSignal(pane.listed, timeout=10_000):
        pane.set_run(run_copy)  # shown again: the newest again
    assert pane.current().name == "final"
    pane.select_step(4)  # a click on a loss-curve marker moves the selection off the newest
    assert pane.selected() == [run_copy / "checkpoints" / "step-000004"]
    with qtbot.waitSignal(pane.listed, timeout=10_000):
        pane.reload()
    assert pane.selected() == [run_copy / "checkpoints" / "step-000004"]


def test_a_step_asked_for_before_it_is_listed_is_selected_once_it_is(qtbot, run_copy):
    pane = CheckpointsPane()
    qtbot.addWidget(pane)
    step6 = run_copy / "checkpoints" / "step-000006"
    step6.rename(run_copy / "aside")  # not written yet
    with qtbot.waitSignal(pane.listed, timeout=10_000):
        pane.set_run(run_copy)
    pane.select_step(6)  # a marker clicked as the run writes its last checkpoint
    with qtbot.waitSignal(pane.listed, timeout=10_000):
        pane.reload()  # a listing begun before it was written
    assert pane.current().name == "final"
    (run_copy / "aside").rename(step6)
    with qtbot.waitSignal(pane.listed, timeout=10_000):
        pane.reload()
    assert pane.selected() == [step6]


def test_delete_asks_and_asks_again_for_the_latest(qtbot, run_copy):
    pane = CheckpointsPane()
    qtbot.addWidget(pane)
    asked = []
    answers = []
    pane.confirm = lambda title, text: asked.append(title) or answers.pop(0)
    with qtbot.waitSignal(pane.listed, timeout=10_000):
        pane.set_run(run_copy)
    rows = {r.step: r for r in pane.rows if r.path.name != "final"}
    plain = next(r for r in rows.values() if not r.best and r.step != 6)
    answers[:] = [False]
    assert not pane.delete(plain.path) and plain.path.exists()
    answers[:] = [True]
    assert pane.delete(plain.path)
    assert not plain.path.exists() and plain.path not in [r.path for r in pane.rows]
    assert pane.table.rowCount() == 3
    asked.clear()
    answers[:] = [True, False]  # latest: the second question says no
    assert not pane.delete(rows[6].path)
    assert len(asked) == 2 and rows[6].path.exists()


def test_export_mlx_lm_runs_off_the_gui_thread_with_progress(qtbot, run_copy, tmp_path):
    pane = CheckpointsPane()
    qtbot.addWidget(pane)
    with qtbot.waitSignal(pane.listed, timeout=10_000):
        pane.set_run(run_copy)
    pane.table.selectRow(0)
    out = tmp_path / "exported"
    with qtbot.waitSignal(pane.exported, timeout=TIMEOUT) as blocker:
        assert pane.export("mlx-lm", out)
        assert not pane.export_button.isEnabled()
    assert blocker.args == [str(out)]
    assert (out / "adapters.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert pane.export_button.isEnabled() and "Exported" in pane.message.text()


def test_resume_from_here_continues_the_run_from_that_checkpoint(qtbot, run_copy):
    pane = CheckpointsPane()
    qtbot.addWidget(pane)
    with qtbot.waitSignal(pane.listed, timeout=10_000):
        pane.set_run(run_copy)
    pane.select_step(4)
    controller = TrainingController()
    pane.resumeRequested.connect(lambda run, checkpoint: controller.start(None, resume=(run, checkpoint)))
    steps = []
    controller.metrics.connect(lambda r: r.get("type") == "train" and steps.append(r["step"]))
    with qtbot.waitSignal(controller.finished, timeout=TIMEOUT) as blocker:
        pane.resume()
    qtbot.waitUntil(lambda: not controller.running, timeout=TIMEOUT)
    assert steps == [5, 6]
    assert blocker.args[0]["status"] == "finished"


def test_send_to_ollama_and_lm_studio(qtbot, run_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-ollama"))
    pane = CheckpointsPane()
    qtbot.addWidget(pane)
    with qtbot.waitSignal(pane.listed, timeout=10_000):
        pane.set_run(run_copy)
    pane.table.selectRow(0)
    with qtbot.waitSignal(pane.exported, timeout=TIMEOUT) as blocker:
        assert pane.export("ollama", tmp_path / "ollama")
    assert (tmp_path / "ollama" / "Modelfile").is_file()
    assert "ollama create" in pane.message.text()  # the command to run, since ollama is not on PATH
    with qtbot.waitSignal(pane.exported, timeout=TIMEOUT) as blocker:
        assert pane.export("lmstudio", tmp_path / "models")
    placed = Path(blocker.args[0])
    assert placed.parent == tmp_path / "models" / "fine-tune-studio"
    assert [p.suffix for p in placed.iterdir()] == [".gguf"] and placed.name.endswith("-GGUF")

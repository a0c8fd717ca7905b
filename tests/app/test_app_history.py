"""Run history sidebar: statuses from metrics.jsonl + checkpoints, filter, rename, delete, resume, preferences."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import app  # noqa: F401  (trainer_core first)
from app.preferences import runs_root, set_runs_root
from app.runs.sidebar import RunsSidebar, scan_runs, summarize_run
from tests.app.test_app_checkpoints import micro_config
from trainer_core import runner
from trainer_core.paths import default_runs_root
from tests.app_home import studio_home  # noqa: F401  (autouse: fresh app home, no thread left)


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory) -> Path:
    """finished (lora), interrupted (dpo-less: lr changed, train_end cut off), failed (no step), running."""
    tmp = tmp_path_factory.mktemp("history")
    runner.train(micro_config(tiny_model_dir, tmp, "alpha-finished"))
    runner.train(micro_config(tiny_model_dir, tmp, "beta-interrupted", learning_rate=5e-4))
    root = tmp / "runs"
    metrics = root / "beta-interrupted" / "metrics.jsonl"
    lines = [line for line in metrics.read_text().splitlines() if '"train_end"' not in line and '"stopped"' not in line]
    metrics.write_text("\n".join(lines) + "\n")  # as if the app had been killed
    failed = root / "gamma-failed"
    failed.mkdir()
    shutil.copy(root / "alpha-finished" / "config.toml", failed / "config.toml")
    (failed / "metrics.jsonl").write_text(json.dumps({"type": "event", "step": 0, "event": "resumed"}) + "\n")
    return root


def test_scan_derives_status_steps_and_best_eval(runs):
    found = {r.name: r for r in scan_runs(runs, running=runs / "gamma-failed")}
    assert found["alpha-finished"].status == "finished"
    assert found["beta-interrupted"].status == "crashed"
    assert found["gamma-failed"].status == "running"
    assert {r.name: r.status for r in scan_runs(runs)}["gamma-failed"] == "failed"
    alpha = found["alpha-finished"]
    assert (alpha.steps, alpha.total_steps, alpha.method, alpha.checkpoints) == (6, 6, "lora", 3)
    assert alpha.best_eval is not None and alpha.dataset == "data"


def test_sidebar_lists_filters_and_offers_resume_for_stopped_runs(qtbot, runs):
    sidebar = RunsSidebar(runs)
    qtbot.addWidget(sidebar)
    qtbot.waitUntil(lambda: sidebar.tree.topLevelItemCount() == 3, timeout=10_000)
    sidebar.filter.setText("interrupted")
    assert sidebar.tree.topLevelItemCount() == 1
    assert "quit unexpectedly" in sidebar.tree.topLevelItem(0).text(1)
    with qtbot.waitSignal(sidebar.runSelected) as selected:
        sidebar.tree.topLevelItem(0).setSelected(True)
    assert selected.args == [str(runs / "beta-interrupted")]
    assert sidebar.resume_button.isEnabled()
    with qtbot.waitSignal(sidebar.resumeRequested) as resumed:
        sidebar.resume_button.click()
    assert resumed.args == [str(runs / "beta-interrupted")]
    sidebar.filter.setText("finished")
    sidebar.tree.topLevelItem(0).setSelected(True)
    assert not sidebar.resume_button.isEnabled()


def test_running_row_follows_live_progress(qtbot, runs):
    sidebar = RunsSidebar(runs)
    qtbot.addWidget(sidebar)
    sidebar.set_running(runs / "gamma-failed")
    qtbot.waitUntil(lambda: sidebar.tree.topLevelItemCount() == 3 and sidebar.summary(runs / "gamma-failed")
                    is not None and sidebar.summary(runs / "gamma-failed").status == "running", timeout=10_000)
    rows = {sidebar.tree.topLevelItem(i).text(0): sidebar.tree.topLevelItem(i) for i in range(3)}
    before = rows["alpha-finished"].text(3)
    sidebar.show_progress(7, 20)
    sidebar.show_progress(8, 20, {"type": "eval", "loss": 0.5})
    sidebar.show_progress(9, 20, {"type": "eval", "loss": 0.75})  # not better: the best stays
    assert rows["gamma-failed"].text(3) == "9/20" and rows["gamma-failed"].text(4) == "0.5000"
    assert rows["alpha-finished"].text(3) == before  # only the running run's row moves


def test_multi_select_emits_all_runs(qtbot, runs):
    sidebar = RunsSidebar(runs)
    qtbot.addWidget(sidebar)
    qtbot.waitUntil(lambda: sidebar.tree.topLevelItemCount() == 3, timeout=10_000)
    emitted = []
    sidebar.runsSelected.connect(emitted.append)
    for i in range(2):
        sidebar.tree.topLevelItem(i).setSelected(True)
    assert len(emitted[-1]) == 2 and len(sidebar.selected()) == 2


def test_rename_and_delete_change_the_folder_and_the_row(qtbot, runs, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(runs, root)
    sidebar = RunsSidebar(root)
    qtbot.addWidget(sidebar)
    qtbot.waitUntil(lambda: sidebar.tree.topLevelItemCount() == 3, timeout=10_000)
    renamed = sidebar.rename(root / "alpha-finished", "alpha-renamed")
    assert renamed == root / "alpha-renamed" and renamed.is_dir() and not (root / "alpha-finished").exists()
    assert sidebar.rename(renamed, "beta-interrupted") is None  # taken
    qtbot.waitUntil(lambda: "alpha-renamed" in [r.name for r in sidebar.runs], timeout=10_000)
    sidebar.confirm = lambda title, text: False
    assert not sidebar.delete(root / "gamma-failed") and (root / "gamma-failed").exists()
    sidebar.confirm = lambda title, text: True
    assert sidebar.delete(root / "gamma-failed")
    assert not (root / "gamma-failed").exists()
    names = [sidebar.tree.topLevelItem(i).text(0) for i in range(sidebar.tree.topLevelItemCount())]
    assert "gamma-failed" not in names and len(names) == 2


def test_runs_root_preference_persists(tmp_path):
    assert runs_root() == default_runs_root()
    assert set_runs_root(tmp_path / "elsewhere") == tmp_path / "elsewhere"
    assert runs_root() == tmp_path / "elsewhere"
    assert set_runs_root(None) == default_runs_root()


def test_compare_runs_overlays_one_curve_per_run_and_diffs_only_changed_fields(qtbot, runs):
    from app.checkpoints.compare_pane import RunsCompare
    pane = RunsCompare()
    qtbot.addWidget(pane)
    assert pane.table.horizontalHeaderItem(0).text() == "Field"  # before any run: a real header
    with qtbot.waitSignal(pane.shown, timeout=10_000) as blocker:
        pane.set_runs([runs / "alpha-finished", runs / "beta-interrupted"])
    assert blocker.args == [2] and len(pane.curves) == 2
    assert all(len(curve.getData()[0]) == 6 for curve in pane.curves)
    fields = [pane.table.item(row, 0).text() for row in range(pane.table.rowCount())]
    assert fields == ["learning_rate"]
    assert [pane.table.item(0, c).text() for c in (1, 2)] == ["0.001", "0.0005"]


def test_window_shows_a_history_run_and_its_checkpoints(qtbot, runs, monkeypatch):
    from app.__main__ import default_config
    from app.main_window import MainWindow
    set_runs_root(runs)
    window = MainWindow(default_config())
    qtbot.addWidget(window)
    qtbot.waitUntil(lambda: window.sidebar.tree.topLevelItemCount() == 3, timeout=10_000)
    window.sidebar.select(runs / "alpha-finished")
    qtbot.waitUntil(lambda: len(window.checkpoints.rows) == 4, timeout=10_000)
    assert window.tabs.currentWidget() is window.checkpoints
    assert window.chat.checkpoint.count() == 5  # base only + 3 steps + final
    window.checkpoints.table.selectRow(0)
    window.checkpoints.table.selectRow(1)
    window.checkpoints.compare()
    assert window.tabs.currentWidget() is window.compare and len(window.compare.checkpoints.answers) == 2
    window.shutdown()


def test_grpo_runs_show_their_best_eval_reward(tmp_path):
    run = tmp_path / "grpo-run"
    run.mkdir()
    (run / "config.toml").write_text('method = "grpo"\nmodel = "m"\ndata = "d"\n')
    records = [{"type": "eval", "step": s, "loss": loss, "reward_mean": reward}
               for s, loss, reward in ((2, 0.01, 0.25), (4, 0.002, 0.75), (6, 0.03, 0.5))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert summarize_run(run).best_eval == 0.75  # the highest reward, not the lowest loss (0.002)


def test_status_says_why_a_run_ended_and_who_holds_it(runs, tmp_path):
    from trainer_core.training.run_lock import RunLock
    root = tmp_path / "runs"
    shutil.copytree(runs / "alpha-finished", root / "oom")
    with open(root / "oom" / "metrics.jsonl", "a") as f:  # a later process that ran out of memory at step 7
        f.write(json.dumps({"type": "event", "step": 6, "event": "resumed"}) + "\n")
        f.write(json.dumps({"type": "event", "step": 7, "event": "stopped", "reason": "out_of_memory",
                            "message": "peak 30 GB, limit 20 GB"}) + "\n")
    oom = summarize_run(root / "oom")
    assert (oom.status, oom.ended, oom.resumable) == ("failed", "out_of_memory", True)
    assert oom.status_text.endswith("failed: out of memory") and "peak 30 GB" in oom.reason
    assert summarize_run(runs / "alpha-finished").reason.startswith("Run finished at step 6")
    interrupted = summarize_run(runs / "beta-interrupted")
    assert interrupted.status == "crashed" and "quit unexpectedly" in interrupted.reason
    lock = RunLock(root / "oom").acquire()  # as a terminal `finetune resume` would
    try:
        held = summarize_run(root / "oom")
        assert held.status == "running" and not held.resumable and "process" in held.reason
    finally:
        lock.release()


@pytest.mark.parametrize("save_every", [3, 0])
def test_a_run_the_os_killed_says_so_and_resumes_only_from_its_checkpoint(qtbot, tiny_model_dir, tmp_path,
                                                                           save_every):
    """The app's process (Qt loaded) SIGKILLed mid-run: the relaunched window's sidebar and Training tab say during
    which step it died; Resume continues from the last checkpoint, or is disabled saying there is none."""
    from app.training.pane import TrainingPane
    from tests.core.training.test_heartbeat import kill_mid_run
    from trainer_core.training.heartbeat import latest_checkpoint_step, read_heartbeat

    run = kill_mid_run(tiny_model_dir, tmp_path, "lora-killed", save_every=save_every, kill_after=6, app=True)
    step, checkpoint = read_heartbeat(run)["step"], latest_checkpoint_step(run)
    assert (checkpoint is not None) == bool(save_every)
    sidebar = RunsSidebar(run.parent)
    qtbot.addWidget(sidebar)
    qtbot.waitUntil(lambda: sidebar.tree.topLevelItemCount() == 1, timeout=10_000)
    row = sidebar.tree.topLevelItem(0)
    assert row.text(1) == "✕ quit unexpectedly"
    model = Path(str(tiny_model_dir)).name
    said = f"The app quit unexpectedly {'right after' if read_heartbeat(run)['phase'] == 'after' else 'during'} step {step}"
    assert row.toolTip(1).startswith(said) and f"of this run (lora on {model})" in row.toolTip(1)
    sidebar.select(run)
    assert sidebar.message.text() == row.toolTip(1)
    if checkpoint is not None:
        assert sidebar.resume_button.isEnabled()
        assert sidebar.resume_button.toolTip() == f"Continue lora-killed from its checkpoint at step {checkpoint}"
        assert f"Resume continues from the checkpoint at step {checkpoint}." in row.toolTip(1)
    else:  # never a Resume that silently starts again from step 0
        assert not sidebar.resume_button.isEnabled()
        assert "no complete checkpoint to resume from" in sidebar.resume_button.toolTip()
        assert "nothing to resume" in row.toolTip(1)
    pane = TrainingPane()
    qtbot.addWidget(pane)
    pane.load_run(run)
    assert pane.banner.text() == f"lora-killed: {row.toolTip(1)}" and pane.banner.property("level") == "error"

"""Distributed runs started from the window: the Setup tab's Distributed group (folded, blocking Start with
a message under the host file), then real 2-process runs on this machine through mlx.launch: to the end
(live plots from rank 0's metrics.jsonl, both ranks joined, one writer), Stop (every rank, at one step,
with a checkpoint) then the sidebar's Resume (the same 2 processes again, exactly), and a killed rank (one
clear error, the last checkpoint still loads). Resume without a recorded launch says what to set."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import app  # noqa: F401  (trainer_core first, PySide6 workaround)
from app.main_window import MainWindow
import mlx.core as mx
from app.common.cli_line import cli_arguments
from app.distributed.resume import resume_plan
from app.runs.sidebar import summarize_run
from tests.app.test_app_setup import ready
from tests.train_helpers import write_chat_data
from trainer_core.distributed import launch
from trainer_core.training.callbacks import read_metrics
from trainer_core.training.checkpoint import CheckpointManager, read_state
from trainer_core.config import RunConfig
from trainer_core.generation.generate import load_for_inference
from tests.app_home import studio_home  # noqa: F401  (autouse: fresh app home, no thread left)

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 150_000  # a 2-process run on a loaded 2-core machine
MAX_STEPS = 16  # stopped as the first step shows (rank 0 is a few steps on by then), resumed to the end


@pytest.fixture(autouse=True)
def launcher_env(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.chdir(REPO)  # the ranks run `python -m trainer_core` from the launcher's directory


@pytest.fixture
def window(qtbot, tiny_model_dir, tmp_path):
    config = RunConfig(method="lora", model=str(tiny_model_dir), data=str(write_chat_data(tmp_path / "data", 16)),
                       run_name="dist-run", output_dir=str(tmp_path / "runs"), batch_size=2, max_steps=4,
                       eval_every=0, save_every=2, learning_rate=0.01, num_samples=0)
    window = MainWindow(config)
    window.confirm_close = lambda: True  # a test that fails mid-run must not wait on the close dialog
    qtbot.addWidget(window)
    window.show()
    ready(qtbot, window.setup)
    qtbot.waitUntil(window.start_action.isEnabled, timeout=30_000)
    yield window
    window.distributed.shutdown(30_000)
    window.controller.shutdown(30_000)


def go_distributed(qtbot, window, tmp_path, hosts=({"ssh": "localhost", "ips": ["127.0.0.1"]},), processes=2):
    panel = window.setup.distributed
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps(list(hosts)))
    panel.setChecked(True)
    panel.hostfile.setText(str(path))
    panel.processes.setValue(processes)
    qtbot.waitUntil(lambda: window.start_action.isEnabled() == (panel.problem() is None), timeout=10_000)
    return panel


def test_the_setup_tab_holds_the_distributed_group_and_a_bad_host_file_blocks_start(qtbot, window, tmp_path):
    panel = window.setup.distributed
    assert panel.isVisibleTo(window.setup) and not panel.enabled() and not panel.body.isVisible()
    per_epoch = window.setup.total_steps(window.setup.config())[1]

    go_distributed(qtbot, window, tmp_path, hosts=[{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}, {"ssh": "mac-b"}])
    assert panel.body.isVisible() and not window.start_action.isEnabled()
    message = 'host 2 (mac-b) has no "ips": the ring backend connects to IP addresses'
    assert message in panel.hostfile_message.text() and panel.hostfile_message.isVisible()
    assert window.blocker_label.full.startswith("Can't start: Host file ") and message in window.blocker_label.full
    assert not window.start()

    panel.backend.setCurrentText("mpi")  # MPI finds the hosts by name
    qtbot.waitUntil(window.start_action.isEnabled, timeout=10_000)
    assert not panel.hostfile_message.isVisible()
    assert ("global batch = 2 per process (Batch size) × 4 processes × 1 accumulation = 8 examples per step"
            in panel.summary.text())
    assert window.setup.total_steps(window.setup.config())[1] == per_epoch // 4  # an epoch is 4× fewer steps

    panel.hostfile.setText(str(tmp_path / "nowhere.json"))
    qtbot.waitUntil(lambda: not window.start_action.isEnabled(), timeout=10_000)
    assert "nowhere.json does not exist" in window.blocker_label.full
    panel.setChecked(False)  # off: the usual in-process run, whatever the host file says
    qtbot.waitUntil(window.start_action.isEnabled, timeout=10_000)


def test_start_trains_on_two_local_processes_with_live_plots(qtbot, window, tmp_path):
    panel = go_distributed(qtbot, window, tmp_path)
    window.start_action.trigger()
    assert window.distributed.running and not window.controller.running
    assert window.stop_action.isEnabled() and not window.start_action.isEnabled()
    assert not window.pause_action.isEnabled() and not window.save_action.isEnabled()  # no distributed pause
    assert window.tabs.currentWidget() is window.training
    qtbot.waitUntil(lambda: not window.running, timeout=TIMEOUT)
    log = window.training.log.toPlainText()
    assert window.status.label.text().startswith("Finished 4 steps"), log
    run_dir = window.run_dir
    assert run_dir == tmp_path / "runs" / "dist-run"
    ranks = [r.split(" on ")[0] for r in panel.status.text().removeprefix("Joined: ").split(", ")]
    assert ranks == ["rank 0", "rank 1"] and "Distributed run: 2 processes joined" in log

    records = read_metrics(run_dir / "metrics.jsonl", raw=True)
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 3, 4]  # one writer: rank 0
    assert [r["step"] for r in records if r["type"] == "checkpoint"] == [2, 4]
    assert read_state(run_dir / "final")["world_size"] == 2
    window.training.plots.redraw(force=True)  # the live plots got every record
    assert list(window.training.plots.curves["loss"].getData()[0]) == [1, 2, 3, 4]
    assert list(window.training.plots.curves["checkpoint"].getData()[0]) == [2, 4]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["dist-run"]


def test_resume_says_what_to_set_when_a_distributed_runs_folder_does_not_say_where(qtbot, window, tmp_path):
    run_dir = tmp_path / "runs" / "old-run"  # written by 2 processes launched outside the app (no launch.json)
    checkpoint = run_dir / "checkpoints" / "step-000002"
    checkpoint.mkdir(parents=True)
    window.setup.config().save(run_dir / "config.toml")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"step": 2, "total_steps": 8, "world_size": 2}))
    (checkpoint / "adapters.safetensors").write_bytes(b"")
    assert not window.resume(run_dir)
    text = window.status.label.text()
    assert text == ("Can't resume old-run: it was trained on 2 processes and its folder does not say on which (no "
                    "launch.json). Tick Distributed on the Setup tab and choose a host file and processes per host that "
                    "make 2 processes, then press Resume again.")
    assert window.status.label.property("level") == "error" and not window.running
    assert window.tabs.currentWidget() is window.setup  # nothing started

    panel = go_distributed(qtbot, window, tmp_path, processes=1)
    assert not window.resume(run_dir, checkpoint)  # "Resume from here" too
    assert "make 2 processes (it now makes 1), then" in window.status.label.text()
    assert panel.status.text() == window.status.label.text() and not window.running
    panel.processes.setValue(2)
    plan = resume_plan(run_dir, checkpoint, panel)
    assert (plan.world_size, plan.total_steps, plan.backend, plan.source) == (2, 8, "ring", "Setup tab")
    assert plan.hosts == launch.expand_hosts([{"ssh": "localhost", "ips": ["127.0.0.1"]}], 2)
    recorded = [{"ssh": "mac-a", "ips": ["10.0.0.1"]}, {"ssh": "mac-b", "ips": ["10.0.0.2"]}]
    (run_dir / "launch.json").write_text(json.dumps({"world_size": 2, "backend": "mpi", "hosts": recorded}))
    plan = resume_plan(run_dir, None, panel)  # the run's own launch comes first
    assert (plan.hosts, plan.backend, plan.source) == (recorded, "mpi", "run folder")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"step": 2, "total_steps": 8, "world_size": 1}))
    assert resume_plan(run_dir, None, panel).world_size == 1  # a one-process run resumes in the app's process


def rank_process(launcher_pid: int, rank: int) -> int | None:
    """The pid of rank `rank` among the launcher's child processes (psutil comes with peft, a test dependency)."""
    import psutil

    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            if child.environ().get("MLX_RANK") == str(rank) and "trainer_core" in child.cmdline():
                return child.pid
        except psutil.Error:
            continue
    return None


def long_run(qtbot, window, tmp_path) -> Path:
    config = window.setup.config()
    config.max_steps = 100_000
    window.setup.set_config(config)
    go_distributed(qtbot, window, tmp_path)
    window.start()
    run_dir = tmp_path / "runs" / "dist-run"
    qtbot.waitUntil(lambda: len(window.training.store.checkpoints) >= 1, timeout=TIMEOUT)  # step 2 saved
    return run_dir


def reference_run(config: RunConfig, tmp_path: Path) -> subprocess.Popen:
    """The same run uninterrupted on 2 processes, started from a terminal: `python -m trainer_core.launch`
    (its run folder: <output_dir>/reference)."""
    config = copy.deepcopy(config)
    config.run_name = "reference"
    hosts = launch.expand_hosts([{"ssh": "localhost", "ips": ["127.0.0.1"]}], 2)
    hostfile = launch.write_hostfile(hosts, tmp_path / "reference-hosts.json")
    return subprocess.Popen([sys.executable, "-m", "trainer_core.launch", "--hostfile", str(hostfile), "--backend",
                             "ring", "--starting-port", str(launch.local_starting_port(hosts)), "--",
                             *cli_arguments(config)], cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_stop_then_the_sidebars_resume_continues_on_both_ranks_exactly(qtbot, window, tmp_path):
    """Stop every rank at one step (a checkpoint), then the sidebar's Resume starts the same 2 processes
    again (hosts from the run folder's launch.json, the Setup tab unticked) and the run ends with the
    weights of an uninterrupted 2-process run."""
    config = window.setup.config()
    config.max_steps = MAX_STEPS
    window.setup.set_config(config)
    panel = go_distributed(qtbot, window, tmp_path)
    window.distributed.trainBegan.connect(window.stop)  # as soon as the first step shows
    with qtbot.waitSignal(window.distributed.finished, timeout=TIMEOUT) as finished:
        window.start()
    qtbot.waitUntil(lambda: not window.running, timeout=TIMEOUT)  # mlx.launch ended: so did both ranks
    window.distributed.trainBegan.disconnect(window.stop)
    result = finished.args[0]
    run_dir = tmp_path / "runs" / "dist-run"
    assert result["status"] == "stopped" and 1 <= result["step"] < MAX_STEPS
    stopped = result["step"]
    text = window.status.label.text()
    assert text.startswith(f"Stopped at step {stopped}/{MAX_STEPS} · checkpoint saved · continue with the Resume "
                           "button in the runs list (terminal: `mlx.launch --hostfile ")
    assert text.endswith(f"-- finetune resume {run_dir}`)")
    latest = CheckpointManager(run_dir / "checkpoints").latest()
    assert read_state(latest)["step"] == stopped and not (run_dir / "final").exists()
    assert "exited with code" not in window.training.log.toPlainText()  # every rank ended with status 0
    recorded = json.loads((run_dir / "launch.json").read_text())  # rank 0 kept how the run was launched
    assert recorded["world_size"] == 2 and recorded["backend"] == "ring"
    assert [h["ssh"] for h in recorded["hosts"]] == ["127.0.0.1", "127.0.0.1"]

    panel.setChecked(False)  # the run folder says where to resume, not the Setup tab
    panel.show_status("")
    window.sidebar.set_root(tmp_path / "runs")
    qtbot.waitUntil(lambda: window.sidebar.summary(run_dir) is not None, timeout=10_000)
    window.sidebar.select(run_dir)
    qtbot.waitUntil(window.sidebar.resume_button.isEnabled, timeout=10_000)
    with qtbot.waitSignal(window.distributed.finished, timeout=TIMEOUT) as finished:
        window.sidebar.resume_button.click()
        assert window.distributed.running and not window.controller.running
        assert window.stop_action.isEnabled() and window.tabs.currentWidget() is window.training
        qtbot.waitUntil(lambda: window.run_dir == run_dir, timeout=TIMEOUT)  # rank 0 resumed: the window follows
        qtbot.waitUntil(lambda: "rank 1 on " in window.training.banner.text(), timeout=TIMEOUT)  # who joined
        assert summarize_run(run_dir, window.sidebar.running).status == "running"  # what its next scan shows
    qtbot.waitUntil(lambda: not window.running, timeout=TIMEOUT)
    log = window.training.log.toPlainText()
    assert finished.args[0]["status"] == "finished" and finished.args[0]["step"] == MAX_STEPS, log
    assert window.status.label.text().startswith(f"Finished {MAX_STEPS} steps"), log
    ranks = [r.split(" on ")[0] for r in panel.status.text().removeprefix("Joined: ").split(", ")]
    assert ranks == ["rank 0", "rank 1"] and f"Resumed from {latest} at step {stopped}" in log

    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if r["type"] == "train"] == list(range(1, MAX_STEPS + 1))
    raw = read_metrics(run_dir / "metrics.jsonl", raw=True)
    assert [r.get("status") for r in raw if r.get("event") == "train_end"] == ["stopped", "finished"]
    assert read_state(run_dir / "final")["world_size"] == 2
    window.training.plots.redraw(force=True)  # the plots kept the steps before the resume
    assert list(window.training.plots.curves["loss"].getData()[0]) == list(range(1, MAX_STEPS + 1))

    reference = reference_run(config, tmp_path)
    said = reference.communicate(timeout=TIMEOUT / 1000)[0]
    assert reference.returncode == 0, said
    reference = tmp_path / "runs" / "reference"
    assert json.loads((reference / "launch.json").read_text())["world_size"] == 2  # a terminal launch is recorded
    expected = [r for r in read_metrics(reference / "metrics.jsonl") if r["type"] == "train"]
    assert [r["loss"] for r in records if r["type"] == "train"] == [r["loss"] for r in expected]
    a, b = mx.load(str(reference / "final" / "adapters.safetensors")), mx.load(str(run_dir / "final" / "adapters.safetensors"))
    assert a.keys() == b.keys() and all(mx.array_equal(a[k], b[k]).item() for k in a)


def test_a_killed_rank_shows_one_clear_error_and_the_last_checkpoint_loads(qtbot, window, tmp_path,
                                                                         tiny_model_dir):
    run_dir = long_run(qtbot, window, tmp_path)
    victim = rank_process(window.distributed.launcher.process.processId(), 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    with qtbot.waitSignal(window.distributed.failed, timeout=TIMEOUT) as failed:
        pass
    qtbot.waitUntil(lambda: not window.running, timeout=TIMEOUT)
    message = failed.args[0]
    assert message.startswith("Lost another process of this 2-process run")
    assert message.endswith("Rank 1 was killed (signal 9).")
    assert "Traceback" not in message and "\n" not in message
    assert window.status.label.text() == message and window.status.label.property("level") == "error"
    assert window.setup.distributed.status.text() == f"Failed: {message}"
    latest = CheckpointManager(run_dir / "checkpoints").latest()
    assert (f"The last complete checkpoint, {latest}, is intact: resume it with the Resume button in the runs list, "
            "which starts the same 2 processes again (terminal: `mlx.launch --hostfile ") in message
    assert f"-- finetune resume {run_dir}`)." in message
    assert load_for_inference(str(tiny_model_dir), str(latest)) is not None
    assert not (run_dir / "final").exists()

"""The Distributed group and launcher: folded until ticked, host file validation shown under the field,
the global batch explained, and a launcher that cannot start. Whole runs started from the window (finish, stop,
a killed rank): test_app_distributed_window.py; a rank's own error: test_launch.py."""

from __future__ import annotations

import json

import app  # noqa: F401  (trainer_core first, PySide6 workaround)
from app.distributed.panel import DistributedPanel
from app.distributed.run import DistributedRun
from tests.train_helpers import write_chat_data
from trainer_core.config import RunConfig

LOCAL = [{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}]


def test_panel_is_folded_until_ticked_validates_the_host_file_and_explains_the_global_batch(qtbot, tmp_path):
    panel = DistributedPanel()
    qtbot.addWidget(panel)
    panel.show()
    assert not panel.enabled() and panel.problem() is None and panel.world_size() == 1
    assert not panel.body.isVisible()
    panel.setChecked(True)
    assert panel.body.isVisible()
    assert panel.problem().startswith("Host file: choose the JSON file") and panel.hostfile_message.isVisible()
    panel.hostfile.setText(str(tmp_path / "missing.json"))
    assert "does not exist" in panel.problem() and panel.hostfile_message.text() == panel.problem()
    assert panel.hostfile.property("invalid")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"ips": ["10.0.0.2"]}]')
    panel.hostfile.setText(str(bad))
    assert 'host 1 needs an "ssh" name' in panel.problem()
    good = tmp_path / "hosts.json"
    good.write_text(json.dumps({"backend": "ring", "hosts": LOCAL + [{"ssh": "mac-b", "ips": ["10.0.0.3"]}]}))
    panel.hostfile.setText(str(good))
    panel.processes.setValue(2)
    panel.set_batch(4, 3)
    assert panel.problem() is None and panel.world_size() == 4
    assert not panel.hostfile_message.isVisible() and not panel.hostfile.property("invalid")
    assert [h["ssh"] for h in panel.hosts()] == ["127.0.0.1", "127.0.0.1", "mac-b", "mac-b"]
    assert ("global batch = 4 per process (Batch size) × 4 processes × 3 accumulation = 48 examples per step"
            in panel.summary.text())
    panel.show_ranks([(0, "mac-a"), (1, "mac-b")])
    assert panel.status.text() == "Joined: rank 0 on mac-a, rank 1 on mac-b"


def test_a_launcher_that_cannot_start_fails_with_one_message(qtbot, tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr("sys.executable", str(tmp_path / "no-python"))
    config = RunConfig(method="lora", model=str(tiny_model_dir), data=str(write_chat_data(tmp_path / "data")),
                       output_dir=str(tmp_path / "runs"), max_steps=1)
    run = DistributedRun()
    states = []
    run.runningChanged.connect(states.append)
    with qtbot.waitSignal(run.failed, timeout=10_000) as failed:
        run.start(config, LOCAL * 2, "ring", tmp_path / "launch", total_steps=1)
    assert failed.args[0].startswith(f"Could not start mlx.launch with {tmp_path / 'no-python'}")
    assert states == [True, False] and not run.running


def test_start_anyway_passes_force_to_every_rank(qtbot, tmp_path, tiny_model_dir, monkeypatch):
    """Start anyway with Distributed ticked: the ranks run `finetune train --force` (past their memory check)."""
    config = RunConfig(method="lora", model=str(tiny_model_dir), data=str(write_chat_data(tmp_path / "data")),
                       output_dir=str(tmp_path / "runs"), run_name="r", max_steps=1)
    run = DistributedRun()
    launched = []
    monkeypatch.setattr(run.launcher, "_launch", lambda args, run_dir, *rest: launched.append(args) or str(run_dir))
    monkeypatch.setattr(run, "_begin", lambda run_dir, *a, **k: str(run_dir))
    run.start(config, LOCAL * 2, "ring", tmp_path / "launch", total_steps=1)
    run.start(config, LOCAL * 2, "ring", tmp_path / "launch", total_steps=1, force=True)
    assert launched[0][0] == "train" and "--force" not in launched[0]
    assert launched[1] == launched[0] + ["--force"]

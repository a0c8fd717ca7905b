"""The Distributed group and launcher: folded until ticked, host file validation shown under the field,
the global batch explained, and a rank's own error reported as the launcher's one failure message.
Whole runs started from the window (finish, stop, a killed rank): test_app_distributed_window.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import app  # noqa: F401  (trainer_core first, PySide6 workaround)
from app.distributed_panel import DistributedLauncher, DistributedPanel
from tests.test_distributed import free_ports
from tests.train_helpers import write_chat_data
from trainer_core.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 150_000
LOCAL = [{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}]


@pytest.fixture(autouse=True)
def importable(monkeypatch):
    """The ranks run `python -m trainer_core` from the launcher's working directory."""
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.chdir(REPO)


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


def run(qtbot, tmp_path, config: RunConfig):
    launcher = DistributedLauncher()
    joined, lines = [], []
    launcher.ranksJoined.connect(joined.append)
    launcher.log.connect(lines.append)
    outcome = {}
    launcher.finished.connect(lambda result: outcome.update(finished=result))
    launcher.failed.connect(lambda message: outcome.update(failed=message))
    hosts = [dict(LOCAL[0]), dict(LOCAL[0])]
    run_dir = launcher.start(config, hosts, "ring", tmp_path / "launch", starting_port=free_ports(2)[0])
    qtbot.waitUntil(lambda: bool(outcome), timeout=TIMEOUT)
    assert not launcher.running
    return Path(run_dir), outcome, joined, lines


def test_a_failing_rank_is_reported_as_failed_with_its_message(qtbot, tmp_path, tiny_model_dir):
    data = write_chat_data(tmp_path / "data", n_train=3)  # fewer examples than one global batch of 2 x 2
    config = RunConfig(method="lora", model=str(tiny_model_dir), data=str(data), output_dir=str(tmp_path / "runs"),
                       max_steps=3, batch_size=2, save_every=0, eval_every=0)
    run_dir, outcome, _, lines = run(qtbot, tmp_path, config)
    assert "failed" in outcome, "\n".join(lines)
    assert "usable examples: fewer than one optimizer step" in outcome["failed"] and "x 2 processes" in outcome["failed"]
    assert not run_dir.exists()

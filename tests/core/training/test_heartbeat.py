"""A run whose process dies natively (SIGKILL here, as the OS's out-of-memory killer or a "double free" abort
would) leaves no `stopped` event: its heartbeat says where it was, and Resume is offered only from a checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train_helpers import write_chat_data
from trainer_core.training.callbacks import read_metrics
from trainer_core.training.heartbeat import HEARTBEAT_FILE, crashed, interruption, read_heartbeat

ROOT = Path(__file__).resolve().parents[3]
APP_PROCESS = "import PySide6.QtWidgets, sys; from trainer_core.cli import main; sys.exit(main(sys.argv[1:]))"


def kill_mid_run(model_dir, tmp_path: Path, name: str, *, save_every: int, kill_after: int, app: bool = False) -> Path:
    """Train `name` in a real subprocess (the CLI, or a process that has loaded Qt like the app) and SIGKILL it
    once metrics.jsonl holds `kill_after` train records; returns the run folder."""
    data = write_chat_data(tmp_path / "data", 16)
    out = tmp_path / "runs"
    args = ["train", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out), "--run-name", name,
            "--method", "lora", "--max-steps", "100000", "--save-every", str(save_every), "--batch-size", "2",
            "--learning-rate", "1e-3", "--warmup-steps", "0", "--eval-every", "0", "--set", "num_samples=0"]
    command = [sys.executable, "-c", APP_PROCESS, *args] if app else [sys.executable, "-m", "trainer_core", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = out / name / "metrics.jsonl"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and sum(r.get("type") == "train" for r in read_metrics(metrics)) >= kill_after:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    return out / name


@pytest.fixture(scope="module")
def killed_with_checkpoint(tiny_model_dir, tmp_path_factory) -> Path:
    return kill_mid_run(tiny_model_dir, tmp_path_factory.mktemp("killed"), "lora-killed", save_every=3, kill_after=8)


def test_a_killed_run_says_during_which_step_it_died_and_resumes_only_from_its_checkpoint(killed_with_checkpoint):
    run = killed_with_checkpoint
    records = read_metrics(run / "metrics.jsonl")
    assert not any(r.get("event") == "stopped" for r in records)  # nothing said why it ended
    last = max(r["step"] for r in records if r.get("type") == "train")
    beat = read_heartbeat(run)
    assert beat["pid"] > 0 and beat["program"] == "finetune" and beat["method"] == "lora"
    assert beat["step"] in (last, last + 1) and beat["phase"] in ("training", "after")
    found = crashed(run, records)
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*")
                         if (p / "trainer_state.json").is_file())
    assert found is not None and found.resumable and found.checkpoint_step == checkpoints[-1] >= 3
    assert found.text.startswith("The training process (`finetune`) quit unexpectedly ")
    assert f"step {beat['step']}" in found.text
    assert f"lora on {json.loads((run / HEARTBEAT_FILE).read_text())['model']})" in found.text
    assert f"Resume continues from the checkpoint at step {checkpoints[-1]}." in found.text


def test_killed_before_its_first_checkpoint_there_is_nothing_to_resume(tiny_model_dir, tmp_path):
    run = kill_mid_run(tiny_model_dir, tmp_path, "no-checkpoint", save_every=0, kill_after=3)
    found = crashed(run, read_metrics(run / "metrics.jsonl"))
    assert found is not None and not found.resumable and found.checkpoint_step is None
    assert "nothing to resume" in found.text


def test_finished_and_running_runs_are_not_crashes(tmp_path):
    (tmp_path / "config.toml").write_text('method = "diffusion"\nmodel = "/models/gemma2"\n')
    stopped = [{"type": "train", "step": 4}, {"type": "event", "event": "stopped", "reason": "user", "step": 4}]
    assert crashed(tmp_path, stopped) is None
    assert crashed(tmp_path, stopped + [{"type": "event", "event": "resumed", "step": 4}]) is not None
    assert crashed(tmp_path, []) is None  # never trained: "failed", not a crash
    old = crashed(tmp_path, stopped[:1])  # no heartbeat (written before them): metrics.jsonl's next step
    assert old.text.startswith("The app quit unexpectedly during step 5 of this run (diffusion on gemma2)")
    from trainer_core.training.run_lock import RunLock
    lock = RunLock(tmp_path).acquire()  # another process trains it now
    try:
        assert crashed(tmp_path, stopped[:1]) is None
    finally:
        lock.release()
    (tmp_path / HEARTBEAT_FILE).write_text(json.dumps({"step": 6, "phase": "after", "program": "app"}))
    assert "right after step 6 (evaluating, saving" in interruption(tmp_path, 6, "diffusion", "gemma2").text


def test_beats_overwrite_one_fixed_width_record_in_place_and_long_ones_are_replaced_whole(tmp_path):
    """After the first (atomic) beat, beats rewrite the same file in place (no rename a step, the same inode);
    a shorter record leaves no tail of the longer one; a record wider than RECORD_BYTES replaces the file."""
    from trainer_core.training.heartbeat import RECORD_BYTES, Heartbeat
    beat = Heartbeat(tmp_path, "lora", "m")
    beat.on_train_begin({"step": 0})
    path = tmp_path / HEARTBEAT_FILE
    inode = path.stat().st_ino
    beat.on_step_begin({"step": 12344})
    beat.on_step_end({"step": 12345})
    beat.on_step_begin({"step": 7})  # shorter than the record before
    assert path.stat().st_ino == inode and path.stat().st_size == RECORD_BYTES
    assert read_heartbeat(tmp_path) | {"time": 0} == {"step": 8, "phase": "training", "time": 0, "pid": os.getpid(),
                                                       "program": beat.fields["program"], "method": "lora", "model": "m"}
    long = Heartbeat(tmp_path, "lora", "x" * 2000)
    long.on_step_end({"step": 3})
    assert read_heartbeat(tmp_path)["model"] == "x" * 2000 and read_heartbeat(tmp_path)["phase"] == "after"
    beat.on_train_end({})
    assert beat._fd is None

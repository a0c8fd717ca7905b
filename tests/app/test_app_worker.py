"""The training worker on its QThread: signals, stop, pause, save now, errors (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import app  # noqa: F401  (trainer_core first, PySide6 workaround)
from app.training.worker import TrainingController
from trainer_core.training.callbacks import read_metrics
from trainer_core.config import RunConfig
from tests.app_home import studio_home  # noqa: F401  (autouse: fresh app home, no thread left)

TIMEOUT = 60_000


def chat_records(n: int) -> list[dict]:
    words = ["fox", "dog", "Paris", "France", "island", "purple", "sand", "seven", "lighthouses", "legs"]
    return [{"messages": [
        {"role": "user", "content": f"Question {i}: tell me about the {words[i % len(words)]}?"},
        {"role": "assistant", "content": "The answer is " + " ".join(words[(i + k) % len(words)] for k in range(2 + i % 5))},
    ]} for i in range(n)]


def write_data(folder: Path, n_train: int = 24, n_valid: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_records(n_train)))
    if n_valid:
        (folder / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_records(n_valid)))
    return folder


@pytest.fixture
def config(tiny_model_dir, tmp_path) -> RunConfig:
    return RunConfig(method="lora", model=str(tiny_model_dir), data=str(write_data(tmp_path / "data")),
                     output_dir=str(tmp_path / "runs"), run_name="worker-test", max_steps=6, batch_size=2,
                     eval_every=3, save_every=0, learning_rate=1e-3, sample_max_tokens=4)


@pytest.fixture
def controller(qtbot):
    controller = TrainingController()
    yield controller
    controller.shutdown(30_000)
    assert not controller.running


def test_run_emits_metrics_checkpoints_and_finished(qtbot, controller, config, qtlog):
    records, saved, logs, began = [], [], [], []
    controller.metrics.connect(records.append)
    controller.checkpointSaved.connect(saved.append)
    controller.log.connect(logs.append)
    controller.trainBegan.connect(began.append)
    with qtbot.waitSignal(controller.finished, timeout=TIMEOUT) as finished:
        controller.start(config)
        assert controller.running
    result = finished.args[0]
    assert result["status"] == "finished" and result["step"] == 6 and result["total_steps"] == 6
    qtbot.waitUntil(lambda: not controller.running, timeout=10_000)
    assert began and began[0]["total_steps"] == 6

    train = [r for r in records if r["type"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    # The signal payloads are metrics.jsonl's records: same keys, same values.
    run_dir = Path(result["run_dir"])
    on_disk = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert [r["loss"] for r in train] == pytest.approx([r["loss"] for r in on_disk])
    assert set(on_disk[0]) - {"time"} <= set(train[0])
    for key in ("loss", "learning_rate", "grad_norm", "tokens", "tokens_per_sec", "peak_memory_gb"):
        assert key in train[0]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6]
    assert [s["step"] for s in saved] == [6]  # save_every=0: the end-of-run checkpoint only
    assert (run_dir / "final" / "adapters.safetensors").is_file()
    assert any("Training" in line for line in logs)
    assert not [r for r in qtlog.records if "thread" in r.message.lower()]


def test_stop_ends_with_status_stopped_and_a_checkpoint(qtbot, controller, config):
    config.max_steps = 100_000
    with qtbot.waitSignal(controller.metrics, timeout=TIMEOUT, check_params_cb=lambda r: r["type"] == "train"):
        controller.start(config)
    with qtbot.waitSignal(controller.finished, timeout=TIMEOUT) as finished:
        controller.stop()
    result = finished.args[0]
    assert result["status"] == "stopped"
    assert 1 <= result["step"] < 100_000
    checkpoint = Path(result["run_dir"]) / "checkpoints" / f"step-{result['step']:06d}"
    assert (checkpoint / "adapters.safetensors").is_file()
    assert (checkpoint / "trainer_state.json").is_file()
    assert not (Path(result["run_dir"]) / "final").exists()
    qtbot.waitUntil(lambda: not controller.running, timeout=10_000)


def test_pause_holds_at_a_step_boundary_and_save_now_checkpoints(qtbot, controller, config):
    config.max_steps = 100_000
    steps, saved = [], []
    controller.metrics.connect(lambda r: r["type"] == "train" and steps.append(r["step"]))
    controller.checkpointSaved.connect(saved.append)
    with qtbot.waitSignal(controller.metrics, timeout=TIMEOUT, check_params_cb=lambda r: r["type"] == "train"):
        controller.start(config)
    with qtbot.waitSignal(controller.pausedChanged, timeout=TIMEOUT, check_params_cb=lambda p: p is True):
        controller.pause(True)
    held = len(steps)
    qtbot.wait(300)
    assert len(steps) == held  # no step while paused
    with qtbot.waitSignal(controller.checkpointSaved, timeout=TIMEOUT):
        controller.save_now()  # honoured while paused
    assert saved[-1]["step"] == steps[-1]
    with qtbot.waitSignal(controller.pausedChanged, timeout=TIMEOUT, check_params_cb=lambda p: p is False):
        controller.pause(False)
    qtbot.waitUntil(lambda: len(steps) > held + 1, timeout=TIMEOUT)
    with qtbot.waitSignal(controller.finished, timeout=TIMEOUT) as finished:
        controller.stop()
    assert finished.args[0]["status"] == "stopped"


def test_stop_while_paused_ends_the_run(qtbot, controller, config):
    config.max_steps = 100_000
    with qtbot.waitSignal(controller.metrics, timeout=TIMEOUT, check_params_cb=lambda r: r["type"] == "train"):
        controller.start(config)
    with qtbot.waitSignal(controller.pausedChanged, timeout=TIMEOUT):
        controller.pause(True)
    with qtbot.waitSignal(controller.finished, timeout=TIMEOUT) as finished:
        controller.stop()
    assert finished.args[0]["status"] == "stopped"


def test_user_error_is_reported_with_its_field_not_raised(qtbot, controller, config, tmp_path):
    config.lora.targets = ["self_attn.nope_proj"]  # only the loaded model can tell this is wrong
    fields = []
    controller.failedField.connect(lambda field, message: fields.append(field))
    with qtbot.waitSignal(controller.failed, timeout=TIMEOUT) as failed:
        controller.start(config)
    assert "self_attn.nope_proj" in failed.args[0] and "self_attn.q_proj" in failed.args[0]
    assert fields == ["lora.targets"]
    qtbot.waitUntil(lambda: not controller.running, timeout=10_000)
    assert not (tmp_path / "runs" / "worker-test" / "config.toml").exists()  # nothing half-written


def test_bad_data_reports_file_and_line(qtbot, controller, config, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(chat_records(1)[0]) + "\n{not json\n")
    config.data = str(bad)
    with qtbot.waitSignal(controller.failed, timeout=TIMEOUT) as failed:
        controller.start(config)
    assert str(bad) in failed.args[0] and "line 2" in failed.args[0]

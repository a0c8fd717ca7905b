"""Disk full / unwritable output during a run: a clear UserError, earlier checkpoints intact,
nothing half-written left behind, and the run resumes once space is freed.

The simulated cases patch the write calls to fail the way they really do (mlx raises
RuntimeError "[write] Unable to write ...", Python OSError ENOSPC). The real cases mount a
small tmpfs (root only; skipped where mounting is not allowed) and fill it.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from tests.crash_harness import check_checkpoint
from tests.train_helpers import make_config, write_chat_data
from trainer_core.training import checkpoint as checkpoint_module
from trainer_core import runner
from trainer_core.training.callbacks import Callback, LogWriter, MetricsWriter, read_metrics
from trainer_core.training.checkpoint import CheckpointManager
from trainer_core.errors import UserError

ROOT = Path(__file__).resolve().parents[3]
STEPS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_chat_data(tmp_path_factory.mktemp("data"), 16)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, data, tmp_path_factory):
    """Final weights of the uninterrupted run."""
    out = tmp_path_factory.mktemp("ref")
    runner.train(config(tiny_model_dir, data, out, "ref"))
    return mx.load(str(out / "ref" / "final" / "adapters.safetensors"))


def config(model, data, out, name, **fields):
    """No sample prompts: every write (and fsync) counted below is a checkpoint's."""
    return make_config(model, data, out, run_name=name, method="lora", max_steps=STEPS, save_every=1,
                       keep_last=0, batch_size=2, learning_rate=1e-2, num_samples=0, **fields)


def assert_resumes_to(run_dir: Path, reference: dict) -> None:
    result = runner.resume(run_dir)
    assert result.status == "finished" and result.step == STEPS
    final = mx.load(str(run_dir / "final" / "adapters.safetensors"))
    assert all(mx.array_equal(final[k], reference[k]).item() for k in reference)
    train = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert train == list(range(1, STEPS + 1))


def assert_intact(run_dir: Path, steps: list[int]) -> None:
    folder = run_dir / "checkpoints"
    assert sorted(os.listdir(folder)) == [f"step-{s:06d}" for s in steps]  # no .tmp-* left
    for s in steps:
        assert check_checkpoint(folder / f"step-{s:06d}") == []
    assert CheckpointManager(folder).latest().name == f"step-{steps[-1]:06d}"


# ---- simulated: the Nth write of a run fails ------------------------------------------------

def _fail_nth(monkeypatch, module, name, n, error):
    original = getattr(module, name)
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, flaky)


# save_safetensors: 2 calls per checkpoint (weights, optimizer), so 5 and 6 hit step 3.
# fsync: 1 for config.toml, then 6 per checkpoint (4 files, the temp folder, the parent), so 14..19 hit step 3.
@pytest.mark.parametrize("module, name, n, error", [
    (checkpoint_module.mx, "save_safetensors", 5, RuntimeError("[write] Unable to write 68355 bytes to file.")),
    (checkpoint_module.mx, "save_safetensors", 6, RuntimeError("[write] Unable to write 136876 bytes to file.")),
    (checkpoint_module.mx, "save_safetensors", 5, RuntimeError("[save_safetensors] Failed to open file x")),
    (checkpoint_module.os, "fsync", 14, OSError(errno.ENOSPC, "No space left on device")),
    (checkpoint_module.os, "fsync", 18, OSError(errno.EIO, "Input/output error")),
], ids=["weights", "optimizer", "open", "fsync-enospc", "fsync-eio"])
def test_failed_checkpoint_write_is_a_user_error_and_resumes(tiny_model_dir, data, reference, tmp_path,
                                                             monkeypatch, module, name, n, error):
    _fail_nth(monkeypatch, module, name, n, error)
    with pytest.raises(UserError) as err:
        runner.train(config(tiny_model_dir, data, tmp_path, "run"))
    monkeypatch.undo()  # space is freed
    run_dir = tmp_path / "run"
    message = str(err.value)
    assert str(run_dir / "checkpoints" / "step-000003") in message and "Free disk space" in message
    assert_intact(run_dir, [1, 2])
    assert_resumes_to(run_dir, reference)


def test_failed_final_write_resumes_to_final(tiny_model_dir, data, reference, tmp_path, monkeypatch):
    _fail_nth(monkeypatch, checkpoint_module.mx, "save_safetensors", 2 * STEPS + 1,
              RuntimeError("[write] Unable to write 68355 bytes to file."))
    with pytest.raises(UserError, match="final"):
        runner.train(config(tiny_model_dir, data, tmp_path, "run"))
    monkeypatch.undo()
    run_dir = tmp_path / "run"
    assert not (run_dir / "final").exists() and not list(run_dir.glob(".tmp-*"))
    assert_intact(run_dir, list(range(1, STEPS + 1)))
    assert_resumes_to(run_dir, reference)


@pytest.mark.parametrize("writer", [MetricsWriter, LogWriter])
def test_full_disk_under_metrics_and_log_is_a_user_error(writer):
    callback = writer(Path("/dev/full"))  # every write: ENOSPC
    with pytest.raises(UserError, match="/dev/full.*Free disk space"):
        callback.on_log("x") if writer is LogWriter else callback.on_step_end({"step": 1, "loss": 1.0})


def test_unwritable_output_dir_is_a_user_error(tiny_model_dir, data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")  # root ignores chmod, but not a file in the way
    with pytest.raises(UserError, match="Cannot write the run folder") as err:
        runner.train(config(tiny_model_dir, data, blocker, "run"))
    assert str(blocker) in str(err.value)


# ---- real: a small tmpfs that fills up -------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs at tmp_path/disk (root only)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Write a filler file so that about `leave` bytes stay free."""
    stat = os.statvfs(disk)
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return filler


class FillAfter(Callback):
    def __init__(self, disk, step):
        self.disk, self.step = disk, step

    def on_save(self, info):
        if info["step"] == self.step:
            fill(self.disk, 32 * 1024)  # room for metrics lines, not for a ~200 KB checkpoint


def test_disk_fills_up_mid_run(tiny_model_dir, data, reference, small_disk):
    with pytest.raises(UserError, match="Could not write .*step-000003/adapters.safetensors") as err:
        runner.train(config(tiny_model_dir, data, small_disk, "run"), [FillAfter(small_disk, 2)])
    assert "Free disk space" in str(err.value) and err.value.reason == "disk_full"
    run_dir = small_disk / "run"
    ended = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("event") == "stopped"]
    assert [(r["reason"], r["step"]) for r in ended] == [("disk_full", 3)]
    assert_intact(run_dir, [1, 2])
    (small_disk / "filler").unlink()
    assert_resumes_to(run_dir, reference)


def test_cli_on_a_full_disk_exits_2_and_resumes(tiny_model_dir, data, reference, small_disk):
    fill(small_disk, 48 * 1024)  # the run folder fits, its first checkpoint does not
    args = [sys.executable, "-m", "trainer_core", "train", "--method", "lora", "--model", str(tiny_model_dir),
            "--data", str(data), "--output-dir", str(small_disk), "--run-name", "run", "--max-steps", str(STEPS),
            "--save-every", "1", "--batch-size", "2", "--learning-rate", "1e-2", "--lr-schedule", "constant",
            "--set", "keep_last=0"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "error: Could not write" in done.stderr
    run_dir = small_disk / "run"
    assert not list((run_dir / "checkpoints").iterdir())  # nothing half-written
    (small_disk / "filler").unlink()
    done = subprocess.run([sys.executable, "-m", "trainer_core", "resume", str(run_dir)], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    final = mx.load(str(run_dir / "final" / "adapters.safetensors"))
    assert all(mx.array_equal(final[k], reference[k]).item() for k in reference)

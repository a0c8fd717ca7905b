"""The memory estimate (training/memory.py): against MLX's measured peak per method, its parts, and the
pre-start check (runner.build_run refuses a run that can't fit unless forced)."""

from __future__ import annotations

import gc

import mlx.core as mx
import pytest

from tests.tiny_model import make_tiny_llama
from tests.train_helpers import WORDS, make_config, write_jsonl
from trainer_core import runner
from trainer_core.config import RunConfig
from trainer_core.errors import UserError
from trainer_core.models.loading import read_model_info
from trainer_core.training import memory
from trainer_core.training.callbacks import Callback

CASES = {  # method -> settings; rows fill max_seq_length, GRPO samples to max_completion_length
    "lora": dict(batch_size=4, max_seq_length=256),
    "sft": dict(batch_size=2, max_seq_length=256),
    "dpo": dict(batch_size=2, max_seq_length=256),
    "grpo": dict(batch_size=2, max_seq_length=160, grpo={"group_size": 4, "max_completion_length": 64, "beta": 0.04}),
    "diffusion": dict(batch_size=4, max_seq_length=256),
}


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory):
    """A tiny Llama wide enough that activations and logits, not fixed overheads, make the peak."""
    return make_tiny_llama(tmp_path_factory.mktemp("wide-llama"), hidden=256, layers=2, vocab=2048)


def long_text(i: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(400))


def write_data(method: str, folder):
    if method == "dpo":
        records = [{"prompt": "Say it.", "chosen": long_text(i), "rejected": long_text(i + 3)} for i in range(8)]
    elif method == "grpo":
        records = [{"prompt": f"Count to {i}.", "answer": str(i)} for i in range(8)]
    else:
        records = [{"text": long_text(i)} for i in range(8)]
    write_jsonl(folder / "train.jsonl", records)
    return folder


class Peaks(Callback):
    def __init__(self):
        self.peaks = []

    def on_step_end(self, metrics):
        self.peaks.append(metrics["peak_memory_gb"] * 1e9)


@pytest.mark.parametrize("method", list(CASES))
def test_estimate_is_within_25_percent_of_the_measured_peak(method, wide_model_dir, tmp_path):
    settings = dict(CASES[method])
    grpo = settings.pop("grpo", None)
    config = make_config(wide_model_dir, write_data(method, tmp_path / "data"), tmp_path / "runs", method=method,
                         max_steps=1, num_samples=0, **settings)
    if grpo:
        config = config.with_overrides([f"grpo.{k}={v}" for k, v in grpo.items()])
    peaks = Peaks()
    gc.collect()  # arrays other tests left alive count in MLX's peak too: measure above them
    mx.clear_cache()
    baseline = mx.get_active_memory()
    run = runner.build_run(config, [peaks])
    if method == "grpo":  # sample every completion to max_completion_length: the case the estimate describes
        run.loop.method.eos_ids = lambda: set()
    estimated = run.memory.peak
    mx.reset_peak_memory()
    run.train()
    measured = max(peaks.peaks) - baseline
    assert estimated == pytest.approx(measured, rel=0.25), (method, estimated / 1e6, measured / 1e6, run.memory.parts)

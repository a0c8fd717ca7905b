"""Small helpers shared by the training-core tests: datasets on disk, configs, runs, numpy references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx
from mlx.utils import tree_flatten

from trainer_core import runner
from trainer_core.config import RunConfig
from trainer_core.training.callbacks import Callback

WORDS = ["fox", "dog", "Paris", "France", "island", "purple", "sand", "seven", "lighthouses", "legs",
         "spider", "eight", "world", "small", "models", "laptop", "fun", "capital", "quick", "brown"]


def chat_record(i: int) -> dict:
    """A deterministic chat record whose reply length varies with i."""
    reply = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(2 + (i * 5) % 9))
    return {"messages": [
        {"role": "user", "content": f"Question {i}: tell me about the {WORDS[i % len(WORDS)]}?"},
        {"role": "assistant", "content": f"The answer is {reply}."},
    ]}


def write_jsonl(path: Path, records) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_chat_data(folder: Path, n_train: int = 16, n_valid: int = 0) -> Path:
    """A data folder with train.jsonl (+ valid.jsonl when n_valid)."""
    folder = Path(folder)
    write_jsonl(folder / "train.jsonl", [chat_record(i) for i in range(n_train)])
    if n_valid:
        write_jsonl(folder / "valid.jsonl", [chat_record(1000 + i) for i in range(n_valid)])
    return folder


def make_config(model_dir, data, out_dir, **fields) -> RunConfig:
    base = dict(method="sft", model=str(model_dir), data=str(data), output_dir=str(out_dir), run_name="run",
                max_steps=2, batch_size=4, save_every=0, eval_every=0, lr_schedule="constant",
                sample_max_tokens=4)  # samples stay on, short: what they say is tested in test_samples.py
    base.update(fields)
    return RunConfig(**base)


def build(model_dir, tmp_path, *, n_train=16, n_valid=0, callbacks=(), **fields) -> runner.Run:
    data = write_chat_data(Path(tmp_path) / "data", n_train, n_valid)
    return runner.build_run(make_config(model_dir, data, Path(tmp_path) / "runs", **fields), callbacks)


def flat_params(module, trainable: bool = False) -> dict[str, np.ndarray]:
    params = module.trainable_parameters() if trainable else module.parameters()
    return {k: np.array(v) for k, v in tree_flatten(params)}


def np_log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def reference_loss(model, examples) -> tuple[float, int]:
    """(sum of next-token NLL over target tokens, target count): each example run alone, unpadded."""
    total, count = 0.0, 0
    for e in examples:
        ids = np.array(e.input_ids)
        logits = np.array(model(mx.array(ids[None, :-1]))[0].astype(mx.float32))
        logp = np_log_softmax(logits)
        for pos in range(1, len(ids)):
            if e.target_mask[pos]:
                total -= logp[pos - 1, ids[pos]]
                count += 1
    return total, count


class StopAfter(Callback):
    """Asks the loop to stop once `steps` optimizer steps are done."""

    def __init__(self, steps):
        self.steps, self.seen = steps, 0

    def on_step_end(self, metrics):
        self.seen = metrics["step"]

    def should_stop(self):
        return self.seen >= self.steps

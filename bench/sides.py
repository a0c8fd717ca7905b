"""The throughput bench's sides: ours (the product's build_run), mlx-lm's own trainer, PyTorch + PEFT, each timed
step by step the same way (`StepRecord`, `summarise`). bench/throughput.py runs them; see its doc."""

from __future__ import annotations

import trainer_core  # noqa: F401  (first: OpenBLAS before MLX on Linux)
import contextlib
import gc
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx_lm.tuner import trainer as mlx_trainer
from mlx_lm.tuner.datasets import CacheDataset
from mlx_lm.tuner.utils import linear_to_lora_layers

from trainer_core.config import RunConfig
from trainer_core.models.adapters import lora_parameters, num_adapted_layers
from trainer_core.models.loading import load_model
from trainer_core.runner import build_run
from trainer_core.training.callbacks import Callback

TORCH_VERSIONS: dict = {}  # filled where a PyTorch side ran (throughput.machine)

@dataclass
class StepRecord:
    end: float  # perf_counter when the step's loop iteration had finished (mlx-lm: next batch yielded)
    input_tokens: int
    trained_tokens: int
    padded_tokens: int
    width: int  # padded row width of the batch array
    new_shape: bool
    cpu: float = 0.0  # time.process_time() at `end` (CPU seconds of this process, all threads)


def summarise(steps: list[StepRecord], start: StepRecord, peak: int, side: str, extra: dict) -> dict:
    """Figures over the measured window (the steps after warmup); `start` = the record that opens it."""
    cpu = steps[-1].cpu - start.cpu
    start = start.end
    elapsed = steps[-1].end - start
    times, prev = [], start
    for s in steps:
        times.append(s.end - prev)
        prev = s.end
    tok = sum(s.input_tokens for s in steps)
    trained = sum(s.trained_tokens for s in steps)
    padded = sum(s.padded_tokens for s in steps)
    repeat_times = [t for t, s in zip(times, steps) if not s.new_shape]
    repeat_tok = sum(s.input_tokens for s in steps if not s.new_shape)
    return {
        "side": side, "steps": len(steps), "seconds": elapsed,
        "tokens_per_sec": tok / elapsed, "trained_tokens_per_sec": trained / elapsed,
        "padded_tokens_per_sec": padded / elapsed,
        "ms_per_step": 1000 * statistics.median(times), "ms_per_step_mean": 1000 * elapsed / len(steps),
        "input_tokens": tok, "trained_tokens": trained, "padded_tokens": padded,
        "padding_fraction": 1 - tok / padded if padded else 0.0,
        "cpu_seconds": cpu, "tokens_per_cpu_sec": tok / cpu if cpu > 0 else None,
        "new_shape_steps": sum(s.new_shape for s in steps),
        "widths": sorted({s.width for s in steps}),
        "repeat_shape_tokens_per_sec": (repeat_tok / sum(repeat_times)) if repeat_times else None,
        "peak_memory_gb": peak / 1e9,
        "per_step": [[round(t, 5), s.input_tokens, s.padded_tokens, s.width, s.new_shape] for t, s in zip(times, steps)],
        **extra,
    }


class StepTimer(Callback):
    """Our side: timestamps at each step's end (after the loop's own host reads and callbacks)."""

    def __init__(self):
        self.steps: list[StepRecord] = []
        self.seen: set = set()
        self.loss = None

    def on_step_end(self, m: dict) -> None:
        now = time.perf_counter()
        width = m["padded_tokens"] // max(1, self.batch_size)
        new = m["padded_tokens"] not in self.seen  # the batch shape (rows x width)
        self.seen.add(m["padded_tokens"])
        self.steps.append(StepRecord(now, m["input_tokens"], m["tokens"], m["padded_tokens"], width, new,
                                     time.process_time()))
        self.loss = m["loss"]


def fresh_memory() -> None:
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()


def lora_settings(config: RunConfig, model) -> tuple[int, dict]:
    return num_adapted_layers(config, model), lora_parameters(config, model)


OURS_MLX_LIMIT_GB = 0.0  # --ours-mlx-limit-gb


def run_ours(config: RunConfig, workdir: Path, tag: str, warmup: int, steps: int) -> dict:
    config = RunConfig.from_dict(config.to_dict())
    config.run_name = tag
    config.output_dir = str(workdir / "runs")
    config.max_steps = warmup + steps
    shutil.rmtree(workdir / "runs" / tag, ignore_errors=True)
    timer = StepTimer()
    timer.batch_size = config.batch_size
    run = build_run(config, callbacks=[timer])
    fresh_memory()
    previous = mx.get_memory_limit()
    if OURS_MLX_LIMIT_GB:  # below the run's own limit: runner keeps the smaller (guard.mlx_memory_limit)
        mx.set_memory_limit(int(OURS_MLX_LIMIT_GB * 1e9))
    with contextlib.redirect_stdout(sys.stderr):
        run.train()
    mx.set_memory_limit(previous)
    peak = mx.get_peak_memory()
    measured = timer.steps[warmup:]
    out = summarise(measured, timer.steps[warmup - 1], peak, "ours",
                    {"final_loss": timer.loss, "distinct_widths_all": len(timer.seen)})
    del run
    return out


class MlxDataset:
    """mlx-lm's own dataset object for the records (create_dataset: Chat/Completions/TextDataset),
    whose `process` returns our token sequence when `same_tokens` (mlx-lm's offset, i.e. its own
    prompt masking, is kept). `__getitem__` returns the raw record, so `CacheDataset.itemlen`
    (= number of JSON keys) orders batches exactly as in `mlx_lm.lora`."""

    def __init__(self, base, ours: list[list[int] | None], same_tokens: bool):
        self.base, self.ours, self.same_tokens = base, ours, same_tokens
        self.diff = {"records": len(ours), "identical": 0, "mlx_longer_by": {}, "other": 0}
        self._index = {id(base[i]): i for i in range(len(base))}

    def __getitem__(self, idx):
        return self.base[idx]

    def __len__(self):
        return len(self.base)

    def process(self, d):
        tokens, offset = self.base.process(d)
        tokens = list(tokens)
        ours = self.ours[self._index[id(d)]]
        return (ours, offset) if self.same_tokens and ours is not None else (tokens, offset)

    def compare(self) -> dict:
        """How mlx-lm's own tokenisation differs from ours, record by record."""
        for i in range(len(self.base)):
            tokens, _ = self.base.process(self.base[i])
            tokens, ours = list(tokens), self.ours[i]
            if ours is None:
                self.diff["other"] += 1
            elif tokens == ours:
                self.diff["identical"] += 1
            elif tokens[:len(ours)] == ours:
                k = str(len(tokens) - len(ours))
                self.diff["mlx_longer_by"][k] = self.diff["mlx_longer_by"].get(k, 0) + 1
            else:
                self.diff["other"] += 1
        return self.diff


def run_mlx(config: RunConfig, dataset: MlxDataset, workdir: Path, warmup: int, steps: int,
            cold_cache: bool = False) -> dict:
    loaded = load_model(config.model)
    model = loaded.model
    num_layers, params = lora_settings(config, model)
    mx.random.seed(config.seed)
    model.freeze()
    linear_to_lora_layers(model, num_layers, params)  # what mlx_lm.lora does (it also seeds first)
    opt = optim.Adam(learning_rate=config.learning_rate)
    args = mlx_trainer.TrainingArgs(
        batch_size=config.batch_size, iters=warmup + steps + 1, val_batches=0,
        steps_per_report=10**9, steps_per_eval=10**9, steps_per_save=10**9,
        max_seq_length=config.max_seq_length, adapter_file=str(workdir / "mlx-adapters.safetensors"))
    records: list[StepRecord] = []
    seen: set = set()
    last_loss = {}

    def timed_batches(**kw):
        for batch, lengths in mlx_trainer.iterate_batches(**kw):
            ln = np.array(lengths)  # [B, 2]: (offset, length)
            width = batch.shape[1]
            trained = int(np.maximum(0, ln[:, 1] - np.maximum(ln[:, 0], 1)).sum())
            new = batch.shape not in seen
            seen.add(batch.shape)
            records.append(StepRecord(time.perf_counter(), int(ln[:, 1].sum()), trained, int(batch.size), width, new,
                                      time.process_time()))
            yield batch, lengths

    class LossCallback(mlx_trainer.TrainingCallback if hasattr(mlx_trainer, "TrainingCallback") else object):
        def on_train_loss_report(self, info):
            last_loss["loss"] = info["train_loss"]

        def on_val_loss_report(self, info):
            pass

    cache = CacheDataset(dataset)
    if not cold_cache:  # tokenise up front, as ours does; mlx_lm.lora tokenises lazily in its first epoch
        for i in range(len(cache)):
            cache[i]
    fresh_memory()
    with contextlib.redirect_stdout(sys.stderr):
        mlx_trainer.train(model, opt, cache, None, args=args, iterate_batches=timed_batches,
                          training_callback=LossCallback())
    peak = mx.get_peak_memory()
    # records[i].end = when batch i was handed over, i.e. when step i-1 had finished
    # (plus the building of batch i). Step i (0-based) spans records[i].end .. records[i+1].end.
    window = records[warmup:warmup + steps + 1]
    measured = [StepRecord(window[k + 1].end, r.input_tokens, r.trained_tokens, r.padded_tokens, r.width, r.new_shape,
                           window[k + 1].cpu) for k, r in enumerate(window[:-1])]
    out = summarise(measured, window[0], peak, "mlx-lm",
                    {"final_loss": last_loss.get("loss"), "distinct_widths_all": len(seen)})
    del model, loaded, opt
    return out


def run_torch_side(config: RunConfig, examples, workdir: Path, warmup: int, steps: int, compile: bool) -> dict:
    """PyTorch + PEFT on the same model folder, rows and settings (bench/torch_peft.py, own process)."""
    from bench.torch_peft import run_in_subprocess
    out = run_in_subprocess(dict(model_path=config.model, examples=examples, batch_size=config.batch_size,
                                 warmup=warmup, steps=steps, rank=config.lora.rank, alpha=config.lora.alpha,
                                 learning_rate=config.learning_rate, max_grad_norm=config.max_grad_norm,
                                 compile=compile, seed=config.seed), workdir)
    TORCH_VERSIONS.update(out["versions"])
    recs = [StepRecord(end, r[2], r[3], r[4], r[5], False, cpu) for r in out["records"] for end, cpu in [r[:2]]]
    side = "torch-compile" if compile else "torch"
    return summarise(recs[warmup + 1:], recs[warmup], out["peak_bytes"], side, {"final_loss": out["final_loss"]})


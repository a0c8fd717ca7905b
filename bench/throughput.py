#!/usr/bin/env python
"""LoRA training throughput: Fine-Tune Studio's loop against mlx-lm's own trainer.

One process, one model, one dataset, identical settings. For each case the two
trainers run back to back, interleaved over `--repeats` rounds (mlx-lm, ours,
mlx-lm, ours, ... with the first side alternating per round), each run on a
freshly loaded model with freshly added adapters:

- mlx-lm: `mlx_lm.tuner.trainer.train` with its own `iterate_batches` and
  `default_loss`, `mlx.optimizers.Adam`, adapters from `linear_to_lora_layers`,
  the dataset wrapped in `CacheDataset` exactly as `mlx_lm.lora` does.
- ours: `trainer_core.runner.build_run(config).train()`, the product path
  (metrics.jsonl + log.txt written every step, default clipping and NaN guard).

Both use the same rank / scale / layers / keys, batch size, max_seq_length
and learning rate, and train on the same token sequences (see `--mlx-tokens`).
Only steps after `--warmup` are measured. Per step we count real (unpadded)
input tokens, trained (loss-scored, real) tokens and padded positions (rows x
padded width) separately; tokens/s is real input tokens / wall time of the
measured window (whole loop iterations: batching, step, host syncs, callbacks).
Peak memory is `mx.get_peak_memory()` reset right before each run (model weights
included, the same on both sides).

    .venv/bin/python bench/throughput.py --case micro
    .venv/bin/python bench/throughput.py --case micro,small,demo --json
    .venv/bin/python bench/throughput.py --case gpu --steps 2 --tiny-check   # CPU smoke test

OpenBLAS is preloaded for both sides: `trainer_core` is imported before mlx.
"""

from __future__ import annotations

import trainer_core  # noqa: F401  (first: loads OpenBLAS before MLX on Linux)

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlx.core as mx  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
import numpy as np  # noqa: E402
from mlx_lm.tuner import trainer as mlx_trainer  # noqa: E402
from mlx_lm.tuner.datasets import CacheDataset, create_dataset  # noqa: E402
from mlx_lm.tuner.utils import linear_to_lora_layers  # noqa: E402

from trainer_core.models import native_blas  # noqa: E402

from trainer_core import versions
from trainer_core.models.adapters import lora_parameters, num_adapted_layers  # noqa: E402
from trainer_core.training.callbacks import Callback  # noqa: E402
from trainer_core.config import RunConfig  # noqa: E402
from trainer_core.data import load_dataset, tokenize_sft  # noqa: E402
from trainer_core.models.loading import load_model, should_dequantize  # noqa: E402
from trainer_core.runner import build_run  # noqa: E402

DEMO_DATA = ROOT / "resources" / "demo_data"
TORCH_VERSIONS: dict = {}


# ---------------------------------------------------------------- cases

@dataclass
class Case:
    name: str
    model: str | None = None  # a path or "demo"; None = build one
    build: dict = field(default_factory=dict)  # random Llama to build
    data: str | None = None  # None = the demo dataset; "synthetic" = long text records
    batch_size: int = 4
    max_seq_length: int = 512
    steps: int = 40
    warmup: int = 5
    repeats: int = 3
    dtype: str = "float32"
    dequantize: bool = False  # write the (quantized) model out as a float32 folder first and use that
    sides: str = "mlx,ours"  # default --sides: mlx, ours, torch (PyTorch + PEFT eager), torch-compile


CASES = {
    "micro": Case("micro", build=dict(hidden=64, layers=2, vocab=512), steps=60, warmup=10, repeats=5),
    "small": Case("small", build=dict(hidden=256, layers=4, vocab=512), steps=40, warmup=8, repeats=3),
    # QLoRA on the Q4_1 GGUF: MLX's CPU quantized matmul makes a step take about a minute here
    "demo": Case("demo", model="demo", steps=3, warmup=1, repeats=2),
    # the same model dequantized once to a float32 folder: LoRA on a float base (BLAS matmuls)
    "demo-f32": Case("demo-f32", model="demo", dequantize=True, steps=10, warmup=2, repeats=3),
    # ~0.7B random Llama at batch 4 x 1024 (for MLX-CUDA on a GPU machine); bf16 weights
    "gpu": Case("gpu", build=dict(hidden=1536, layers=24, intermediate=4096, heads=12, kv_heads=4, vocab=32000),
                data="synthetic", max_seq_length=1024, steps=20, warmup=5, repeats=3, dtype="bfloat16",
                sides="mlx,ours,torch,torch-compile"),
}
TINY_CHECK = dict(hidden=64, layers=2, intermediate=128, heads=4, kv_heads=2, vocab=512)


def build_llama(folder: Path, *, hidden: int, layers: int, vocab: int, intermediate: int | None = None,
                heads: int = 4, kv_heads: int = 2, dtype: str = "float32", seed: int = 0) -> Path:
    """A random-weight Llama folder with the tests' byte-level BPE tokenizer (tokens < 512 only;
    the model's vocab can be larger, which costs the same compute as a real one)."""
    from mlx.utils import tree_flatten, tree_map
    from mlx_lm.models import llama
    from tests.tiny_model import make_tiny_llama, write_tokenizer

    if intermediate is None and dtype == "float32" and heads == 4 and kv_heads == 2:
        return make_tiny_llama(folder, hidden=hidden, layers=layers, vocab=vocab, seed=seed)  # the tests' model
    folder.mkdir(parents=True, exist_ok=True)
    tok_vocab = write_tokenizer(folder, 512)
    config = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden, "num_hidden_layers": layers,
        "intermediate_size": intermediate or hidden * 2,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-5, "vocab_size": max(vocab, tok_vocab), "max_position_embeddings": 4096,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "eos_token_id": 2, "bos_token_id": None,
        "torch_dtype": dtype,
    }
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    if dtype != "float32":
        model.update(tree_map(lambda p: p.astype(getattr(mx, dtype)), model.parameters()))
    mx.eval(model.parameters())
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())),
                        metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return folder


def dequantized_folder(spec: str, folder: Path) -> Path:
    """`spec` loaded dequantized (float32) and saved as an HF-style folder both sides can load."""
    if (folder / "config.json").exists():
        return folder
    from mlx.utils import tree_flatten
    loaded = load_model(spec, dequantize=True)
    folder.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(loaded.model.parameters())),
                        metadata={"format": "mlx"})
    config = {k: v for k, v in loaded.config.items() if k not in ("quantization", "quantization_config")}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    loaded.tokenizer._tokenizer.save_pretrained(str(folder))
    return folder


def write_data(case: Case, folder: Path, n_synthetic: int) -> Path:
    """A data folder holding only train.jsonl (no valid split: no evaluation in the timed runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    if case.data == "synthetic":
        from tests.tiny_model import CORPUS
        words = sorted({w for line in CORPUS for w in line.split()})
        rng = np.random.default_rng(0)
        # ~4 tokens per word with the tiny BPE: 2000 words overflow max_seq_length, so every
        # row is cut to max_seq_length on both sides: batches of batch x max_seq_length, no padding.
        lines = [json.dumps({"text": " ".join(rng.choice(words, size=max(2000, case.max_seq_length * 2)))})
                 for _ in range(n_synthetic)]
        (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    else:
        source = Path(case.data) if case.data else DEMO_DATA
        shutil.copy(source / "train.jsonl" if source.is_dir() else source, folder / "train.jsonl")
    return folder


# ---------------------------------------------------------------- measurement

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


def model_dims(cfg: dict) -> dict:
    """The widths model FLOPs need (HF-style config as loaded)."""
    hidden = cfg.get("hidden_size", 0)
    heads = cfg.get("num_attention_heads", 1)
    return {"hidden": hidden, "layers": cfg.get("num_hidden_layers", 0),
            "intermediate": cfg.get("intermediate_size", 0), "heads": heads,
            "kv_heads": cfg.get("num_key_value_heads", heads), "vocab": cfg.get("vocab_size", 0)}


def add_flops(res: dict, info: dict, rank: int, peak_tflops: float | None) -> None:
    """Model FLOPs per second of a run (LoRA maths, bench/torch_peft.lora_flops_per_token) and MFU."""
    from bench.torch_peft import lora_flops_per_token
    dims = info.get("model_config") or {}
    if not dims.get("hidden"):
        return
    flops = sum(n_in * lora_flops_per_token(**dims, seq=width - 1, rank=rank)
                for _, n_in, _, width, _ in res["per_step"])
    res["model_tflops"] = flops / res["seconds"] / 1e12
    res["mfu"] = res["model_tflops"] / peak_tflops if peak_tflops else None


def gpu_peak_tflops(args) -> float | None:
    """Dense bf16 peak of the GPU (H100/H200 SXM: 989 TFLOP/s), or --peak-tflops; None on CPU."""
    if args.peak_tflops:
        return args.peak_tflops
    name = (machine().get("gpu") or "")
    return 989.4 if ("H100" in name or "H200" in name) else None


# ---------------------------------------------------------------- a case

def prepare_case(case: Case, args, workdir: Path) -> tuple[RunConfig, MlxDataset, dict]:
    workdir.mkdir(parents=True, exist_ok=True)
    if args.model or case.model:
        model_spec = args.model or case.model
        if case.dequantize:
            model_spec = str(dequantized_folder(model_spec, workdir / "model-f32"))
    else:
        build = dict(TINY_CHECK if args.tiny_check else case.build)
        model_spec = str(build_llama(workdir / "model", dtype=case.dtype, **build))
    n_records = (case.warmup + case.steps + 2) * case.batch_size
    data = write_data(case, workdir / "data", n_synthetic=max(64, n_records))
    config = RunConfig(method="lora", model=model_spec, data=str(data), batch_size=case.batch_size,
                       max_seq_length=case.max_seq_length, save_every=0, eval_every=0, keep_last=0,
                       seed=args.seed)
    config.lora.rank = args.rank
    config.lora.alpha = 2.0 * args.rank  # scale 2 (the pinned default alpha 16 / rank 8)
    if args.ours_set:
        config = config.with_overrides(args.ours_set)
    config.validate()

    loaded = load_model(config.model)
    splits = load_dataset(config.data, config.data_kind or None)
    records = [r.data for r in splits.train]
    ours, examples = [], []
    for rec in splits.train:  # our tokenisation, record by record (the function build_run uses)
        ex, _ = tokenize_sft([rec], loaded.tokenizer, splits.kind, config.max_seq_length, config.mask_prompt)
        ours.append(ex[0].input_ids if ex else None)
        if ex:
            examples.append((ex[0].input_ids, ex[0].target_mask))
    # mlx-lm refuses mask_prompt for text data; ours ignores it there (text trains every token)
    mlx_config = argparse.Namespace(mask_prompt=config.mask_prompt and splits.kind != "text")
    base = create_dataset(records, loaded.tokenizer, mlx_config)
    dataset = MlxDataset(base, ours, same_tokens=args.mlx_tokens == "ours")
    dataset.examples = examples  # (input_ids, target_mask) for the PyTorch side
    diff = dataset.compare()
    num_layers, params = lora_settings(config, loaded.model)
    info = {
        "model": loaded.info.name, "model_path": str(loaded.info.path),
        "parameters_m": round(loaded.info.num_parameters / 1e6, 2), "quantization": loaded.info.quantization,
        "layers": loaded.info.num_layers, "hidden": loaded.info.hidden_size, "vocab": loaded.info.vocab_size,
        "data_kind": splits.kind, "records": len(records),
        "mean_tokens": round(float(np.mean([len(o) for o in ours if o])), 1),
        "max_tokens": max(len(o) for o in ours if o),
        "batch_size": config.batch_size, "max_seq_length": config.max_seq_length,
        "lora": {"num_layers": num_layers, **params}, "mask_prompt": config.mask_prompt,
        "learning_rate": config.learning_rate, "max_grad_norm": config.max_grad_norm,
        "mlx_dataset": type(base).__name__, "mlx_tokens": args.mlx_tokens, "tokenisation_diff": diff,
        "ours_set": args.ours_set, "model_config": model_dims(loaded.config),
        # our runner's quantized_base policy: "auto" dequantizes a quantized base where MLX runs on
        # the CPU (its quantized matmuls are ~20x slower there); mlx-lm always trains on it as it is
        "ours_dequantizes_base": loaded.info.quantization != "none"
                                 and should_dequantize(getattr(config, "quantized_base", "keep")),
    }
    del loaded
    return config, dataset, info


def run_case(case: Case, args) -> dict:
    if args.tiny_check:  # a smoke test of the code path: one short round unless told otherwise
        case.warmup, case.repeats = 1, 1
    if args.steps:
        case.steps = args.steps
    if args.warmup is not None:
        case.warmup = args.warmup
    if args.repeats:
        case.repeats = args.repeats
    if args.batch_size:
        case.batch_size = args.batch_size
    if args.max_seq_length:
        case.max_seq_length = args.max_seq_length
    case.warmup = max(1, case.warmup)
    workdir = Path(args.workdir) / case.name
    config, dataset, info = prepare_case(case, args, workdir)
    if info["ours_dequantizes_base"]:
        print(f"[{case.name}] note: ours dequantizes the {info['quantization']} base (quantized_base="
              f"{config.quantized_base}); mlx-lm runs QLoRA on it. --ours-set quantized_base=keep compares "
              "the same maths", file=sys.stderr)
    print(f"[{case.name}] {info['model']} ({info['parameters_m']}M, {info['quantization']}), "
          f"{info['records']} {info['data_kind']} records (mean {info['mean_tokens']} tokens), "
          f"batch {case.batch_size}, max_seq_length {case.max_seq_length}, rank {args.rank}, "
          f"{case.warmup} warmup + {case.steps} measured steps x {case.repeats} rounds", file=sys.stderr)
    sides = (args.sides or case.sides).split(",")
    runs = {"mlx-lm": [], "ours": [], "torch": [], "torch-compile": []}
    peak_tflops = gpu_peak_tflops(args)
    for r in range(case.repeats):
        order = sides if r % 2 == 0 else sides[::-1]
        for side in order:
            if side == "mlx":
                res = run_mlx(config, dataset, workdir, case.warmup, case.steps, cold_cache=args.mlx_cold_cache)
            elif side in ("torch", "torch-compile"):
                res = run_torch_side(config, dataset.examples, workdir, case.warmup, case.steps, side == "torch-compile")
            else:
                res = run_ours(config, workdir, f"ours-{r}", case.warmup, case.steps)
            add_flops(res, info, args.rank, peak_tflops)
            res["round"] = r
            runs[res["side"]].append(res)
            print(f"  round {r} {res['side']:6s} {res['tokens_per_sec']:9.0f} tok/s  {res['ms_per_step']:8.1f} ms/step"
                  f"  pad {100 * res['padding_fraction']:4.1f}%  peak {res['peak_memory_gb']:.3f} GB"
                  f"  new-shape steps {res['new_shape_steps']}  loss {res.get('final_loss')}", file=sys.stderr)
    summary = {side: aggregate(rs) for side, rs in runs.items() if rs}
    if runs["mlx-lm"] and runs["ours"]:
        paired = [o["tokens_per_sec"] / m["tokens_per_sec"] for o, m in zip(runs["ours"], runs["mlx-lm"])]
        summary["ratio"] = {
            "tokens_per_sec": summary["ours"]["tokens_per_sec"] / summary["mlx-lm"]["tokens_per_sec"],
            "paired_median": statistics.median(paired), "paired": paired,
            "padded_tokens_per_sec": (summary["ours"]["padded_tokens_per_sec"]
                                      / summary["mlx-lm"]["padded_tokens_per_sec"]),
            "peak_memory": summary["ours"]["peak_memory_gb"] / summary["mlx-lm"]["peak_memory_gb"],
        }
        if summary["ours"]["tokens_per_cpu_sec"] and summary["mlx-lm"]["tokens_per_cpu_sec"]:
            summary["ratio"]["tokens_per_cpu_sec"] = (summary["ours"]["tokens_per_cpu_sec"]
                                                      / summary["mlx-lm"]["tokens_per_cpu_sec"])
    summary["ratios"] = {}  # ours / each other side
    for other in ("mlx-lm", "torch", "torch-compile"):
        if runs["ours"] and runs[other]:
            paired = [o["tokens_per_sec"] / m["tokens_per_sec"] for o, m in zip(runs["ours"], runs[other])]
            summary["ratios"][other] = {
                "tokens_per_sec": summary["ours"]["tokens_per_sec"] / summary[other]["tokens_per_sec"],
                "paired_median": statistics.median(paired), "paired": paired,
                "peak_memory": summary["ours"]["peak_memory_gb"] / summary[other]["peak_memory_gb"]
                if summary[other]["peak_memory_gb"] else None}
    return {"case": case.name, "info": info, "warmup": case.warmup, "steps": case.steps,
            "repeats": case.repeats, "summary": summary, "runs": runs}


def aggregate(rs: list[dict]) -> dict:
    """Medians over rounds, plus the spread (max-min)/median of tokens/s as the noise figure."""
    out = {}
    for key in ("tokens_per_sec", "trained_tokens_per_sec", "padded_tokens_per_sec", "ms_per_step",
                "padding_fraction", "peak_memory_gb", "new_shape_steps", "repeat_shape_tokens_per_sec",
                "tokens_per_cpu_sec", "model_tflops", "mfu"):
        values = [r.get(key) for r in rs if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    tps = [r["tokens_per_sec"] for r in rs]
    out["spread"] = (max(tps) - min(tps)) / statistics.median(tps) if len(tps) > 1 else 0.0
    out["all_tokens_per_sec"] = tps
    return out


# ---------------------------------------------------------------- output

def table(results: list[dict]) -> str:
    head = ("case", "side", "tok/s", "trained/s", "padded/s", "tok/cpu-s", "ms/step", "pad%", "peak GB", "GFLOP/s",
            "MFU%", "spread", "ours/side (tok/s; peak)")
    rows = [head]
    for res in results:
        s = res["summary"]
        for side in ("mlx-lm", "torch", "torch-compile", "ours"):
            if side not in s:
                continue
            a = s[side]
            ratio = ""
            r = s.get("ratios", {}).get(side)
            if r:
                ratio = f"{r['tokens_per_sec']:.2f}x (paired {r['paired_median']:.2f}x)"
                ratio += f"; {r['peak_memory']:.2f}x" if r["peak_memory"] else ""
            rows.append((res["case"], side, f"{a['tokens_per_sec']:.0f}", f"{a['trained_tokens_per_sec']:.0f}",
                         f"{a['padded_tokens_per_sec']:.0f}", f"{a['tokens_per_cpu_sec'] or 0:.0f}",
                         f"{a['ms_per_step']:.1f}",
                         f"{100 * a['padding_fraction']:.1f}", f"{a['peak_memory_gb']:.3f}",
                         f"{1000 * a['model_tflops']:.0f}" if a.get("model_tflops") else "",
                         f"{100 * a['mfu']:.1f}" if a.get("mfu") else "",
                         f"±{50 * a['spread']:.0f}%", ratio))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if 2 <= i < len(head) - 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "mlx_device": str(mx.default_device()), "openblas": native_blas.loaded_path, **versions()}
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    info.update(TORCH_VERSIONS)  # where a PyTorch side ran
    try:
        if mx.cuda.is_available():
            info["gpu"] = mx.device_info().get("device_name", "cuda") if hasattr(mx, "device_info") else "cuda"
    except AttributeError:
        pass
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default="micro", help=f"comma-separated: {', '.join(CASES)} (default micro)")
    p.add_argument("--model", help="model folder, .gguf or 'demo' (overrides the case's model)")
    p.add_argument("--data", help="data file or folder (train.jsonl); default: the case's")
    p.add_argument("--steps", type=int, help="measured steps per run")
    p.add_argument("--warmup", type=int, help="unmeasured steps at the start of each run (>= 1)")
    p.add_argument("--repeats", type=int, help="interleaved rounds (mlx-lm and ours each run once per round)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-seq-length", type=int)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sides", help="order of the first round, from mlx, ours, torch (PyTorch + PEFT, eager), "
                   "torch-compile; default: the case's (gpu: all four, others: mlx,ours)")
    p.add_argument("--peak-tflops", type=float, help="the device's peak for MFU (default: 989.4 on H100/H200)")
    p.add_argument("--mlx-tokens", choices=("ours", "mlx"), default="ours",
                   help="ours: mlx-lm trains on exactly our token sequences (default); mlx: on its own "
                        "tokenisation of the same records")
    p.add_argument("--mlx-cold-cache", action="store_true",
                   help="let mlx-lm tokenise lazily inside the timed steps (what mlx_lm.lora does in its first "
                        "epoch); default: its CacheDataset is filled before timing, as our examples are")
    p.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override our RunConfig (as finetune --set), e.g. max_grad_norm=0")
    p.add_argument("--ours-plain-head", action="store_true",
                   help="ours without the LM head fused with the loss (training/head_loss.py): whole logits first")
    p.add_argument("--ours-two-pass-head", action="store_true",
                   help="ours: the fused LM-head loss without the one-pass training path (head_loss.ONE_PASS)")
    p.add_argument("--ours-head-chunk-elements", type=int,
                   help="logits per chunk of the fused LM-head loss (head_loss: default 2**23 on CPU, 2**25 on GPU)")
    p.add_argument("--ours-mlx-limit-gb", type=float, default=0.0,
                   help="ours: MLX's memory limit (mx.set_memory_limit: where eval stops running ahead) in GB")
    p.add_argument("--tiny-check", action="store_true", help="gpu case: tiny model, same code path (CPU smoke test)")
    p.add_argument("--workdir", default=os.environ.get("BENCH_WORKDIR", "/tmp/bench-work"))
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    args = p.parse_args(argv)

    if args.ours_plain_head:
        from trainer_core.training import head_loss
        head_loss.ENABLED = False
    if args.ours_two_pass_head:
        from trainer_core.training import head_loss
        head_loss.ONE_PASS = False
    if args.ours_head_chunk_elements:
        from trainer_core.training import head_loss
        head_loss.CHUNK_ELEMENTS = head_loss.GPU_CHUNK_ELEMENTS = args.ours_head_chunk_elements
        head_loss.CHUNK = max(head_loss.CHUNK, args.ours_head_chunk_elements)
    global OURS_MLX_LIMIT_GB
    OURS_MLX_LIMIT_GB = args.ours_mlx_limit_gb
    names = [c.strip() for c in args.case.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        p.error(f"unknown case {unknown[0]!r}; choose from {', '.join(CASES)}")
    results = []
    for name in names:
        case = Case(**{**CASES[name].__dict__, "build": dict(CASES[name].build)})
        if args.data:
            case.data = args.data
        results.append(run_case(case, args))
    doc = {"machine": machine(), "results": results}
    if args.json:
        print(json.dumps(doc, indent=1, default=str))
    else:
        m = doc["machine"]
        print(f"{m['cpu']} ({m['cores']} cores), {m['mlx_device']}, mlx {m['mlx']}, mlx-lm {m['mlx-lm']}, "
              f"OpenBLAS {'preloaded' if m['openblas'] else 'not loaded'}"
              + (f", torch {m['torch']} (CUDA {m.get('cuda')}), transformers {m['transformers']}, peft {m['peft']}"
                 if m.get("torch") else ""))
        print(table(results))
        print("tok/s = real (unpadded) input tokens per wall second (trained/s: loss-scored real tokens; padded/s: "
              "rows x padded width); tok/cpu-s = real input tokens per CPU second of this process; "
              "GFLOP/s = LoRA model FLOPs (bench/torch_peft.lora_flops_per_token) per second, MFU = of the GPU's dense "
              "bf16 peak; ours/side = ours / that side's tok/s (median over rounds; paired = median of per-round "
              "ratios) and peak memory; "
              "spread = ±half of (max-min)/median of tok/s over rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())

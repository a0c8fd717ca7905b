#!/usr/bin/env python
"""Memory over a long run: does anything grow step over step beyond MLX's buffer cache?

Trains a small random Llama (tests/tiny_model.py) for `--steps` optimizer steps through the
product path (`runner.build_run(...).train()`: metrics.jsonl, log.txt, checkpoints every
`--save-every`, evaluation every `--eval-every`) and records after every step:

- rss: the process's resident set size (psutil), everything (Python heap, MLX buffers, libs);
- active: `mx.get_active_memory()`, bytes in live MLX arrays (weights, optimizer, batch);
- cache: `mx.get_cache_memory()`, freed buffers MLX keeps for reuse (bounded by its cache limit);
- python_objects: `len(gc.get_objects())` every 25 steps.

After `--warmup` steps (compilation, cache filling) it fits a line to each series and reports
the growth over the rest of the run. "Flat" means: active memory growth under 1 MiB, RSS growth
under 2% of RSS, and Python objects growth under 1%.

    .venv/bin/python bench/memory_soak.py                       # 500 LoRA steps
    .venv/bin/python bench/memory_soak.py --method sft --json out.json --csv steps.csv
"""

from __future__ import annotations

import trainer_core  # noqa: F401  (first: loads OpenBLAS before MLX on Linux)

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from tests.tiny_model import make_tiny_llama  # noqa: E402
from tests.train_helpers import write_chat_data  # noqa: E402
from trainer_core import runner  # noqa: E402
from trainer_core.training.callbacks import Callback  # noqa: E402
from trainer_core.config import RunConfig  # noqa: E402

MIB = 1024 * 1024


class Sampler(Callback):
    def __init__(self):
        self.process = psutil.Process()
        self.rows: list[dict] = []

    def on_step_end(self, metrics):
        row = {"step": metrics["step"], "rss": self.process.memory_info().rss,
               "active": mx.get_active_memory(), "cache": mx.get_cache_memory(), "peak": mx.get_peak_memory()}
        if metrics["step"] % 25 == 0 or metrics["step"] == 1:
            row["python_objects"] = len(gc.get_objects())
        self.rows.append(row)


def growth(steps: np.ndarray, values: np.ndarray) -> dict:
    """Least-squares slope (per step) and the fitted growth over the window, plus first/last/min/max."""
    slope = float(np.polyfit(steps, values, 1)[0]) if len(steps) > 1 else 0.0
    return {"first": int(values[0]), "last": int(values[-1]), "min": int(values.min()), "max": int(values.max()),
            "slope_per_step": slope, "fitted_growth": slope * float(steps[-1] - steps[0])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--method", default="lora", choices=["lora", "sft", "diffusion"])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--work", default="")
    parser.add_argument("--json", default="")
    parser.add_argument("--csv", default="")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="memory-soak-"))
    model = make_tiny_llama(work / "model", hidden=args.hidden, layers=args.layers)
    data = write_chat_data(work / "data", 96, 8)  # replies of 2..10 words: batches of varying width
    config = RunConfig(method=args.method, model=str(model), data=str(data), output_dir=str(work / "runs"),
                       run_name=f"soak-{args.method}", max_steps=args.steps, batch_size=args.batch_size,
                       learning_rate=1e-3, save_every=args.save_every, eval_every=args.eval_every, keep_last=2)
    sampler = Sampler()
    started = time.perf_counter()
    result = runner.build_run(config, [sampler]).train()
    wall = time.perf_counter() - started
    rows = [r for r in sampler.rows if r["step"] > args.warmup]
    steps = np.array([r["step"] for r in rows], dtype=float)
    report = {"active": growth(steps, np.array([r["active"] for r in rows], dtype=float)),
              "cache": growth(steps, np.array([r["cache"] for r in rows], dtype=float)),
              "rss": growth(steps, np.array([r["rss"] for r in rows], dtype=float))}
    objects = [(r["step"], r["python_objects"]) for r in rows if "python_objects" in r]
    report["python_objects"] = growth(np.array([s for s, _ in objects], dtype=float),
                                      np.array([n for _, n in objects], dtype=float))
    flat = {"active": report["active"]["fitted_growth"] < MIB,
            "rss": report["rss"]["fitted_growth"] < 0.02 * report["rss"]["first"],
            "python_objects": report["python_objects"]["fitted_growth"] < 0.01 * report["python_objects"]["first"]}
    summary = {"settings": vars(args), "status": result.status, "steps": result.step, "wall_s": round(wall, 1),
               "window": [args.warmup + 1, args.steps], "flat": flat, "all_flat": all(flat.values()),
               "peak_memory_mib": round(mx.get_peak_memory() / MIB, 1), "growth": report,
               "mlx": mx.__version__, "device": str(mx.default_device()), "machine": platform.platform()}
    text = json.dumps(summary, indent=1)
    print(text)
    print(f"{'step':>6} {'rss MiB':>9} {'active MiB':>11} {'cache MiB':>10} {'py objects':>11}", file=sys.stderr)
    for r in sampler.rows:
        if r["step"] in (1, args.warmup) or r["step"] % 50 == 0:
            print(f"{r['step']:>6} {r['rss'] / MIB:>9.1f} {r['active'] / MIB:>11.2f} {r['cache'] / MIB:>10.2f} "
                  f"{r.get('python_objects', ''):>11}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(text + "\n")
    if args.csv:
        keys = ["step", "rss", "active", "cache", "peak", "python_objects"]
        Path(args.csv).write_text(",".join(keys) + "\n" + "".join(
            ",".join(str(r.get(k, "")) for k in keys) + "\n" for r in sampler.rows))
    return 0 if summary["all_flat"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Why the product run peaks above the bare compiled step (issue 26: 14.5 GB vs ~9.5 GB on the gpu case).

usage: product_vs_step.py [--dims H,LAYERS,FFN,HEADS,KV,VOCAB] [--batch 4] [--seq 256] [--steps 4] [--set K=V ...]

Builds one random bf16 Llama (throughput.build_llama), then in this process:
  product  runner.build_run(...).train() on the bench's synthetic rows (every row max_seq_length), peak per step
           from metrics.jsonl, and the whole run's peak (samples, final save included)
  step     CompiledSteps on the product's own loaded model and first collated batch, twice (the memory_probe way),
           then over the run's successive batches (a new batch each step: the running peak per step)
and prints them above the weights. Run on the GPU machine with the gpu case's dims, or on the CPU smaller.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import trainer_core  # noqa: E402,F401
import mlx.core as mx  # noqa: E402

from throughput import CASES, build_llama, write_data  # noqa: E402
from trainer_core import runner  # noqa: E402
from trainer_core.config import RunConfig  # noqa: E402


def fresh():
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dims", default="384,4,1024,6,2,8192")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--set", dest="assignments", action="append", default=[])
    p.add_argument("--workdir", default=tempfile.mkdtemp(prefix="pvs-"))
    a = p.parse_args()
    h, layers, ffn, heads, kv, vocab = (int(x) for x in a.dims.split(","))
    work = Path(a.workdir)
    model = build_llama(work / "model", hidden=h, layers=layers, intermediate=ffn, heads=heads, kv_heads=kv,
                        vocab=vocab, dtype="bfloat16")
    case = CASES["gpu"]
    data = write_data(case, work / "data", n_synthetic=(a.steps + 2) * a.batch)
    config = RunConfig(method="lora", model=str(model), data=str(data), batch_size=a.batch, max_seq_length=a.seq,
                       save_every=0, eval_every=0, keep_last=0, max_steps=a.steps, output_dir=str(work / "runs"),
                       run_name="product").with_overrides(a.assignments).validate()
    config.lora.alpha = 2.0 * config.lora.rank
    run = runner.build_run(config)
    fresh()
    weights = mx.get_active_memory()
    run.train()
    whole = mx.get_peak_memory()
    recs = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    per_step = [round(r["peak_memory_gb"] - weights / 1e9, 3) for r in recs if r.get("type") == "train"]
    steps = run.loop.steps
    examples = run.loop.train_examples[:a.batch]
    batch = run.loop.method.collate(examples)
    steps.train_step([batch], 1e-5)
    mx.synchronize()
    fresh()
    base = mx.get_active_memory()
    steps.train_step([batch], 1e-5)
    mx.synchronize()
    alone = mx.get_peak_memory() - base
    fresh()  # the bare step over the run's successive batches (new arrays each step), peak since this reset
    series = []
    for i in range(a.steps):
        steps.train_step([run.loop.method.collate(run.loop.train_examples[i * a.batch:(i + 1) * a.batch])], 1e-5)
        mx.synchronize()
        series.append(round((mx.get_peak_memory() - base) / 1e9, 3))
    print(json.dumps({"device": str(mx.default_device()), "weights_gb": round(weights / 1e9, 3),
                      "step_over_new_batches_above_gb": series,
                      "product_per_step_above_gb": per_step,
                      "product_whole_run_above_gb": round((whole - weights) / 1e9, 3),
                      "step_alone_above_gb": round(alone / 1e9, 3),
                      "batch_shape": list(batch["input_ids"].shape), "set": a.assignments}))


if __name__ == "__main__":
    main()

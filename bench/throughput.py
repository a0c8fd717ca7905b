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
import json
import os
import platform
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
from mlx_lm.tuner.datasets import create_dataset  # noqa: E402

import sides  # noqa: E402
from cases import CASES, TINY_CHECK, Case, build_llama, dequantized_folder, write_data  # noqa: E402,F401
from sides import (MlxDataset, lora_settings, run_mlx, run_ours, run_torch_side)  # noqa: E402,F401
from trainer_core import versions  # noqa: E402
from trainer_core.config import RunConfig  # noqa: E402
from trainer_core.data import load_dataset, tokenize_sft  # noqa: E402
from trainer_core.models import native_blas  # noqa: E402
from trainer_core.models.loading import load_model, should_dequantize  # noqa: E402

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
    info.update(sides.TORCH_VERSIONS)  # where a PyTorch side ran
    try:
        if mx.cuda.is_available():
            info["gpu"] = mx.device_info().get("device_name", "cuda") if hasattr(mx, "device_info") else "cuda"
    except AttributeError:
        pass
    return info


def _after_prepare(patch) -> None:
    """Run `patch(model)` each time the runner has prepared a model for training (how the bench's levers get in)."""
    from trainer_core import runner
    prepare = runner.prepare_for_training

    def prepare_and_patch(model, config):
        out = prepare(model, config)
        patch(model)
        return out
    runner.prepare_for_training = prepare_and_patch


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
    p.add_argument("--ours-recompute-mlp-tail", action="store_true",
                   help="ours: recompute SwiGLU + down_proj in the backward (models/recompute.recompute_mlp_tails)")
    p.add_argument("--ours-two-pass-head", action="store_true",
                   help="ours: the fused LM-head loss without the one-pass training path (head_loss.ONE_PASS)")
    p.add_argument("--ours-head-chunk-elements", type=int,
                   help="logits per chunk of the fused LM-head loss (head_loss: default 2**23 on CPU, 2**25 on GPU)")
    p.add_argument("--ours-mlx-limit-gb", type=float, default=0.0,
                   help="ours: MLX's memory limit (mx.set_memory_limit: where eval stops running ahead) in GB")
    p.add_argument("--ours-plain-mlp", action="store_true",
                   help="ours: keep SwiGLU's product for the backward (no models/recompute.recompute_swiglu_products)")
    p.add_argument("--ours-fuse-siblings", action="store_true",
                   help="ours: q/k/v and gate/up as one matmul each (prototypes/fuse_siblings.py)")
    p.add_argument("--ours-per-array-adamw", action="store_true",
                   help="ours: AdamW array by array, not joined (the GPU's default; the CPU's is per array)")
    p.add_argument("--tiny-check", action="store_true", help="gpu case: tiny model, same code path (CPU smoke test)")
    p.add_argument("--workdir", default=os.environ.get("BENCH_WORKDIR", "/tmp/bench-work"))
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    args = p.parse_args(argv)

    if args.ours_plain_head:
        from trainer_core.training import head_loss
        head_loss.ENABLED = False
    if args.ours_fuse_siblings:  # prototypes/ is no package: on the path
        sys.path.insert(0, str(Path(__file__).resolve().parent / "prototypes"))
        import fuse_siblings
        _after_prepare(lambda model: print("fused sibling groups:", fuse_siblings.patch(model), file=sys.stderr))
    if args.ours_per_array_adamw:
        from trainer_core.training import optim
        optim.JOIN_LIMIT = 0
    if args.ours_recompute_mlp_tail:
        from trainer_core.models import recompute
        _after_prepare(recompute.recompute_mlp_tails)
    if args.ours_two_pass_head:
        from trainer_core.training import head_loss
        head_loss.ONE_PASS = False
    if args.ours_head_chunk_elements:
        from trainer_core.training import head_loss
        head_loss.CHUNK_ELEMENTS = head_loss.GPU_CHUNK_ELEMENTS = args.ours_head_chunk_elements
        head_loss.CHUNK = max(head_loss.CHUNK, args.ours_head_chunk_elements)
    if args.ours_plain_mlp:
        from trainer_core.models import recompute
        recompute.ENABLED = False
    sides.OURS_MLX_LIMIT_GB = args.ours_mlx_limit_gb
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


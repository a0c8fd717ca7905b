#!/usr/bin/env python
"""Estimated vs measured peak memory per method (trainer_core.training.memory).

Each case trains `--steps` optimizer steps through the product path (`runner.build_run(...).train()`)
in its own process, on rows that fill the case's length (synthetic text / preference records cut at
max_seq_length; GRPO completions run to max_completion_length: no end-of-sequence stop), so the run
meets the worst case the estimate describes. Measured = the largest `peak_memory_gb` of its train
records, with MLX's peak reset after the model is loaded; estimated = `memory.estimate` for the same
config and the longest tokenised example.

    .venv/bin/python bench/memory_estimate.py                       # every case on the demo model
    .venv/bin/python bench/memory_estimate.py --case lora-4x2048 --json out.json
    .venv/bin/python bench/memory_estimate.py --measured out.json   # estimates again, measured peaks reused
    .venv/bin/python bench/memory_estimate.py --measured out.json --markdown   # the README / RESULTS.md table

`--measured` re-estimates (runner.plan_run: data and model loaded, nothing trained) against the peaks an
earlier run measured, for tuning the estimate's constants without training again.
"""

from __future__ import annotations

import trainer_core  # noqa: F401  (first: loads OpenBLAS before MLX on Linux)

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# name -> (method, --set overrides); two sizes per method
CASES = {
    "lora-2x256": ("lora", ["batch_size=2", "max_seq_length=256"]),
    "lora-4x512": ("lora", ["batch_size=4", "max_seq_length=512"]),
    "lora-4x2048": ("lora", ["batch_size=4", "max_seq_length=2048"]),
    "lora-4x2048-gc": ("lora", ["batch_size=4", "max_seq_length=2048", "gradient_checkpointing=true"]),
    "full-1x128": ("sft", ["batch_size=1", "max_seq_length=128"]),
    "full-2x256": ("sft", ["batch_size=2", "max_seq_length=256"]),
    "dpo-1x256": ("dpo", ["batch_size=1", "max_seq_length=256"]),
    "dpo-2x512": ("dpo", ["batch_size=2", "max_seq_length=512"]),
    "grpo-1x4x64": ("grpo", ["batch_size=1", "grpo.group_size=4", "grpo.max_completion_length=64"]),
    "grpo-2x4x128": ("grpo", ["batch_size=2", "grpo.group_size=4", "grpo.max_completion_length=128"]),
    "grpo-defaults": ("grpo", []),
    "diffusion-2x256": ("diffusion", ["batch_size=2", "max_seq_length=256"]),
    "diffusion-4x512": ("diffusion", ["batch_size=4", "max_seq_length=512"]),
}
DEFAULT_CASES = [c for c in CASES if c not in ("lora-4x2048", "lora-4x2048-gc", "grpo-defaults")]
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches".split()


def write_data(method: str, folder: Path, rows: int = 16) -> Path:
    """Records long enough to fill any case's max_seq_length (GRPO: the demo prompts)."""
    from trainer_core import resources
    if method == "grpo":
        return resources.demo_dataset("grpo")
    folder.mkdir(parents=True, exist_ok=True)
    text = lambda i: " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3000))  # noqa: E731
    with open(folder / "train.jsonl", "w", encoding="utf-8") as f:
        for i in range(rows):
            record = {"prompt": "Say it.", "chosen": text(i), "rejected": text(i + 1)} if method == "dpo" \
                else {"text": text(i)}
            f.write(json.dumps(record) + "\n")
    return folder


def case_config(case: str, model: str, steps: int, work: Path):
    from trainer_core.config import RunConfig
    method, overrides = CASES[case]
    config = RunConfig.from_dict({"method": method, "model": model, "data": str(write_data(method, work / "data")),
                                  "output_dir": str(work / "runs"), "max_steps": steps, "save_every": 0,
                                  "eval_every": 0, "num_samples": 0}, source="bench")
    return config.with_overrides(overrides).validate()


def row(case: str, est, measured: float) -> dict:
    return {"case": case, "method": CASES[case][0], "estimated_gb": round(est.peak / 1e9, 3),
            "measured_gb": round(measured, 3), "error": round(est.peak / 1e9 / measured - 1, 3),
            "parts_gb": {k: round(v / 1e9, 3) for k, v in est.parts.items() if v}}


def estimate_only(case: str, model: str, steps: int, measured: float) -> dict:
    """The estimate for one case (nothing trained) against an earlier measured peak."""
    from trainer_core import runner
    return row(case, runner.plan_run(case_config(case, model, steps, Path(tempfile.mkdtemp(prefix="mem-bench-")))),
               measured)


def measure(case: str, model: str, steps: int) -> dict:
    """Train one case in this process; {case, method, estimated_gb, measured_gb, ...}."""
    import mlx.core as mx
    from trainer_core import runner
    from trainer_core.training.callbacks import Callback

    method = CASES[case][0]
    config = case_config(case, model, steps, Path(tempfile.mkdtemp(prefix="mem-bench-")))

    class Peaks(Callback):
        peaks: list[float] = []

        def on_step_end(self, metrics):
            self.peaks.append(metrics["peak_memory_gb"])

    run = runner.build_run(config, [Peaks()], force=True)
    if method == "grpo":  # every completion runs to max_completion_length: the case the estimate describes
        run.loop.method.eos_ids = lambda: set()
    est = run.memory
    mx.reset_peak_memory()
    run.train()
    return row(case, est, max(Peaks.peaks))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", default=",".join(DEFAULT_CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--measured", default=None, help="a --json file of an earlier run: estimate its cases "
                        "again against its measured peaks, training nothing")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child process: one case
    parser.add_argument("--measured-gb", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(estimate_only(args.case, args.model, args.steps, args.measured_gb) if args.measured_gb
                         else measure(args.case, args.model, args.steps)))
        return 0
    earlier = {r["case"]: r["measured_gb"] for r in json.loads(Path(args.measured).read_text())} \
        if args.measured else {}
    cases = list(earlier) if args.measured else args.case.split(",")
    rows = []
    if args.markdown:
        print("| case (method batch × length) | estimated GB | measured GB | error |\n|---|---|---|---|")
    else:
        print(f"{'case':<16} {'estimated GB':>12} {'measured GB':>12} {'error':>7}")
    for case in cases:
        extra = ["--measured-gb", str(earlier[case])] if case in earlier else []
        out = subprocess.run([sys.executable, __file__, "--one", "--case", case, "--model", args.model,
                              "--steps", str(args.steps), *extra], capture_output=True, text=True)
        if out.returncode:
            print(f"{case:<16} failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(result)
        if args.markdown:
            print(f"| {case} | {result['estimated_gb']:.2f} | {result['measured_gb']:.2f} | {result['error']:+.0%} |", flush=True)
        else:
            print(f"{case:<16} {result['estimated_gb']:>12.2f} {result['measured_gb']:>12.2f} {result['error']:>+7.0%}",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

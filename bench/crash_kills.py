#!/usr/bin/env python
"""Crash-safety figure: SIGKILL real `finetune train` / `finetune resume` processes at random
moments, many times, and count what survived (tests/crash_harness.py does the work).

For every kill: all step-* checkpoints complete and loadable, latest() complete, metrics.jsonl
readable, and a copy of the killed run folder resumed to the end gives the uninterrupted run's
final weights bit for bit and the same train history. Every chain also finishes through the
real `finetune resume`. Prints one JSON summary (and writes it with --json PATH).

    .venv/bin/python bench/crash_kills.py --kills 100
    .venv/bin/python bench/crash_kills.py --kills 100 --save-every 1 --seed 7
"""

from __future__ import annotations

import trainer_core  # noqa: F401  (first: loads OpenBLAS before MLX on Linux)

import argparse
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

from tests.crash_harness import RunSpec, kill_runs, reference_run  # noqa: E402
from tests.tiny_model import make_tiny_llama  # noqa: E402
from tests.train_helpers import write_chat_data  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--save-every", type=int, default=2)
    parser.add_argument("--max-kills-per-chain", type=int, default=6)
    parser.add_argument("--work", default="", help="scratch folder (default: a new temp folder)")
    parser.add_argument("--json", default="", help="also write the summary here")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="crash-kills-"))
    model = make_tiny_llama(work / "model")
    spec = RunSpec(model, write_chat_data(work / "data", 32, 4), max_steps=args.max_steps,
                   save_every=args.save_every)
    started = time.time()
    ref = reference_run(spec, work)
    print(f"reference: startup {ref.startup_s:.2f} s, training {ref.training_s:.2f} s", file=sys.stderr)

    def progress(report):
        print(f"kill {report.kills}/{args.kills}: resumed exactly {report.resumed_exactly}, "
              f"corrupt {report.corrupt_checkpoints}, mid-write {report.mid_checkpoint_write}, "
              f"failures {len(report.failures)}", file=sys.stderr)

    report = kill_runs(spec, work, args.kills, seed=args.seed, max_kills_per_chain=args.max_kills_per_chain,
                       ref=ref, progress=progress)
    summary = {"settings": {**vars(args), "run": " ".join(spec.extra)}, **report.summary(),
               "reference_startup_s": round(ref.startup_s, 2), "reference_training_s": round(ref.training_s, 2),
               "wall_s": round(time.time() - started, 1), "machine": platform.platform()}
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if not report.failures and not report.corrupt_checkpoints else 1


if __name__ == "__main__":
    raise SystemExit(main())

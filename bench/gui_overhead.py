"""GUI overhead: the same run trained headless (runner.train, what `finetune train` does) and from
the main window (Start pressed, Training tab shown, live plots redrawn, offscreen Qt), in one process,
rounds interleaved. Throughput of each run is read from its own metrics.jsonl: real input tokens of
the measured steps / wall time between their records. The issue's bar: the GUI within 3 %.

    .venv/bin/python bench/gui_overhead.py                      # small case, 3 rounds
    .venv/bin/python bench/gui_overhead.py --case micro --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import trainer_core  # noqa: E402,F401  (OpenBLAS before MLX)
import throughput as T  # noqa: E402
from trainer_core import runner  # noqa: E402
from trainer_core.training.callbacks import read_metrics  # noqa: E402
from trainer_core.config import RunConfig  # noqa: E402


def measured_throughput(run_dir: Path, warmup: int) -> dict:
    train = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "train"]
    window = train[warmup:]
    seconds = window[-1]["time"] - train[warmup - 1]["time"]
    tokens = sum(r["input_tokens"] for r in window)
    return {"tok_s": tokens / seconds, "steps": len(window), "seconds": seconds}


def headless(config: RunConfig) -> None:
    runner.train(config)


def from_window(config: RunConfig, app) -> None:
    from app.main_window import MainWindow
    window = MainWindow(config)
    window.resize(1400, 900)
    window.show()
    deadline = time.monotonic() + 120
    while not window.start_action.isEnabled():  # model and data are read off the GUI thread first
        app.processEvents()
        time.sleep(0.01)
        if time.monotonic() > deadline:
            raise SystemExit(f"the window never allowed Start: {window.setup.start_blocker()}")
    from PySide6.QtCore import QEventLoop
    loop = QEventLoop()  # the app's own event loop, as app.exec() runs it
    window.controller.runningChanged.connect(lambda running: None if running else loop.quit())
    assert window.start()
    window.tabs.setCurrentWidget(window.training)  # the live plots are what the user watches
    if window.running:
        loop.exec()
    window.controller.shutdown(60_000)
    window.close()
    window.deleteLater()
    app.processEvents()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default="small", choices=["micro", "small"])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default="/tmp/bench-work/gui")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from PySide6.QtWidgets import QApplication
    import app  # noqa: F401  (the app's own set-up: PySide6 workaround, GC policy)
    qapp = QApplication.instance() or QApplication([])
    os.environ.setdefault("FINETUNE_STUDIO_HOME", str(Path(args.workdir) / "home"))

    case = T.CASES[args.case]
    ns = argparse.Namespace(model=None, tiny_check=False, rank=8, ours_set=[], mlx_tokens="ours", seed=0)
    config, _, info = T.prepare_case(case, ns, Path(args.workdir) / case.name)
    config.max_steps = args.warmup + args.steps
    config.output_dir = str(Path(args.workdir) / "runs")
    results = {"headless": [], "gui": []}
    for r in range(args.repeats):
        for side in (("headless", "gui") if r % 2 == 0 else ("gui", "headless")):
            run_config = RunConfig.from_dict(config.to_dict())
            run_config.run_name = f"{side}-{r}-{int(time.time())}"
            headless(run_config) if side == "headless" else from_window(run_config, qapp)
            m = measured_throughput(Path(config.output_dir) / run_config.run_name, args.warmup)
            results[side].append(m["tok_s"])
            print(f"  round {r} {side:8s} {m['tok_s']:9.0f} tok/s over {m['steps']} steps", file=sys.stderr)
    paired = [g / h for g, h in zip(results["gui"], results["headless"])]
    doc = {"case": args.case, "model": info["model_path"], "steps": args.steps, "rounds": args.repeats,
           "headless_tok_s": results["headless"], "gui_tok_s": results["gui"],
           "gui_over_headless_median": statistics.median(results["gui"]) / statistics.median(results["headless"]),
           "paired_ratios": paired}
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print(f"{args.case}: headless {statistics.median(results['headless']):.0f} tok/s, GUI "
              f"{statistics.median(results['gui']):.0f} tok/s -> GUI/headless "
              f"{doc['gui_over_headless_median']:.3f} (paired {min(paired):.3f}-{max(paired):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

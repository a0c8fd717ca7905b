"""Screenshots of the real window (for the README), taken with Qt itself.

    xvfb-run -a -s "-screen 0 1440x900x24" python -m app.screenshot \
        --out resources/screenshots [--size 1440x900] [--model PATH | --tiny] [--steps N] [--setup-only]

Writes main-window.png (Setup tab on the demo model and data, once its time estimate is measured),
training.png (Training tab during a run of `--model` started with Start, on the Setup tab's own recommended
settings; `--steps` only shortens it with max steps; `--tiny` builds a small random Llama with the test suite's
helper, for machines where the demo model trains too slowly), checkpoints.png (Checkpoints tab after the run, its
newest step checkpoint selected, its samples on the right) and chat.png (Chat tab: the run's final checkpoint
answering "What is the capital city of Velmora?"). Uses the same MainWindow as `python -m app`; the run goes where
Start puts it, the window's runs folder, so the sidebar lists it while it trains. Unless FINETUNE_STUDIO_HOME is
set, it is set to a new temporary folder (settings, runs, caches): nothing is written into the user's own folders.
Prints the GUI thread's event-loop latency measured during the run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

# Before anything reads the settings or the runs folder: a fresh home, never the user's own.
os.environ.setdefault("FINETUNE_STUDIO_HOME", tempfile.mkdtemp(prefix="finetune-screenshots-"))

import app  # noqa: F401  (trainer_core before mlx / Qt)
from app.__main__ import create_application, default_config


def wait(predicate, timeout_s: float) -> bool:
    """Run the event loop (blocking, not spinning) until `predicate()` or the timeout."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    poll = QTimer(interval=100, timeout=lambda: predicate() and loop.quit())
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    poll.start()
    if not predicate():
        loop.exec()
    poll.stop()
    return predicate()


class LatencyProbe:
    """How late a 20 ms timer fires on the GUI thread: the window's responsiveness."""

    INTERVAL_MS = 20

    def __init__(self):
        from PySide6.QtCore import QTimer

        self.late_ms: list[float] = []
        self.last = time.perf_counter()
        self.timer = QTimer(interval=self.INTERVAL_MS, timeout=self._tick)
        self.timer.start()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.late_ms.append(max(0.0, (now - self.last) * 1000 - self.INTERVAL_MS))
        self.last = now

    def summary(self) -> str:
        late = sorted(self.late_ms) or [0.0]
        p95 = late[int(0.95 * (len(late) - 1))]
        return f"median {late[len(late) // 2]:.1f} ms, p95 {p95:.1f} ms, max {late[-1]:.1f} ms ({len(late)} ticks)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="resources/screenshots")
    parser.add_argument("--model", default="demo", help="model for the training screenshot")
    parser.add_argument("--tiny", action="store_true", help="train a small random Llama (tests/tiny_model.py)")
    parser.add_argument("--steps", type=int, default=0,
                        help="max steps (default 0: the recommended epochs, 300 steps on the demo)")
    parser.add_argument("--setup-only", action="store_true", help="only main-window.png (no training)")
    parser.add_argument("--size", default="1440x900", help="window size, WIDTHxHEIGHT")
    args = parser.parse_args(argv)
    width, height = (int(n) for n in args.size.lower().split("x"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    application = create_application()
    from app.main_window import MainWindow

    window = MainWindow(default_config())
    window.setup.recommend.follow()
    window.resize(width, height)
    window.show()
    setup = window.setup
    wait(lambda: setup.dataset_panel.summary is not None and setup.model_panel.info is not None, 60)
    wait(lambda: setup.time_panel.text().startswith("Time ≈"), 120)  # measured on first use
    wait(lambda: False, 0.5)
    window.grab().save(str(out / "main-window.png"))
    if args.setup_only:
        print(f"wrote {out / 'main-window.png'}")
        return 0

    model = args.model
    if args.tiny:
        from tests.tiny_model import make_tiny_llama
        model = str(make_tiny_llama(Path(tempfile.mkdtemp()) / "tiny-llama", hidden=128, layers=4))
    config = setup.config()  # the recommended settings main-window.png shows; checkpoints / evals every 100 / 50
    if model != config.model or args.steps:
        config.model, config.max_steps = model, args.steps or config.max_steps
        setup.set_config(config)
    wait(lambda: window.start_action.isEnabled(), 60)
    if not window.start():
        print("could not start:", setup.start_blocker())
        return 1
    probe = LatencyProbe()
    wait(lambda: window.run_dir is not None or not window.controller.running, 300)
    run_dir = window.run_dir  # where Start put it: the window's runs folder, listed in the sidebar
    total = setup.total_steps(config)[0]
    live_at = int(total * 0.7)
    wait(lambda: window.run_status.last.get("step", 0) >= live_at or not window.controller.running, 600)
    wait(lambda: False, 0.6)  # let the plots catch up
    window.grab().save(str(out / "training.png"))
    wait(lambda: not window.controller.running, 600)
    window.tabs.setCurrentWidget(window.checkpoints)
    def step_rows():
        return [row for row in window.checkpoints.rows if row.path.name != "final"]
    wait(lambda: len(step_rows()) >= 2 and all(row.samples for row in step_rows()), 60)
    window.checkpoints.select_step(step_rows()[-1].step)
    wait(lambda: False, 0.5)
    window.grab().save(str(out / "checkpoints.png"))
    window.open_chat(str(run_dir), str(run_dir / "final"))
    window.chat.send("What is the capital city of Velmora?")
    wait(lambda: window.chat.last_answer() and not window.chat.generating, 300)
    wait(lambda: False, 0.5)
    window.grab().save(str(out / "chat.png"))
    print(f"wrote main-window.png, training.png, checkpoints.png and chat.png in {out}")
    print(f"event-loop latency while training: {probe.summary()}")
    window.shutdown()  # the generation thread ends before Qt tears down (else "QThread: Destroyed while running")
    window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Screenshots of the real window (for the README), taken with Qt itself.

    xvfb-run -s "-screen 0 1400x900x24" python -m app.screenshot --out resources/screenshots \
        [--model PATH | --tiny] [--steps 150]

Writes main-window.png (Setup tab on the demo model and data) and
training.png (Training tab after a short run of `--model`; `--tiny` builds a
small random Llama with the test suite's helper, for machines where the demo
model trains too slowly). Uses the same MainWindow as `python -m app`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="resources/screenshots")
    parser.add_argument("--model", default="demo", help="model for the training screenshot")
    parser.add_argument("--tiny", action="store_true", help="train a small random Llama (tests/tiny_model.py)")
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    application = create_application()
    from app.main_window import MainWindow

    window = MainWindow(default_config())
    window.resize(1360, 900)
    window.show()
    setup = window.setup
    wait(lambda: setup.dataset_panel.summary is not None and setup.model_panel.info is not None, 60)
    wait(lambda: False, 0.5)
    window.grab().save(str(out / "main-window.png"))

    model = args.model
    if args.tiny:
        from tests.tiny_model import make_tiny_llama
        model = str(make_tiny_llama(Path(tempfile.mkdtemp()) / "tiny-llama", hidden=128, layers=4))
    runs = Path(tempfile.mkdtemp()) / "runs"
    config = setup.config()
    config.model, config.output_dir, config.run_name = model, str(runs), "lora-demo-data"
    config.max_steps, config.eval_every, config.save_every = args.steps, max(1, args.steps // 6), args.steps // 3
    config.learning_rate, config.warmup_steps, config.batch_size = 2e-3, args.steps // 10, 8
    setup.set_config(config)
    wait(lambda: window.start_action.isEnabled(), 60)
    if not window.start():
        print("could not start:", setup.start_blocker())
        return 1
    wait(lambda: not window.controller.running, 600)
    wait(lambda: False, 0.5)
    window.grab().save(str(out / "training.png"))
    print(f"wrote {out / 'main-window.png'} and {out / 'training.png'}")
    window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

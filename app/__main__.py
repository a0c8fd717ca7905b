"""`python -m app` / `finetune-studio` / `make run`: open the window.

By default the form starts on the demo model and the demo dataset (found by
`trainer_core.resources`: checkout, wheel or .app); `--model`, `--data` and a
config/preset TOML override that, and `--run DIR` opens a finished run's plots.
First thing, the program log starts and the user folders (runs, settings, logs;
`trainer_core.paths`) are created: nothing is ever written next to the program.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import app  # noqa: F401  (trainer_core, hence OpenBLAS, before mlx and Qt)
from trainer_core import paths, resources
from trainer_core.config import RunConfig
from trainer_core.errors import UserError
from trainer_core.logging_setup import setup_logging


DEMO_LEARNING_RATE = 1e-3  # the demo's facts show up in the chat after its one epoch (100 steps); 2e-4 needs ~3 epochs
DEMO_WARMUP_STEPS = 5


def default_config() -> RunConfig:
    """What the window opens on: the demo model and dataset, with a learning rate that teaches the demo's
    facts in one epoch (shown in the form like any other value; RunConfig's own defaults are DESIGN.md's)."""
    return RunConfig(model="demo", data=str(resources.demo_dataset("sft")), learning_rate=DEMO_LEARNING_RATE,
                     warmup_steps=DEMO_WARMUP_STEPS)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="finetune-studio", description="Fine-Tune Studio")
    parser.add_argument("config", nargs="?", help="a config.toml or preset to open")
    parser.add_argument("--model", help="model folder, .gguf file or 'demo'")
    parser.add_argument("--data", help="data file or folder")
    parser.add_argument("--run", help="open a run folder's plots")
    return parser.parse_args(argv)


def create_application(argv=None):
    """The QApplication with Fine-Tune Studio's name and style sheet."""
    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication

    application = QApplication.instance() or QApplication(list(argv or sys.argv[:1]))
    application.setApplicationName("Fine-Tune Studio")
    application.setOrganizationName("Fine-Tune Studio")
    style = resources.resource_path("style.qss")
    if style.is_file():
        application.setStyleSheet(style.read_text(encoding="utf-8"))
    icon = resources.resource_path("icon.png")
    if icon.is_file():
        application.setWindowIcon(QIcon(str(icon)))
    return application


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging("finetune-studio")
    paths.ensure_user_dirs()
    try:
        config = RunConfig.load(args.config) if args.config else default_config()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.model:
        config.model = args.model
    if args.data:
        config.data = args.data
    application = create_application()
    from app.main_window import MainWindow

    window = MainWindow(config)
    application.aboutToQuit.connect(window.shutdown)
    window.show()
    if args.run:
        window.show_run(Path(args.run))
    return application.exec()


if __name__ == "__main__":
    raise SystemExit(main())

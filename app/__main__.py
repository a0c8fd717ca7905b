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


def default_config() -> RunConfig:
    """What the window opens on: the demo model and dataset; the Setup form then fills in the recommended
    hyper-parameters for them (trainer_core.config.recommend, as `finetune train` does)."""
    return RunConfig(model="demo", data=str(resources.demo_dataset("sft")))


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
    from app.settings import last_form_file
    last = last_form_file()
    try:
        config = RunConfig.load(args.config) if args.config else default_config()
        if not args.config and last.is_file():
            config = RunConfig.load(last)
    except UserError as e:
        if not args.config:  # an unreadable saved form: start afresh
            last.unlink(missing_ok=True)
            return main(argv)
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.model:
        config.model = args.model
    if args.data:
        config.data = args.data
    application = create_application()
    from app.main_window import MainWindow

    window = MainWindow(config)
    window.restore()
    if not args.config and not last.is_file():  # a config file, or the form as the user left it, stays
        window.setup.recommend.follow()
        window.setup.refresh()
    application.aboutToQuit.connect(window.shutdown)
    window.show()
    if args.run:
        window.show_run(Path(args.run))
    return application.exec()


if __name__ == "__main__":
    raise SystemExit(main())

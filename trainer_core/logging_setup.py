"""The program log: one rotating file under the platformdirs log folder.

Both entry points call `setup_logging` first thing (the CLI in `cli.main`, the
window in `app.__main__.main`), so a user can attach one file to a bug report
("Reveal Logs" in the app's Help menu shows it). What it records: a start line
(program, version, Python, platform, frozen bundle or not, OpenBLAS), every
`logging` record at INFO and above, Python warnings, and uncaught exceptions
with their traceback (main thread and other threads). WARNING and above also
go to stderr, as they did before a handler existed. Training progress is not
here: each run has its own `<run>/log.txt` and `metrics.jsonl`.

FINETUNE_STUDIO_HOME moves the folder (see `trainer_core.paths.log_dir`).
"""

from __future__ import annotations

import logging
import platform
import sys
import threading
from logging.handlers import RotatingFileHandler
from pathlib import Path

from trainer_core import paths

LOG_NAME = "fine-tune-studio.log"
MAX_BYTES = 2_000_000  # per file; with BACKUPS the log never exceeds ~8 MB
BACKUPS = 3
FORMAT = "%(asctime)s %(levelname)-7s %(process)d %(name)s: %(message)s"

log = logging.getLogger("trainer_core")
FILE_ONLY = {"file_only": True}  # `extra=` for records the previous hook already shows on stderr


class _ProgramLogHandler(RotatingFileHandler):
    """Marks the file handler this module installed, so a second call replaces it."""


class _ConsoleHandler(logging.StreamHandler):
    """WARNING and above to stderr, message only (what Python printed without any handler).

    Looks sys.stderr up on every record, like logging.lastResort, so a replaced
    stderr (pytest's capture, a GUI's redirect) is honoured.
    """

    def __init__(self):
        logging.Handler.__init__(self, logging.WARNING)

    @property
    def stream(self):
        return sys.stderr

    def filter(self, record):
        return not getattr(record, "file_only", False) and super().filter(record)


def log_file() -> Path:
    """Where the current log is written (the folder may not exist before `setup_logging`)."""
    return paths.log_dir() / LOG_NAME


def setup_logging(program: str, level: int = logging.INFO) -> Path:
    """Send logging (and uncaught exceptions) to `log_file()`; return its path.

    Idempotent: a later call with another FINETUNE_STUDIO_HOME moves the file.
    Creates the log folder; touches nothing else.
    """
    path = log_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, (_ProgramLogHandler, _ConsoleHandler))]:
        root.removeHandler(handler)
        handler.close()
    file_handler = _ProgramLogHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(FORMAT))
    file_handler.setLevel(level)
    root.addHandler(file_handler)
    root.addHandler(_ConsoleHandler())
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    logging.captureWarnings(True)
    _log_uncaught_exceptions()
    log.info("%s started: %s", program, _describe_environment())
    return path


def _describe_environment() -> str:
    import trainer_core
    from trainer_core.models import native_blas

    frozen = getattr(sys, "frozen", False)
    return (f"Fine-Tune Studio {trainer_core.__version__}, Python {platform.python_version()}, "
            f"{platform.platform()}, {platform.machine()}, "
            f"{'app bundle' if frozen else 'from ' + str(Path(trainer_core.__file__).resolve().parent.parent)}, "
            f"OpenBLAS {native_blas.loaded_path or 'not loaded'}")


def _log_uncaught_exceptions() -> None:
    """Chain sys.excepthook and threading.excepthook so crashes reach the log too."""
    if getattr(sys.excepthook, "_fine_tune_studio", False):
        return
    previous_hook = sys.excepthook
    previous_thread_hook = threading.excepthook

    def excepthook(kind, value, traceback):
        if not issubclass(kind, KeyboardInterrupt):
            log.critical("uncaught exception", exc_info=(kind, value, traceback), extra=FILE_ONLY)
        previous_hook(kind, value, traceback)

    def thread_excepthook(args):
        if args.exc_type is not SystemExit:
            log.critical("uncaught exception in thread %s", getattr(args.thread, "name", "?"),
                         exc_info=(args.exc_type, args.exc_value, args.exc_traceback), extra=FILE_ONLY)
        previous_thread_hook(args)

    excepthook._fine_tune_studio = True
    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook

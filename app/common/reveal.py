"""Show a file in the system file manager ("Reveal Logs" in the Help menu).

On macOS `open -R` opens a Finder window with the file selected; elsewhere the
folder holding it opens through QDesktopServices (the desktop's file manager).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PySide6.QtCore import QUrl
from PySide6.QtGui import QDesktopServices

from trainer_core.logging_setup import log_file


def reveal_in_file_manager(path: Path | str) -> bool:
    """Reveal `path` (a file: its folder, with it selected where the platform can). False if nothing opened."""
    path = Path(path)
    if sys.platform == "darwin" and path.exists():
        return subprocess.run(["open", "-R", str(path)], check=False).returncode == 0
    folder = path if path.is_dir() else path.parent
    return folder.is_dir() and QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))


def reveal_logs() -> bool:
    """Reveal the program log (trainer_core.logging_setup.log_file())."""
    return reveal_in_file_manager(log_file())

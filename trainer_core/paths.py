"""Where things live on disk (platformdirs), overridable for tests.

Set FINETUNE_STUDIO_HOME to put runs, settings and logs under one folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "Fine-Tune Studio"


def data_root() -> Path:
    override = os.environ.get("FINETUNE_STUDIO_HOME")
    return Path(override) if override else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def default_runs_root() -> Path:
    return data_root() / "runs"


def log_dir() -> Path:
    override = os.environ.get("FINETUNE_STUDIO_HOME")
    return Path(override) / "logs" if override else Path(platformdirs.user_log_dir(APP_NAME, appauthor=False))


def settings_dir() -> Path:
    override = os.environ.get("FINETUNE_STUDIO_HOME")
    return Path(override) / "settings" if override else Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def cache_dir() -> Path:
    """Re-creatable data (tokenised datasets); safe to delete at any time."""
    override = os.environ.get("FINETUNE_STUDIO_HOME")
    return Path(override) / "cache" if override else Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def ensure_user_dirs() -> list[Path]:
    """Create the runs root, settings and log folders if missing (first launch); return them.

    These are the only places the program writes on its own (a run may also go to
    its config's output_dir); never the program's own folder or app bundle.
    """
    folders = [default_runs_root(), settings_dir(), log_dir()]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return folders

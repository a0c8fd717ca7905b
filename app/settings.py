"""Small persistent GUI settings (recent models / datasets) in settings_dir()/gui.ini.

FINETUNE_STUDIO_HOME moves it (tests point it at a temporary folder).
"""

from __future__ import annotations

from PySide6.QtCore import QSettings

from trainer_core.paths import settings_dir

MAX_RECENT = 8


def settings() -> QSettings:
    folder = settings_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return QSettings(str(folder / "gui.ini"), QSettings.IniFormat)


def recent(key: str) -> list[str]:
    """Most recent first."""
    value = settings().value(key, [])
    if isinstance(value, str):
        value = [value]
    return [str(v) for v in value or []]


def push_recent(key: str, item: str) -> list[str]:
    items = [item] + [i for i in recent(key) if i != item]
    items = items[:MAX_RECENT]
    store = settings()
    store.setValue(key, items)
    store.sync()
    return items

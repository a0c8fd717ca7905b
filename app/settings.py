"""Small persistent GUI settings (recent models / datasets, dialog folders) in settings_dir()/gui.ini.

FINETUNE_STUDIO_HOME moves it (tests point it at a temporary folder).
"""

from __future__ import annotations

from pathlib import Path

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


def dialog_folder(key: str, fallback: str | Path = "") -> str:
    """Where a file dialog for `key` opens: the folder last used for it, else `fallback` (an existing folder),
    else the user's Documents; never the program's own (current) folder."""
    from PySide6.QtCore import QStandardPaths
    last = str(settings().value(f"folders/{key}", "") or "")
    for folder in (last, str(fallback or "")):
        if folder and Path(folder).is_dir():
            return folder
    documents = QStandardPaths.writableLocation(QStandardPaths.DocumentsLocation)
    # a Documents folder that does not exist (a fresh Linux account) would become the dialog's file name
    return documents if documents and Path(documents).is_dir() else str(Path.home())


def ask_path(parent, kind: str, key: str, title: str, name: str = "", filters: str = "",
             fallback: str | Path = "") -> str:
    """A file dialog (`kind`: save | open | folder) opening in `dialog_folder(key, fallback)` (with `name` as the
    suggested file name); the chosen path's folder is remembered for `key`. "" when cancelled."""
    from PySide6.QtWidgets import QFileDialog
    start = dialog_folder(key, fallback)
    if kind == "folder":
        path = QFileDialog.getExistingDirectory(parent, title, start)
    else:
        ask = QFileDialog.getSaveFileName if kind == "save" else QFileDialog.getOpenFileName
        path, _ = ask(parent, title, str(Path(start) / name) if name else start, filters)
    if path:  # a chosen folder: the next dialog opens beside it, where its siblings are
        remember_folder(key, str(Path(path).parent) if kind == "folder" else path)
    return path


def remember_folder(key: str, path: str) -> None:
    """A file was chosen or saved at `path`: the next dialog for `key` opens in its folder."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    store = settings()
    store.setValue(f"folders/{key}", str(folder))
    store.sync()


def last_form_file() -> Path:
    """The Setup form as it was when the window last closed (a RunConfig TOML)."""
    from trainer_core.paths import settings_dir as folder
    return folder() / "last_form.toml"


def save_value(key: str, value) -> None:
    store = settings()
    store.setValue(key, value)
    store.sync()

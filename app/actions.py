"""The window's toolbar, menus and keyboard shortcuts, and Help → Keyboard Shortcuts.

`build_actions(window)` creates Start / Pause / Stop / Save now (toolbar and Run menu, with the
reason Start is blocked right beside Start), the File, Run, View and Help menus, and the shortcuts
listed in `SHORTCUTS`. Shortcut text is the platform's own (⌘R on macOS, Ctrl+R elsewhere), taken
from QKeySequence, so hints never name a key this keyboard lacks.
"""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QAction, QFontMetrics, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QLabel, QSizePolicy, QStyle, QTableWidget,
                               QTableWidgetItem, QToolBar, QVBoxLayout)

from app.common.keys import keys
from app.common.reveal import reveal_logs
from trainer_core.logging_setup import log_file

TABS = ("Setup", "Training", "Checkpoints", "Chat", "Compare runs")


class ElidedLabel(QLabel):
    """One line that shortens itself with … to the width it gets (the full text in the tooltip)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.full = ""
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)

    def sizeHint(self) -> QSize:
        return QSize(120, super().sizeHint().height())

    def minimumSizeHint(self) -> QSize:
        return self.sizeHint()

    def set_full_text(self, text: str) -> None:
        self.full = text
        self.setToolTip(text)
        self._elide()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        # the room inside the margins (the margins are no room for text: the end would be clipped, without …)
        room = max(0, self.contentsRect().width() - 2)
        self.setText(QFontMetrics(self.font()).elidedText(self.full, Qt.ElideRight, room))


def build_actions(window) -> None:
    """Toolbar, menus and shortcuts of `window` (a MainWindow)."""
    style = window.style()
    window.start_action = QAction(style.standardIcon(QStyle.SP_MediaPlay), "Start", window)
    window.start_action.setShortcut(QKeySequence(Qt.CTRL | Qt.Key_R))
    window.start_action.triggered.connect(window.start)
    window.pause_action = QAction(style.standardIcon(QStyle.SP_MediaPause), "Pause", window)
    window.pause_action.setCheckable(True)
    window.pause_action.setShortcut(QKeySequence(Qt.CTRL | Qt.SHIFT | Qt.Key_P))
    window.pause_action.setToolTip(f"Hold at the next step; the model stays in memory "
                                   f"({keys(window.pause_action.shortcut())})")
    window.pause_action.toggled.connect(window.pause)
    window.stop_action = QAction(style.standardIcon(QStyle.SP_MediaStop), "Stop", window)
    window.stop_action.setShortcut(QKeySequence(Qt.CTRL | Qt.Key_Period))
    window.stop_action.setToolTip(f"Save a checkpoint at the next step, then end ({keys(window.stop_action.shortcut())})")
    window.stop_action.triggered.connect(window.stop)
    window.save_action = QAction(style.standardIcon(QStyle.SP_DialogSaveButton), "Save now", window)
    window.save_action.setShortcut(QKeySequence(Qt.CTRL | Qt.Key_S))
    window.save_action.setToolTip(f"Write a checkpoint at the next step boundary ({keys(window.save_action.shortcut())})")
    window.save_action.triggered.connect(window.controller.save_now)
    run_actions = (window.start_action, window.pause_action, window.stop_action, window.save_action)
    toolbar = QToolBar("Run")
    toolbar.setObjectName("runToolbar")
    toolbar.setMovable(False)
    toolbar.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
    toolbar.addAction(window.start_action)
    window.blocker_label = ElidedLabel()  # why Start is disabled, right beside it
    window.blocker_label.setObjectName("blocker")
    window.blocker_label.setContentsMargins(8, 0, 12, 0)
    for action in run_actions[1:]:
        toolbar.addAction(action)
    toolbar.insertWidget(window.pause_action, window.blocker_label)
    window.addToolBar(Qt.TopToolBarArea, toolbar)

    file_menu = window.menuBar().addMenu("&File")
    file_menu.addAction("Open Run Folder…", window.open_run)
    window.open_config_action = file_menu.addAction("Open config.toml", window.open_config)
    file_menu.addAction("Load Preset…", window.setup.load_preset)
    file_menu.addAction("Save Preset…", window.setup.save_preset)
    file_menu.addSeparator()
    file_menu.addAction("Preferences…", QKeySequence.Preferences, window.preferences)
    file_menu.addAction("Close Window", QKeySequence.Close, window.close)
    quit_action = file_menu.addAction("Quit", QKeySequence.Quit, window.quit)
    quit_action.setShortcut(QKeySequence(Qt.CTRL | Qt.Key_Q))  # QKeySequence.Quit is empty on some desktops
    quit_action.setMenuRole(QAction.QuitRole)
    run_menu = window.menuBar().addMenu("&Run")
    for action in run_actions:
        run_menu.addAction(action)
    view_menu = window.menuBar().addMenu("&View")
    for i, name in enumerate(TABS):
        view_menu.addAction(name, QKeySequence(f"Ctrl+{i + 1}"), lambda i=i: window.tabs.setCurrentIndex(i))
    view_menu.addSeparator()
    view_menu.addAction("Focus Chat Message", QKeySequence(Qt.CTRL | Qt.Key_L), window.focus_chat)
    help_menu = window.menuBar().addMenu("&Help")
    help_menu.setToolTipsVisible(True)
    help_menu.addAction("Keyboard Shortcuts", QKeySequence(Qt.CTRL | Qt.Key_Slash), lambda: shortcuts_dialog(window).exec())
    reveal = help_menu.addAction("Reveal Logs", lambda: reveal_or_say(window))
    reveal.setToolTip(str(log_file()))
    help_menu.addAction("Copy Log File Path", lambda: QGuiApplication.clipboard().setText(str(log_file())))


def reveal_or_say(window) -> bool:
    """Open the log folder in the file manager; the status line names the file either way."""
    opened = reveal_logs()
    window.status.show_text(f"{'Opened the folder of' if opened else 'No file manager opened; the log is'} "
                            f"{log_file()}", "" if opened else "error")
    return opened


def shortcut_rows(window) -> list[tuple[str, str]]:
    """(what, keys) for every menu action with a shortcut, in menu order."""
    rows = []
    for menu_action in window.menuBar().actions():
        for action in menu_action.menu().actions():
            if not action.shortcut().isEmpty():
                rows.append((f"{menu_action.text().replace('&', '')} → {action.text()}", keys(action.shortcut())))
    return rows


def shortcuts_dialog(window) -> QDialog:
    dialog = QDialog(window)
    dialog.setWindowTitle("Keyboard Shortcuts")
    rows = shortcut_rows(window)
    table = QTableWidget(len(rows), 2)
    table.setHorizontalHeaderLabels(["Action", "Keys"])
    table.verticalHeader().setVisible(False)
    table.setEditTriggers(QTableWidget.NoEditTriggers)
    for r, (what, sequence) in enumerate(rows):
        table.setItem(r, 0, QTableWidgetItem(what))
        table.setItem(r, 1, QTableWidgetItem(sequence))
    table.resizeColumnsToContents()
    table.horizontalHeader().setStretchLastSection(True)
    buttons = QDialogButtonBox(QDialogButtonBox.Close)
    buttons.rejected.connect(dialog.reject)
    layout = QVBoxLayout(dialog)
    layout.addWidget(table)
    layout.addWidget(buttons)
    dialog.resize(460, 420)
    return dialog

"""Shortcut text as the platform writes it: '⌘R', '⌘↩' and '⌘-click' on macOS, 'Ctrl+R', 'Ctrl+Return' and
'Ctrl-click' elsewhere (a macOS glyph in a Linux window names a key the user does not have); HERE, what the
window calls the computer it runs on ("this Mac" only on a Mac)."""

from __future__ import annotations

import sys

from PySide6.QtGui import QKeySequence

HERE = "this Mac" if sys.platform == "darwin" else "this computer"


def keys(sequence) -> str:
    """The platform's text for a shortcut (a QKeySequence, a key combination or 'Ctrl+R'; Ctrl is ⌘ on macOS)."""
    return QKeySequence(sequence).toString(QKeySequence.NativeText)


MULTI_CLICK = "⌘-click" if sys.platform == "darwin" else "Ctrl-click"

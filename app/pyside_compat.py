"""Work around PySide6 6.12.0's reference-count bug on Python < 3.12.

PySide6/shiboken6 6.12.0 returns `None` from void methods (`setText`,
`processEvents`, ...) and `True`/`False` from `Signal.emit` without taking a
reference, as if those objects were immortal (they are only from Python 3.12
on). On 3.11 every such call drops a reference the caller never owned, and
after ~16,000 calls CPython aborts with "deallocating None". A live plot
makes that many calls in seconds.

`protect_singletons()` gives None, True and False a reference count so large
that the leak can never reach zero, which is what Python 3.12's immortal
objects do. It is a no-op on Python >= 3.12 and on other shiboken6
versions. Remove it once the project pins PySide6 != 6.12.0 (6.11.3 is
correct) or requires Python >= 3.12.
"""

from __future__ import annotations

import ctypes
import sys
from importlib.metadata import PackageNotFoundError, version

AFFECTED = ("6.12.0",)
HEADROOM = 1 << 40  # references added; a leak of one per call would need 10^12 calls to use it up


def affected() -> bool:
    if sys.version_info >= (3, 12):
        return False
    try:
        return version("shiboken6") in AFFECTED
    except PackageNotFoundError:
        return False


def protect_singletons() -> bool:
    """Make None/True/False effectively immortal if this PySide6 needs it; True if applied."""
    if not affected() or getattr(sys, "_finetune_studio_singletons_protected", False):
        return False
    for obj in (None, True, False):
        ctypes.c_ssize_t.from_address(id(obj)).value += HEADROOM  # ob_refcnt is the first field
    sys._finetune_studio_singletons_protected = True
    return True

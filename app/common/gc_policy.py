"""Python's cyclic garbage collector runs on the GUI thread only.

Automatic collection runs in whichever thread happens to allocate past the
threshold. If that is a background thread (the dataset analysis importing
transformers, the training loop) and the garbage holds Qt objects (a closed
window's widgets kept in reference cycles by signal lambdas, pyqtgraph
items), their C++ destructors run on that thread: they take Qt's
signal-slot mutexes, then wait for the GIL, while the GUI thread holds the
GIL and waits for the same mutexes. Seen here as a hang (py-spy: pool thread
in gc_collect_main -> QObject::~QObject -> GilState::acquire; GUI thread in
QObject::~QObject -> QBasicMutex::lockInternal).

`collect_on_gui_thread()` turns automatic collection off and collects on a
GUI-thread timer instead (pyqtgraph's GarbageCollector: generation thresholds
as before, checked every second). Call it on the GUI thread before starting
any thread that runs Python: the window, the task pool and the training
controller do.
"""

from __future__ import annotations

import gc

from pyqtgraph.util.garbage_collector import GarbageCollector

_collector: GarbageCollector | None = None


def collect_on_gui_thread(interval_s: float = 1.0) -> GarbageCollector:
    """Idempotent; call on the GUI thread (the timer lives there)."""
    global _collector
    if _collector is None:
        _collector = GarbageCollector(interval=interval_s)
    gc.disable()  # again, in case something re-enabled it (tests do between cases)
    return _collector

"""Fine-Tune Studio's window: PySide6 + pyqtgraph over `trainer_core`.

`trainer_core` is imported first: on Linux it preloads the system OpenBLAS,
which must happen before anything imports mlx. Then the PySide6 6.12.0
reference-count workaround is applied before any Qt call (pyside_compat.py).
"""

import trainer_core  # noqa: F401  (must come before mlx, PySide6 and pyqtgraph)

from app.pyside_compat import protect_singletons

protect_singletons()

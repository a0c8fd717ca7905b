"""Fine-Tune Studio's window: PySide6 + pyqtgraph over `trainer_core`.

`trainer_core` is imported first: on Linux it preloads the system OpenBLAS,
which must happen before anything imports mlx.
"""

import trainer_core  # noqa: F401  (must come before mlx, PySide6 and pyqtgraph)

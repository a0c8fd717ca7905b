"""Fine-Tune Studio's window: PySide6 + pyqtgraph over `trainer_core`.

`trainer_core` is imported first: on Linux it preloads the system OpenBLAS,
which must happen before anything imports mlx. (PySide6 6.12.0 is excluded in
pyproject.toml: on Python 3.11 it drops references to None/True/False and
aborts the app within seconds of live plotting.)
"""

import trainer_core  # noqa: F401  (must come before mlx, PySide6 and pyqtgraph)

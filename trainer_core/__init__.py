"""Fine-Tune Studio's training core: pure Python + MLX, no Qt.

Importing this package first loads the system OpenBLAS on Linux (see
`native_blas`), so it must be imported before `mlx`.
"""

from trainer_core import native_blas

native_blas.preload()

__version__ = "0.1.0"

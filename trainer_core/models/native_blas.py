"""Load the system OpenBLAS before MLX on Linux.

MLX's Linux CPU wheel links the reference BLAS (about 4 GFLOP/s). Loading the
system OpenBLAS (`libopenblas.so.0`, Debian package `libopenblas0-pthread`)
into the global symbol namespace *before* the first `import mlx` makes MLX's
matmuls resolve to OpenBLAS instead: about 35x faster on the CPU.

This is the only place that does it. `trainer_core/__init__.py` calls
`preload()` first thing, and every entry point (CLI, GUI, tests) imports
`trainer_core` before MLX. On macOS (Accelerate/Metal) it does nothing. When
the library cannot be found it logs one line and MLX runs as it is.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

CANDIDATES = (
    "libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)

loaded_path: str | None = None


def preload() -> str | None:
    """Load OpenBLAS globally once; return the path loaded, or None."""
    global loaded_path
    if loaded_path is not None or not sys.platform.startswith("linux"):
        return loaded_path
    if "mlx.core" in sys.modules:
        log.info("OpenBLAS not preloaded: mlx was imported before trainer_core")
        return None
    for candidate in CANDIDATES:
        try:
            ctypes.CDLL(candidate, mode=os.RTLD_GLOBAL)
        except OSError:
            continue
        loaded_path = candidate
        return loaded_path
    log.info("OpenBLAS not found (install libopenblas0-pthread); MLX uses its slower built-in BLAS")
    return None

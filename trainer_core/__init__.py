"""Fine-Tune Studio's training core: pure Python + MLX, no Qt.

Importing this package first loads the system OpenBLAS on Linux (see
`native_blas`) and sizes MLX's CUDA graphs (see `cuda_graphs`), so it must be
imported before `mlx`.
"""

from trainer_core.models import cuda_graphs, native_blas

native_blas.preload()
cuda_graphs.size_graphs()

__version__ = "0.1.0"


def versions() -> dict:
    """Versions of the libraries that shape results (recorded in checkpoints)."""
    from importlib.metadata import PackageNotFoundError, version
    found = {"fine-tune-studio": __version__}
    for name in ("mlx", "mlx-lm", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "unknown"
    return found

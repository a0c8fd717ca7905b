"""How much work MLX's CUDA backend puts in one CUDA graph, which bounds the memory its run-ahead holds.

MLX's CUDA backend records kernels into a CUDA graph and launches it once the graph holds
`MLX_MAX_OPS_PER_BUFFER` kernels or its kernels' inputs add up to `MLX_MAX_MB_PER_BUFFER` megabytes; a
graph keeps every input alive until it has run, and evaluation runs up to 10 graphs ahead of the GPU
(`MAX_ACTIVE_TASKS`, mlx/transforms.cpp). On compute capability 9.x and 10.x (H100, H200, B200) the
default is 1000 MB a graph, so a training step holds up to ~10 GB of activations it no longer needs:
the 702M Llama of bench/RESULTS.md ("GPU, fifth look") peaks at 15-16 GB, where its step needs ~9.

Smaller graphs cap that without slowing the GPU down, until graphs get so small that launching them
shows (measured on an H100, tokens/s and peak: 1000 MB 64.5k / 15.1-16.2 GB, 400 MB 65.0k / 12.0 GB,
250 MB 64.8k / 10.7 GB, 100 MB 56.5k / 9.4 GB). MLX's memory limit is the other brake, but past it each
evaluation waits for the GPU and the pipeline drains (same machine: 51k tokens/s held to ~10.3 GB).

Set before MLX builds its CUDA device (it reads the variable once), so `trainer_core/__init__.py` calls
`limit_graph_bytes()` before anything touches MLX. Only on Linux, where the CUDA backend is: Metal reads
the same variable and has its own, smaller defaults (40-50 MB a command buffer). A value the user set
is kept.
"""

from __future__ import annotations

import os
import sys

GRAPH_MB = 250  # the smallest graph size that measured as fast as MLX's default (module doc)
VARIABLE = "MLX_MAX_MB_PER_BUFFER"


def limit_graph_bytes(environ=None, platform: str | None = None) -> None:
    environ = os.environ if environ is None else environ
    if (platform or sys.platform).startswith("linux"):
        environ.setdefault(VARIABLE, str(GRAPH_MB))


GRAPHS_IN_FLIGHT = 10  # MLX's MAX_ACTIVE_TASKS


def run_ahead_bytes() -> float:
    """What the graphs in flight may keep alive beyond the step's live set, on MLX's CUDA backend (0 elsewhere):
    the memory estimate adds it (measured on the 702M Llama: peak 1.9 GB above the estimate at 250 MB a graph)."""
    import mlx.core as mx
    if not (sys.platform.startswith("linux") and mx.default_device() == mx.gpu):
        return 0.0
    try:
        megabytes = int(os.environ.get(VARIABLE, GRAPH_MB))
    except ValueError:
        megabytes = GRAPH_MB
    return GRAPHS_IN_FLIGHT * megabytes * 1e6

"""How much work MLX's CUDA backend puts in one CUDA graph, which bounds the memory its run-ahead holds.

MLX's CUDA backend records kernels into a CUDA graph and launches it once the graph holds
`MLX_MAX_OPS_PER_BUFFER` kernels or its kernels' inputs add up to `MLX_MAX_MB_PER_BUFFER` megabytes; a
graph keeps every input alive until it has run, and evaluation runs up to 10 graphs ahead of the GPU
(`MAX_ACTIVE_TASKS`, mlx/transforms.cpp). On compute capability 8.0 its default is 400 MB a graph, on
9.0, 10.0 and 12.0 (H100, H200, B200, consumer Blackwell) 1000 MB (`get_graph_limits`,
mlx/backend/cuda/device.cpp), so a training step holds up to ~10 GB of activations it no longer needs:
the 702M Llama of bench/RESULTS.md ("GPU, fifth look") peaks at 15-16 GB, where its step needs ~9.

Smaller graphs cap that without slowing the GPU down, until graphs get so small that launching them
shows (measured on an H100, tokens/s and peak: 1000 MB 64.5k / 15.1-16.2 GB, 400 MB 65.0k / 12.0 GB,
250 MB 64.8k / 10.7 GB, 100 MB 56.5k / 9.4 GB). MLX's memory limit is the other brake, but past it each
evaluation waits for the GPU and the pipeline drains (same machine: 51k tokens/s held to ~10.3 GB).

Bounded by bytes, a graph may hold more kernels than MLX's 100 on compute capability 9.0: on an H100 graphs
of up to 400 kernels (`MLX_MAX_OPS_PER_BUFFER`) made the 702M LoRA step 2-3 % faster in adjacent pairs at the
same peak (71.0-73.0k vs 69.5-69.8k tokens/s, 8.743 GB; 300 and 1000 kernels were no faster: bench/RESULTS.md,
"GPU, ninth look"): fewer graph launches, each of which the GPU waited for in the optimizer's run of small
kernels. Other capabilities keep MLX's count (not measured there).

MLX reads the variables once, when it creates its GPU stream on import, so `trainer_core/__init__.py`
calls `size_graphs()` before anything imports MLX; the GPU's compute capability comes from
`nvidia-smi`. Bytes are only lowered, never raised: where MLX's own default is 250 MB or less (consumer
Ampere/Ada 100, DGX Spark 25) it stays, as does a value the user set. Only on Linux, where the CUDA backend is:
Metal reads the same variable and has its own defaults (40-50 MB a command buffer).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

GRAPH_MB = 250  # the smallest graph size that measured as fast as MLX's default (module doc)
VARIABLE = "MLX_MAX_MB_PER_BUFFER"
GRAPH_OPS = {"9.0": 400}  # kernels a graph, where measured faster than MLX's default (module doc)
OPS_VARIABLE = "MLX_MAX_OPS_PER_BUFFER"
MLX_DEFAULT_MB = {"8.0": 400, "9.0": 1000, "10.0": 1000, "12.0": 1000, "12.1": 25}  # get_graph_limits
MLX_OTHER_MB = 100  # every other compute capability
GRAPHS_IN_FLIGHT = 10  # MLX's MAX_ACTIVE_TASKS


def compute_capability() -> str | None:
    """The first NVIDIA GPU's compute capability ("9.0") from nvidia-smi; None without one (or without nvidia-smi)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    return lines[0] if out.returncode == 0 and lines else None


def size_graphs(environ=None, platform: str | None = None, capability=compute_capability) -> None:
    """On Linux with an NVIDIA GPU: MLX_MAX_MB_PER_BUFFER to GRAPH_MB where MLX's default is larger, and
    MLX_MAX_OPS_PER_BUFFER to GRAPH_OPS where measured; a value the user set is kept."""
    environ = os.environ if environ is None else environ
    if not (platform or sys.platform).startswith("linux") or (VARIABLE in environ and OPS_VARIABLE in environ):
        return
    found = capability()
    if found is None:
        return
    if VARIABLE not in environ and MLX_DEFAULT_MB.get(found, MLX_OTHER_MB) > GRAPH_MB:
        environ[VARIABLE] = str(GRAPH_MB)
    if OPS_VARIABLE not in environ and found in GRAPH_OPS:
        environ[OPS_VARIABLE] = str(GRAPH_OPS[found])


def cuda_backend() -> bool:
    """Whether MLX computes on its CUDA backend (Linux with a GPU device; macOS's GPU is Metal)."""
    import mlx.core as mx
    return sys.platform.startswith("linux") and mx.default_device() == mx.gpu


def run_ahead_bytes() -> float:
    """What the graphs in flight may keep alive beyond the step's live set, on MLX's CUDA backend (0 elsewhere):
    the memory estimate adds it (measured on the 702M Llama: peak 1.9 GB above the estimate at 250 MB a graph).
    Without the variable (a GPU whose MLX default is at most GRAPH_MB) GRAPH_MB bounds it."""
    if not cuda_backend():
        return 0.0
    try:
        megabytes = int(os.environ.get(VARIABLE, GRAPH_MB))
    except ValueError:
        megabytes = GRAPH_MB
    return GRAPHS_IN_FLIGHT * megabytes * 1e6

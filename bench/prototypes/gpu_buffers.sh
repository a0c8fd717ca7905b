#!/bin/bash
# issue 26: MLX's CUDA graph size in bytes (MLX_MAX_MB_PER_BUFFER; 1000 MB by default on compute capability 9.x,
# mlx/backend/cuda/device.cpp get_graph_limits). A graph in flight keeps its inputs alive and MLX runs up to 10
# graphs ahead, so smaller graphs should cap the run-ahead without the memory-limit stall. One process a line.
export PYTHONPATH=/tmp/site:$PWD
STEPS=${STEPS:-15} bash bench/prototypes/gpu_throttle.sh \
  "X=1:" \
  "X=1:--ours-no-run-ahead-cap" \
  "MLX_MAX_MB_PER_BUFFER=100:--ours-no-run-ahead-cap" \
  "MLX_MAX_MB_PER_BUFFER=200:--ours-no-run-ahead-cap" \
  "MLX_MAX_MB_PER_BUFFER=400:--ours-no-run-ahead-cap" \
  "MLX_MAX_MB_PER_BUFFER=200:" \
  "MLX_MAX_MB_PER_BUFFER=200:--ours-recompute-mlp-tail" \
  "X=1:--sides torch-compile" 2>&1 | tee $OUT/buffers.txt

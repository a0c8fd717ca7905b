#!/bin/bash
# issue 26: MLX's CUDA graph size in bytes (MLX_MAX_MB_PER_BUFFER: MLX's default is 1000 MB on compute capability
# 9.x, mlx/backend/cuda/device.cpp get_graph_limits; the product's 250, set by trainer_core itself,
# models/cuda_graphs.py). A graph in flight keeps its inputs alive and MLX runs up to 10 graphs ahead.
# One process a line, alternating, torch.compile in the middle.
export PYTHONPATH=/tmp/site:$PWD
STEPS=${STEPS:-30} bash bench/prototypes/gpu_throttle.sh \
  "X=1:" "MLX_MAX_MB_PER_BUFFER=1000:" "X=1:--sides torch-compile" "MLX_MAX_MB_PER_BUFFER=1000:" "X=1:" \
  2>&1 | grep -v transformers | tee $OUT/buffers.txt

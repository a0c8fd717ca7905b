#!/bin/bash
# issue 26: the product on the gpu case (CUDA graphs of 250 MB, set by trainer_core itself) with and without
# recording the next step while the device runs this one (training/prebuild.py), torch.compile in the middle.
# One process a line, alternating.
export PYTHONPATH=/tmp/site:$PWD
python -c "import os, trainer_core, mlx.core as mx; print('graph MB', os.environ.get('MLX_MAX_MB_PER_BUFFER'), 'device', mx.default_device(), 'FINETUNE_PREBUILD', os.environ.get('FINETUNE_PREBUILD'))" | tee $OUT/prebuild-env.txt
STEPS=${STEPS:-20} bash bench/prototypes/gpu_throttle.sh \
  "X=1:" "X=1:--ours-no-prebuild" "X=1:--sides torch-compile" "X=1:--ours-no-prebuild" "X=1:" \
  2>&1 | grep -v transformers | tee $OUT/prebuild.txt

#!/bin/bash
# issue 26, a short GPU call: the product defaults (the automatic run-ahead cap; WITH_TORCH=1 also torch.compile in
# the same command), then the MLP-tail prototype and the plain path both held to 9 GB by hand: if the tail keeps its
# speed there while the plain path slows down, it is the way to the 9.2 GB goal.
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/device.txt
python bench/throughput.py --case gpu --sides ours${WITH_TORCH:+,torch-compile} --repeats 1 --workdir /tmp/bw --json \
  > $OUT/final.json 2> $OUT/final.err
grep -E "round|Error|Traceback" $OUT/final.err
STEPS=15 bash bench/prototypes/gpu_throttle.sh "X=1:--ours-recompute-mlp-tail" \
  "X=1:--ours-recompute-mlp-tail --ours-mlx-limit-gb 9" "X=1:--ours-mlx-limit-gb 9" 2>&1 | tee $OUT/tail.txt

#!/bin/bash
# issue 26, one GPU call: the product defaults against torch.compile and mlx-lm (bench/RESULTS.md), then the
# selective-recomputation prototype under a tight cap. $OUT receives the JSON and the log.
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/device.txt
python bench/throughput.py --case gpu --sides ours,torch-compile,mlx --repeats 2 --workdir /tmp/bw --json \
  > $OUT/headline.json 2> $OUT/headline.err
grep -E "round|Error|Traceback" $OUT/headline.err
STEPS=15 bash bench/prototypes/gpu_throttle.sh "X=1:--ours-mlx-limit-gb 9.2" \
  "X=1:--ours-mlx-limit-gb 9.2 --ours-recompute-mlp-tail" "X=1:--ours-recompute-mlp-tail" 2>&1 | tee $OUT/tail.txt

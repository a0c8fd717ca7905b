#!/bin/bash
# issue 26, one GPU call: the product defaults against torch.compile and mlx-lm in one command (bench/RESULTS.md).
# REPEATS rounds (default 2); $OUT receives the JSON and the log.
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/device.txt
python bench/throughput.py --case gpu --sides ${SIDES:-ours,torch-compile,mlx} --repeats ${REPEATS:-2} --workdir /tmp/bw \
  --json > $OUT/headline.json 2> $OUT/headline.err
grep -E "round|Error|Traceback" $OUT/headline.err

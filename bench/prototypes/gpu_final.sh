#!/bin/bash
# issue 26, a short GPU call: the product defaults (run-ahead cap), then the MLP-tail prototype; WITH_TORCH=1 also
# runs torch.compile in the first command.
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/device.txt
python bench/throughput.py --case gpu --sides ours${WITH_TORCH:+,torch-compile} --repeats 1 --workdir /tmp/bw --json \
  > $OUT/final.json 2> $OUT/final.err
grep -E "round|Error|Traceback" $OUT/final.err
python bench/throughput.py --case gpu --sides ours --repeats 1 --workdir /tmp/bw --ours-recompute-mlp-tail \
  2> $OUT/tail.err | grep -E "^gpu" | tee $OUT/tail.txt
grep -E "round|Error|Traceback" $OUT/tail.err

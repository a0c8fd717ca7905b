#!/bin/bash
# issue 26, one GPU session: run-ahead throttle (MLX's memory limit), CUDA graph size, the one-pass head.
# usage: gpu_throttle.sh VARIANT...   (each VARIANT one process: ENV=VALUE,... then throughput.py arguments)
W=/tmp/bw
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for v in "$@"; do
  envs=${v%%:*}; args=${v#*:}
  echo "== env [$envs] args [$args]"
  env ${envs//,/ } python bench/throughput.py --case gpu --sides ours --repeats 1 --steps ${STEPS:-15} \
    --workdir $W $args 2>/tmp/err.txt | grep -E "^gpu"
  grep -E "round 0|Error|error|Traceback" /tmp/err.txt | tail -3
done

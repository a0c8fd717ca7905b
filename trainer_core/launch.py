"""`python -m trainer_core.launch MLX_LAUNCH_ARGS -- train|resume ...`: the documented terminal entry point
for a distributed run (README, Copy as CLI). The launcher itself lives in `trainer_core.distributed.launch`."""

import sys

from trainer_core.distributed.launch import main

if __name__ == "__main__":
    sys.exit(main())

"""Distributed: one run over several processes or Macs through `mx.distributed` and `mlx.launch`.

Joining the ranks and agreeing before the first step (`ranks`), and `mlx.launch` helpers: host
files, argv, the stop file, how a launch ended, launch.json (`launch`). The reductions inside a
step live in `training.collectives` (the loop needs them; this package sits above training).
May import: `models`, `data`, `training` and the top-level contracts.
"""

"""Data-parallel runs over several processes and machines, through MLX's own `mx.distributed`.

A run is started on every rank by `mlx.launch` (ring, MPI, JACCL or NCCL backend), e.g.

    mlx.launch -n 2 --backend ring -- finetune train config.toml          # 2 processes, this machine
    mlx.launch --hostfile hosts.json -- finetune train config.toml        # several machines

What the pieces do (the maths lives in data/batching.py, training/step.py and training/loop.py):
- batching.epoch_batches gives rank r a contiguous, disjoint slice of every global batch of
  `batch_size x world_size` examples; step.CompiledSteps sums gradients, loss, weight and
  method metrics over the ranks inside the compiled update (`sum_over_ranks`: one collective),
  so every rank applies the same update and N ranks with batch b equal one process with
  batch N x b. Evaluation is sharded over the ranks and summed (loop.evaluate).
- Only rank 0 writes: the run folder, config.toml, metrics.jsonl, log.txt, checkpoints, final/.
  Other ranks read the model, data and (on resume) the run folder at the same paths.
- This module: joining (`init`, with a time limit) and agreeing before the first step (the run
  name rank 0 chose, the config, model and data: `broadcast_text`, `agree`). Stopping on the
  same step (`any_rank`), exact token counts (`sum_ints`) and turning a lost peer into a clear
  `RankFailure` instead of a backend traceback or a hang: training/collectives.py. Launching
  from the GUI: launch.py. A peer that hangs without dying is not detected; the CLI's second Ctrl-C ends
  a rank stuck waiting for it (cli.abort_when_blocked).

Randomness: every rank seeds its RNG per step from (seed, step, rank) (loop.step_seed), so
dropout masks, diffusion noise levels and GRPO samples are independent across ranks, as they
would be across the rows of one big batch; rank 0 draws what a single process draws.
Everything that must be identical (adapter initialisation, data order) is seeded without the rank.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import os
import socket
from dataclasses import dataclass

import numpy as np
import mlx.core as mx

from trainer_core.errors import UserError
from trainer_core.training.collectives import RankFailure, collective  # noqa: F401  (RankFailure: the CLI's)

JOIN_TIMEOUT_S = 180.0  # how long a rank waits for the others to join before giving up
_NAME_WIDTH = 256  # bytes per host name in gather_text


@dataclass(frozen=True)
class World:
    """This process's place in the run: `size` processes, this one is `rank` (0 writes)."""
    size: int = 1
    rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


LAUNCHER_VARIABLES = ("MLX_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")  # set by mlx.launch / mpirun


def launched_size() -> int:
    """Processes the launcher started, read from its environment: 0 when this process was not
    started by mlx.launch or mpirun, 1 for a launch of one process."""
    if not any(name in os.environ for name in LAUNCHER_VARIABLES):
        return 0
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MLX_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    for name in ("MLX_HOSTFILE", "MLX_IBV_DEVICES"):  # ring / JACCL: a JSON list with one entry per rank
        path = os.environ.get(name)
        if path and os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read().strip()
                return len(json.loads(text)) if text else 1
            except (OSError, ValueError, TypeError):
                return 1
    return 1


def init(backend: str = "any", join_timeout_s: float = JOIN_TIMEOUT_S) -> World:
    """Join the run's other processes (or stay alone when not launched); returns this process's World.

    Not launched by mlx.launch/mpirun: World(1, 0), MLX is not asked. Launched: blocks until
    every rank has joined; if that takes longer than `join_timeout_s` (a host that never started,
    a wrong IP in the host file) the process exits with status 1 and a stack dump naming
    `wait_for_all_processes_to_join` (MLX holds the interpreter while it waits, so nothing
    gentler can run). Raises UserError when the launcher asked for more processes than joined.
    """
    expected = launched_size()
    if expected == 0:
        return World()
    faulthandler.dump_traceback_later(join_timeout_s, exit=True)
    try:
        group = wait_for_all_processes_to_join(backend)
    finally:
        faulthandler.cancel_dump_traceback_later()
    if expected > 1 and group.size() != expected:
        raise UserError(f"The launcher started {expected} processes but MLX's {backend} backend joined "
                        f"{group.size()}. Check that this MLX build has the backend (mx.distributed.is_available()) "
                        "and that every host runs the same Python environment.")
    return World(group.size(), group.rank())


def wait_for_all_processes_to_join(backend: str = "any"):
    """mx.distributed.init under its own name, so a join time-out's stack dump says what was going on."""
    return mx.distributed.init(strict=False, backend=backend)


def broadcast_text(text: str) -> str:
    """Rank 0's `text` on every rank (e.g. the run name, which holds rank 0's clock)."""
    rank = mx.distributed.init(strict=False).rank()
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32) if rank == 0 else None
    length = collective(mx.distributed.all_sum(mx.array([len(data) if rank == 0 else 0], dtype=mx.int32)),
                         "while sharing the run name").item()
    if length == 0:
        return ""
    values = mx.array(data) if rank == 0 else mx.zeros((length,), dtype=mx.int32)
    summed = collective(mx.distributed.all_sum(values), "while sharing the run name")
    return bytes(np.array(summed).astype(np.uint8)).decode("utf-8")


def gather_text(text: str) -> list[str]:
    """Every rank's `text` (up to 256 UTF-8 bytes), in rank order."""
    raw = text.encode("utf-8")[:_NAME_WIDTH]
    padded = np.zeros(_NAME_WIDTH, dtype=np.int32)
    padded[:len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    gathered = np.array(collective(mx.distributed.all_gather(mx.array(padded)), "while the processes joined"))
    rows = gathered.reshape(-1, _NAME_WIDTH).astype(np.uint8)
    return [bytes(row).rstrip(b"\0").decode("utf-8", errors="replace") for row in rows]


def hosts() -> list[str]:
    """The host name of every rank, in rank order."""
    return gather_text(socket.gethostname())


def _digest(value) -> int:
    text = json.dumps(value, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def agree(items: dict) -> None:
    """Check that every rank holds the same value for each of `items` ({name: JSON-able value});
    raise UserError on every rank, naming the first item that differs and the ranks that differ
    from rank 0 (e.g. another data file or model on one host)."""
    names = sorted(items)
    mine = mx.array([_digest(items[n]) for n in names], dtype=mx.int32)
    table = np.array(collective(mx.distributed.all_gather(mine), "while checking that every process agrees"))
    table = table.reshape(-1, len(names))
    for column, name in enumerate(names):
        differ = [r for r in range(table.shape[0]) if table[r, column] != table[0, column]]
        if differ:
            ranks = ", ".join(map(str, differ))
            raise UserError(f"The processes of this distributed run disagree on {name}: rank(s) {ranks} differ from "
                            "rank 0. Every host needs the same model, data, config and software at the same paths "
                            "(copy them, or use a shared folder).", field=name if name in ("model", "data") else None)


def message_prefix(world: World) -> str:
    """'[rank r] ' for a message printed by a non-zero rank, else ''."""
    return f"[rank {world.rank}] " if world.distributed and world.rank else ""


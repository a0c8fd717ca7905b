"""The reductions over the ranks of a data-parallel run that a step and the loop make.

Every function is a no-op-sized collective at world size 1 and is only called when the world is
larger (or inside the compiled step, where `sum_over_ranks` sums gradients, loss and metrics in one
message). A lost peer becomes a `RankFailure` that says what happened and where the last checkpoint
is, instead of a backend traceback or a hang. Joining and launching: `trainer_core.distributed`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import mlx.core as mx
from mlx.utils import tree_map

from trainer_core.errors import UserError

_BACKEND_ERROR = re.compile(r"^\[(ring|mpi|jaccl|nccl)\]|connection to a peer|peer was lost", re.IGNORECASE)


class RankFailure(UserError):
    """Another process of a distributed run stopped or became unreachable; `cause` is MLX's error."""

    def __init__(self, message: str, cause: BaseException):
        super().__init__(message)
        self.cause = cause


def is_peer_failure(error: BaseException) -> bool:
    """True when an MLX error means a collective lost another rank (ring/MPI/JACCL/NCCL)."""
    return isinstance(error, RuntimeError) and bool(_BACKEND_ERROR.search(str(error)))


def rank_failure(error: BaseException, *, world_size: int, during: str, checkpoint=None,
                 rank: int = 0) -> RankFailure | None:
    """A RankFailure explaining `error` (raised by a collective `during` something), or None when
    `error` is not a lost peer. `checkpoint`: the latest complete checkpoint (rank 0 writes them),
    named in the message."""
    if world_size < 2 or not is_peer_failure(error):
        return None
    if checkpoint:
        kept = (f"The last complete checkpoint, {checkpoint}, is intact: continue with `finetune resume "
                f"{Path(checkpoint).parent.parent}` started on the same {world_size} processes.")
    elif rank:
        kept = "Rank 0 writes the checkpoints; its last complete one is intact."
    else:
        kept = "No checkpoint was written yet."
    return RankFailure(f"Lost another process of this {world_size}-process run {during} ({error}). A process stopped "
                       "(see its own message) or its host became unreachable; the run cannot go on with fewer "
                       f"processes. {kept}", error)


def collective(arrays, during: str):
    """Evaluate collective results, turning a lost peer into a RankFailure."""
    try:
        mx.eval(arrays)
    except RuntimeError as e:
        failure = rank_failure(e, world_size=mx.distributed.init(strict=False).size(), during=during)
        if failure is None:
            raise
        raise failure from None
    return arrays


def sum_over_ranks(tree):
    """Every array of `tree` (nested tuples/lists/dicts of arrays) summed over the ranks, same
    structure, shapes and dtypes. Traceable (step.py calls it inside mx.compile).

    Everything travels in ONE float32 all_sum: MLX's ring backend reports a lost peer as an
    error only when a single collective is pending; with several in one evaluation (one per
    gradient array) the survivors hang (checked on mlx 0.32.4). One message also beats many
    small latency-bound ones. Cost: a float32 copy of the gradients while they are summed.
    """
    leaves: list = []
    tree_map(leaves.append, tree)
    packed = mx.concatenate([leaf.reshape(-1).astype(mx.float32) for leaf in leaves])
    summed = mx.distributed.all_sum(packed)
    offsets = np.cumsum([0] + [leaf.size for leaf in leaves]).tolist()
    pieces = iter(summed[start:end].reshape(leaf.shape).astype(leaf.dtype)
                  for leaf, start, end in zip(leaves, offsets, offsets[1:]))
    return tree_map(lambda _: next(pieces), tree)


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is True on at least one (e.g. a stop request)."""
    total = collective(mx.distributed.all_sum(mx.array([int(bool(flag))], dtype=mx.int32)), "while agreeing to stop")
    return total.item() > 0


def sum_ints(values: list[int]) -> list[int]:
    """Element-wise sum over the ranks of a few whole numbers (e.g. token counts)."""
    total = collective(mx.distributed.all_sum(mx.array(values, dtype=mx.int64)), "while counting tokens")
    return [int(v) for v in total.tolist()]

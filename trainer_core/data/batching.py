"""Length-bucketed batches in a deterministic, resumable order.

The order of epoch e is a pure function of (seed, e): a resumed run asks for
the same epoch and skips the micro-batches it already consumed, so it sees
exactly the data the uninterrupted run would have seen. Within windows of
`batch_size * WINDOW` shuffled examples, examples are sorted by length and cut
into batches (little padding), then the batches are shuffled. (mlx-lm sorts by
the number of JSON keys, which buckets nothing.)

With several processes each global batch holds `batch_size * world_size`
examples and rank r takes its own contiguous slice: shards are disjoint.
"""

from __future__ import annotations

import numpy as np
import mlx.core as mx

WINDOW = 16  # batches per sorting window: larger = less padding, less randomness
PAD_MULTIPLE = 8  # pad rows to a multiple of this (bounds compiled shapes; 8 measured +2-3% tok/s over 16, bench/RESULTS.md)


def epoch_batches(lengths, batch_size: int, seed: int, epoch: int, *, world_size: int = 1,
                  rank: int = 0) -> list[list[int]]:
    """Example indices of each micro-batch of `epoch`, for process `rank`."""
    n = len(lengths)
    global_batch = batch_size * world_size
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    lengths = np.asarray(lengths)
    batches = []
    window = global_batch * WINDOW
    for start in range(0, n, window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + global_batch] for i in range(0, len(chunk), global_batch))
    if world_size > 1:
        batches = [b for b in batches if len(b) == global_batch]  # every rank needs a full share
    perm = rng.permutation(len(batches))
    batches = [batches[i] for i in perm]
    return [b[rank * batch_size:(rank + 1) * batch_size].tolist() for b in batches]


def padded_length(longest: int, shifted: bool = True) -> int:
    """Row width for a batch whose longest row has `longest` tokens.

    The model sees a multiple of PAD_MULTIPLE positions: a causal LM (`shifted`) is fed
    ids[:, :-1], so rows are 1 + a multiple wide. Misaligned lengths are far slower on a
    GPU (1023 model positions: 1.9x the step time of 1024 on an H200, bench/RESULTS.md).
    """
    shift = 1 if shifted else 0
    return shift + PAD_MULTIPLE * max(1, -(-(longest - shift) // PAD_MULTIPLE))


def collate_sft(examples, pad_id: int = 0) -> dict[str, mx.array]:
    """Pad Examples into {input_ids [B, L] int32, target_mask [B, L] bool}."""
    width = padded_length(max(len(e.input_ids) for e in examples))
    ids = np.full((len(examples), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(examples), width), dtype=bool)
    for row, e in enumerate(examples):
        ids[row, :len(e.input_ids)] = e.input_ids
        mask[row, :len(e.target_mask)] = e.target_mask
    return {"input_ids": mx.array(ids), "target_mask": mx.array(mask)}

"""trainer_core.data.batching: deterministic epoch order, disjoint shards, little padding, collation."""

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)

from trainer_core.data.batching import PAD_MULTIPLE, collate_sft, epoch_batches, padded_length
from trainer_core.data import Example


def random_lengths(n=1000, seed=0):
    return np.random.default_rng(seed).integers(10, 500, size=n).tolist()


def padding_fraction(batches, lengths):
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(padded_length(max(lengths[i] for i in b)) * len(b) for b in batches)
    return 1 - real / padded


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    lengths = random_lengths(300)
    a = epoch_batches(lengths, 8, seed=3, epoch=2)
    assert a == epoch_batches(list(lengths), 8, seed=3, epoch=2)
    assert a != epoch_batches(lengths, 8, seed=3, epoch=1)
    assert a != epoch_batches(lengths, 8, seed=4, epoch=2)


@pytest.mark.parametrize("n,batch_size", [(300, 8), (37, 4), (5, 8), (1, 1)])
def test_every_example_once_per_epoch(n, batch_size):
    lengths = random_lengths(n)
    for epoch in range(3):
        batches = epoch_batches(lengths, batch_size, seed=0, epoch=epoch)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(n))
        assert all(1 <= len(b) <= batch_size for b in batches)
        assert sum(len(b) < batch_size for b in batches) <= 1  # only one short batch (the tail)


def test_two_ranks_get_disjoint_shards_covering_the_global_batches():
    lengths = random_lengths(203, seed=1)
    batch_size = 4
    single = epoch_batches(lengths, batch_size * 2, seed=7, epoch=1)  # one process, the same global batches
    rank0 = epoch_batches(lengths, batch_size, seed=7, epoch=1, world_size=2, rank=0)
    rank1 = epoch_batches(lengths, batch_size, seed=7, epoch=1, world_size=2, rank=1)
    assert len(rank0) == len(rank1) > 0
    assert all(len(b) == batch_size for b in rank0 + rank1)
    flat0, flat1 = {i for b in rank0 for i in b}, {i for b in rank1 for i in b}
    assert not flat0 & flat1
    assert len(flat0) + len(flat1) == sum(len(b) for b in rank0 + rank1)  # no index twice on one rank
    full = [b for b in single if len(b) == 2 * batch_size]  # (their order differs: the tail is dropped first)
    assert sorted(sorted(a + b) for a, b in zip(rank0, rank1)) == sorted(sorted(b) for b in full)
    dropped = set(range(len(lengths))) - flat0 - flat1
    assert len(dropped) < 2 * batch_size  # only the incomplete tail batch is dropped
    # same step on both ranks = neighbouring lengths (bucketed across the global batch)
    for a, b in zip(rank0, rank1):
        assert max(lengths[i] for i in a) <= min(lengths[i] for i in b)


def test_length_bucketing_keeps_padding_low():
    lengths = random_lengths(1000, seed=2)
    batches = epoch_batches(lengths, 8, seed=0, epoch=0)
    bucketed = padding_fraction(batches, lengths)
    order = np.random.default_rng(0).permutation(len(lengths))
    naive = padding_fraction([order[i:i + 8].tolist() for i in range(0, len(order), 8)], lengths)
    assert bucketed < 0.08
    assert bucketed < naive / 4
    # batches are shuffled, not served shortest-first
    maxima = [max(lengths[i] for i in b) for b in batches]
    assert maxima != sorted(maxima)


def test_collate_pads_ids_and_mask():
    examples = [Example([5, 6, 7], [False, True, True]), Example(list(range(1, 21)), [False] + [True] * 19)]
    batch = collate_sft(examples, pad_id=9)
    ids, mask = np.array(batch["input_ids"]), np.array(batch["target_mask"])
    assert ids.shape == mask.shape == (2, 25)  # the model sees 24 positions: a multiple of PAD_MULTIPLE
    assert PAD_MULTIPLE == 8 and ids.dtype == np.int32 and mask.dtype == bool
    assert ids[0, :3].tolist() == [5, 6, 7] and (ids[0, 3:] == 9).all()
    assert ids[1, :20].tolist() == list(range(1, 21)) and (ids[1, 20:] == 9).all()
    assert mask[0].tolist() == [False, True, True] + [False] * 22
    assert mask[1].sum() == 19 and not mask[1, 20:].any()


def test_padded_length():
    assert [padded_length(n) for n in (1, 8, 9, 10, 17, 18, 1024)] == [9, 9, 9, 17, 17, 25, 1025]
    assert [padded_length(n, shifted=False) for n in (1, 8, 9, 16, 17)] == [8, 8, 16, 16, 24]

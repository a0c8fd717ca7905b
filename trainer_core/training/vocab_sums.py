"""Sums over a whole vocabulary (log-sum-exp, a softmax's total, an entropy) without MLX's CPU rounding bias.

Our own because MLX's CPU reductions add a row's terms one by one in float32: over a 49,152-token vocabulary the
rounding errors all lean one way, and `mx.logsumexp` came out 1.1e-4 nats a token low on average (max 2.6e-4)
against float64 on the same logits (bench/RESULTS.md, "where the step goes"): every loss we report, and the
gradient's softmax, off by that much. Summing in blocks of a few hundred terms first, then the block totals,
keeps each float32 accumulation short: the bias drops to ~1e-7 at the same cost (one exp a logit either way;
[352, 49152] on the CI CPU: 214 -> 206 ms). The GPU backends already reduce in a tree, so there the plain MLX
reduction runs unchanged. tests/core/training/test_vocab_sums.py compares with float64.
"""

from __future__ import annotations

import mlx.core as mx

BLOCK = 256


def _blocked() -> bool:
    return mx.default_device() == mx.cpu


def _split(x: mx.array):
    """(x's last axis as [..., n, BLOCK] blocks, the remainder [..., r] or None), or None when one block is all."""
    width = x.shape[-1]
    whole = width - width % BLOCK
    if not _blocked() or whole <= BLOCK:
        return None
    blocks = x[..., :whole].reshape(*x.shape[:-1], whole // BLOCK, BLOCK)
    return blocks, (x[..., whole:] if whole < width else None)


def vocab_logsumexp(z: mx.array, keepdims: bool = False) -> mx.array:
    """`mx.logsumexp(z, axis=-1)`, the sum taken in blocks on the CPU."""
    parts = _split(z)
    if parts is None:
        return mx.logsumexp(z, axis=-1, keepdims=keepdims)
    blocks, rest = parts
    partial = mx.logsumexp(blocks, axis=-1)
    if rest is not None:
        partial = mx.concatenate([partial, mx.logsumexp(rest, axis=-1, keepdims=True)], axis=-1)
    return mx.logsumexp(partial, axis=-1, keepdims=keepdims)


def vocab_sum(x: mx.array, keepdims: bool = False) -> mx.array:
    """`x.sum(axis=-1)`, taken in blocks on the CPU."""
    parts = _split(x)
    if parts is None:
        return x.sum(axis=-1, keepdims=keepdims)
    blocks, rest = parts
    total = blocks.sum(axis=-1).sum(axis=-1, keepdims=keepdims)
    if rest is not None:
        total = total + rest.sum(axis=-1, keepdims=keepdims)
    return total


def vocab_entropy(z: mx.array) -> mx.array:
    """The entropy of softmax(z) over the last axis, its normaliser and expectation summed as above."""
    lse = vocab_logsumexp(z, keepdims=True)
    return lse[..., 0] - vocab_sum(mx.exp(z - lse) * z)

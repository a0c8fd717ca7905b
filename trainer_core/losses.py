"""Next-token cross-entropy over real target tokens only.

`masked_cross_entropy` returns (sum of token losses, number of target tokens)
so every average is per token and gradient accumulation can weight micro-batches
by their token counts exactly. Padding never counts: unlike mlx-lm's
`default_loss`, which scores one padding position per row, the mask here is
the data's own target mask (False on padding and, by default, on prompts).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


def masked_cross_entropy(logits: mx.array, targets: mx.array, mask: mx.array):
    """logits [B, L, V], targets [B, L] int, mask [B, L] (1 = scored) -> (loss_sum, n_tokens)."""
    mask = mask.astype(mx.float32)
    token_losses = nn.losses.cross_entropy(logits.astype(mx.float32), targets, reduction="none")
    return (token_losses * mask).sum(), mask.sum()


def sft_loss(model, batch: dict[str, mx.array]):
    """Loss of a causal LM on a batch {input_ids [B, L], target_mask [B, L]}.

    Position i of target_mask says whether token i is trained (predicted from tokens < i).
    Returns (loss_sum, n_tokens, extra metrics {}).
    """
    ids = batch["input_ids"]
    logits = model(ids[:, :-1])
    loss_sum, ntoks = masked_cross_entropy(logits, ids[:, 1:], batch["target_mask"][:, 1:])
    return loss_sum, ntoks, {}

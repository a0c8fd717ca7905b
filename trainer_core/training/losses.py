"""Next-token cross-entropy over real target tokens only.

`masked_cross_entropy` returns (sum of token losses, number of target tokens)
so every average is per token and gradient accumulation can weight micro-batches
by their token counts exactly. Padding never counts: unlike mlx-lm's
`default_loss`, which scores one padding position per row, the mask here is
the data's own target mask (False on padding and, by default, on prompts).

`token_nll` is our own cross-entropy (not `nn.losses.cross_entropy`) because
neither obvious way is right for 16-bit models: casting the [B, L, vocab]
logits to float32 first is exact but keeps float32 copies of the logits alive
for the backward pass (+1.6 GB at 4 x 1024 x 32k), while mlx-lm's way (the
cross-entropy in bf16, summed in float32) rounds every token's loss and
gradient to bf16. Here the forward reduces in float32 without keeping
anything but the logits and a [B, L] log-sum-exp, and the backward builds
softmax - onehot in float32 in one elementwise pass, rounded once to the
logits' dtype: float32 accuracy at the bf16 memory cost.
"""

from __future__ import annotations

import mlx.core as mx

from trainer_core.training.head_loss import causal_token_nll
from trainer_core.training.vocab_sums import vocab_logsumexp


def _picked(logits: mx.array, targets: mx.array) -> mx.array:
    return mx.take_along_axis(logits, targets[..., None], axis=-1)[..., 0].astype(mx.float32)


@mx.custom_function
def token_nll(logits: mx.array, targets: mx.array) -> mx.array:
    """-log softmax(logits)[target] per position: logits [..., V], targets [...] int -> [...] float32."""
    return vocab_logsumexp(logits.astype(mx.float32)) - _picked(logits, targets)


@token_nll.vjp
def _token_nll_vjp(primals, cotangent, output):
    logits, targets = primals
    lse = output + _picked(logits, targets)
    onehot = mx.arange(logits.shape[-1]) == targets[..., None]
    grad = (mx.exp(logits.astype(mx.float32) - lse[..., None]) - onehot) * cotangent[..., None]
    return grad.astype(logits.dtype), mx.zeros_like(targets)


def masked_cross_entropy(logits: mx.array, targets: mx.array, mask: mx.array):
    """logits [B, L, V], targets [B, L] int, mask [B, L] (1 = scored) -> (loss_sum, n_tokens)."""
    mask = mask.astype(mx.float32)
    return (token_nll(logits, targets) * mask).sum(), mask.sum()


def sft_loss(model, batch: dict[str, mx.array]):
    """Loss of a causal LM on a batch {input_ids [B, L], target_mask [B, L]}.

    Position i of target_mask says whether token i is trained (predicted from tokens < i).
    Returns (loss_sum, n_tokens, extra metrics {}).
    """
    ids = batch["input_ids"]
    nll = causal_token_nll(model, ids[:, :-1], ids[:, 1:])  # the LM head fused with the loss, in chunks
    if nll is None:
        loss_sum, ntoks = masked_cross_entropy(model(ids[:, :-1]), ids[:, 1:], batch["target_mask"][:, 1:])
        return loss_sum, ntoks, {}
    mask = batch["target_mask"][:, 1:].astype(mx.float32)
    return (nll * mask).sum(), mask.sum(), {}

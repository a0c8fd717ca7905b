"""Mixed precision for trainable float32 weights in a 16-bit model.

mlx-lm's LoRA adapters are float32 while the base is bf16/fp16, so every
adapted layer promotes its input to float32 (`x @ lora_a`): a float32 copy of
each adapted layer's input is made in the forward pass and kept for the
backward one. With `mixed_precision` the step computes with 16-bit copies of
the trainable weights (as PyTorch autocast does) while the optimizer keeps
float32 master weights and moments: the same update rule, bf16 GEMMs
(accumulating in float32), and gradients rounded once to 16 bits.
"""

from __future__ import annotations

from collections import Counter

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map

LOW_PRECISION = (mx.bfloat16, mx.float16)


def base_dtype(model) -> mx.Dtype | None:
    """The float dtype holding most of the model's frozen weights (None when nothing is frozen)."""
    trainable = {k for k, _ in tree_flatten(model.trainable_parameters())}
    counts = Counter()
    for name, p in tree_flatten(model.parameters()):
        if name not in trainable and mx.issubdtype(p.dtype, mx.floating):
            counts[p.dtype] += p.size
    return counts.most_common(1)[0][0] if counts else None


def compute_dtype(model, enabled: bool) -> mx.Dtype | None:
    """16-bit dtype to compute trainable float32 weights in, or None (compute as stored)."""
    dtype = base_dtype(model) if enabled else None
    return dtype if dtype is not None and dtype in LOW_PRECISION else None


def value_and_grad(model, fn, dtype: mx.Dtype | None):
    """Like `nn.value_and_grad(model, fn)`; with a 16-bit `dtype` the forward and backward
    passes see the trainable float32 weights cast to it, and the model is left holding its
    float32 weights. Gradients come back in `dtype` (the optimizer promotes them)."""
    if dtype is None:
        return nn.value_and_grad(model, fn)

    def inner(params, *args, **kwargs):
        model.update(params)
        return fn(model, *args, **kwargs)

    grad_fn = mx.value_and_grad(inner)

    def wrapped(model_, *args, **kwargs):
        masters = model.trainable_parameters()
        low = tree_map(lambda p: p.astype(dtype) if p.dtype == mx.float32 else p, masters)
        out = grad_fn(low, *args, **kwargs)
        model.update(masters)
        return out

    return wrapped

"""Mixed precision: float32 trainable weights in a 16-bit model, and full fine-tuning's master weights.

mlx-lm's LoRA adapters are float32 while the base is bf16/fp16, so every
adapted layer promotes its input to float32 (`x @ lora_a`): a float32 copy of
each adapted layer's input is made in the forward pass and kept for the
backward one. With `mixed_precision` the step computes with 16-bit copies of
the trainable weights (as PyTorch autocast does) while the optimizer keeps
float32 master weights and moments: the same update rule, bf16 GEMMs
(accumulating in float32), and gradients rounded once to 16 bits.

Full fine-tuning of a 16-bit model (`[precision] master_weights`): an AdamW step
of ~lr = 1e-5 is below half a bf16 ulp for most weights, so rounding each update
into the 16-bit weights loses it (the weights never move, weight decay does
nothing). "fp32" (default) upcasts the trainable weights to float32 masters that
the optimizer updates, while the model computes with 16-bit copies as above (the
standard mixed-precision recipe); checkpoints keep the masters, the exported
weights are in the model's dtype. "stochastic_rounding" keeps 16-bit weights and
rounds each update up or down with probability given by the distance (unbiased;
half the memory of fp32 masters). "none" rounds to nearest (the old behaviour).
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map, tree_unflatten

LOW_PRECISION = (mx.bfloat16, mx.float16)


def base_dtype(model) -> mx.Dtype | None:
    """The float dtype holding most of the model's frozen weights (None when nothing is frozen)."""
    trainable = {k for k, _ in tree_flatten(model.trainable_parameters())}
    counts = Counter()
    for name, p in tree_flatten(model.parameters()):
        if name not in trainable and mx.issubdtype(p.dtype, mx.floating):
            counts[p.dtype] += p.size
    return counts.most_common(1)[0][0] if counts else None


@dataclass(frozen=True)
class MasterWeights:
    """Set on a model (`model.master_weights`) whose trainable float32 weights are masters of a 16-bit model."""
    dtype: mx.Dtype  # the model's own dtype: what it computes in and is exported in


def float_dtype(model) -> mx.Dtype | None:
    """The float dtype holding most of the model's weights."""
    counts = Counter()
    for _, p in tree_flatten(model.parameters()):
        if mx.issubdtype(p.dtype, mx.floating):
            counts[p.dtype] += p.size
    return counts.most_common(1)[0][0] if counts else None


def keep_master_weights(model, mode: str) -> dict:
    """Full fine-tuning: with mode "fp32" upcast a 16-bit model's trainable weights to float32 masters
    (and mark the model). Returns what adapter_config.json records: {"dtype", "master_weights"}."""
    dtype = float_dtype(model)
    if dtype not in LOW_PRECISION:
        return {"dtype": str(dtype).split(".")[-1], "master_weights": "none"}
    if mode == "fp32":
        model.update(tree_map(lambda p: p.astype(mx.float32) if p.dtype == dtype else p,
                              model.trainable_parameters()))
        model.master_weights = MasterWeights(dtype)
        mx.eval(model.parameters())
    return {"dtype": str(dtype).split(".")[-1], "master_weights": mode}


def model_dtype(model) -> mx.Dtype | None:
    """The dtype a model with master weights is stored and exported in; None when it has none."""
    masters = getattr(model, "master_weights", None)
    return masters.dtype if isinstance(masters, MasterWeights) else None


def compute_dtype(model, enabled: bool) -> mx.Dtype | None:
    """16-bit dtype to compute trainable float32 weights in, or None (compute as stored)."""
    dtype = (model_dtype(model) or base_dtype(model)) if enabled else None
    return dtype if dtype is not None and dtype in LOW_PRECISION else None


def as_computed(params: dict, dtype: mx.Dtype | None) -> dict:
    """Flat params with float32 arrays cast to `dtype` (what the forward pass sees); unchanged when None."""
    if dtype is None:
        return params
    return {k: v.astype(dtype) if v.dtype == mx.float32 else v for k, v in params.items()}


@contextmanager
def computing_in(model, dtype: mx.Dtype | None):
    """Inside the block `model`'s trainable float32 weights are their `dtype` copies, as the
    compiled step's forward sees them (value_and_grad below); restored on exit."""
    if dtype is None:
        yield model
        return
    masters = model.trainable_parameters()
    model.update(tree_map(lambda p: p.astype(dtype) if p.dtype == mx.float32 else p, masters))
    try:
        yield model
    finally:
        model.update(masters)


def value_and_grad(model, fn, dtype: mx.Dtype | None, layout=None):
    """Like `nn.value_and_grad(model, fn)`; with a 16-bit `dtype` the forward and backward
    passes see the trainable float32 weights cast to it, and the model is left holding its
    float32 weights. Gradients come back in `dtype` (the optimizer promotes them).

    `layout` (an optimizer whose `join` / `split` lay every trainable array out in one vector):
    the weights are joined, cast with one kernel and handed over as views, instead of one cast
    kernel per array (hundreds for adapters; the optimizer joins the same arrays, which MLX's
    compile computes once)."""
    if dtype is None:
        return nn.value_and_grad(model, fn)

    def inner(params, *args, **kwargs):
        model.update(params)
        return fn(model, *args, **kwargs)

    grad_fn = mx.value_and_grad(inner)

    def wrapped(model_, *args, **kwargs):
        masters = model.trainable_parameters()
        if layout is not None:
            low = tree_unflatten(list(layout.split(layout.join(dict(tree_flatten(masters))).astype(dtype)).items()))
        else:
            low = tree_map(lambda p: p.astype(dtype) if p.dtype == mx.float32 else p, masters)
        out = grad_fn(low, *args, **kwargs)
        model.update(masters)
        return out

    return wrapped


MANTISSA_BITS = {mx.bfloat16: 7, mx.float16: 10}
MIN_EXPONENT = {mx.bfloat16: -126, mx.float16: -14}


def stochastic_round(x: mx.array, dtype: mx.Dtype) -> mx.array:
    """float32 `x` rounded to 16-bit `dtype`: to one of its two neighbours on the target grid, the upper
    with probability (x - lower) / ulp, so E[result] = x (MLX has no stochastic-rounding cast).
    Both neighbours lie in x's binade, whose ulp is 2^(exponent - mantissa bits); uses MLX's global RNG."""
    magnitude = mx.abs(x)
    exponent = mx.maximum(mx.floor(mx.log2(magnitude)), MIN_EXPONENT[dtype])  # log2(0) = -inf -> the minimum
    ulp = mx.power(2.0, exponent - MANTISSA_BITS[dtype])
    steps = magnitude / ulp  # exact: ulp is a power of two
    lower = mx.floor(steps)
    up = mx.random.uniform(shape=x.shape) < steps - lower
    return (mx.sign(x) * (lower + up) * ulp).astype(dtype)

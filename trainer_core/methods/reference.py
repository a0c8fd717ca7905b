"""The frozen reference model of DPO and GRPO, without a second copy in memory.

With LoRA/DoRA the reference is the base: inside `reference_model(...)` every
mlx-lm adapter layer is swapped for the layer it wraps (setting the LoRA scale
to 0 would not do for DoRA, whose trained magnitude would still apply). With
full fine-tuning the caller keeps the base weights (`frozen`, taken at bind;
MLX arrays are immutable, so holding them is the copy) and they are swapped in.
"""

from __future__ import annotations

from contextlib import contextmanager

from mlx.utils import tree_flatten, tree_unflatten

from trainer_core.models import precision


def adapter_modules(model) -> list[tuple[str, object]]:
    """(name, module) of every LoRA/DoRA adapter layer (mlx-lm's: they wrap `.linear` or `.embedding`)."""
    return [(name, module) for name, module in model.named_modules()
            if "lora_a" in module and ("linear" in module or "embedding" in module)]


def frozen_base(model, config) -> dict:
    """Full fine-tuning's reference: the base weights as they are now (immutable arrays: a frozen copy), as
    the policy's forward sees them (float32 masters of a 16-bit model: in its dtype), so both compute alike."""
    dtype = precision.compute_dtype(model, config.mixed_precision)
    return precision.as_computed(dict(tree_flatten(model.parameters())), dtype)


@contextmanager
def reference_model(model, frozen: dict | None):
    """Inside the block `model` computes the reference, in eval mode: adapters removed
    (LoRA/DoRA) or the `frozen` weights swapped in (full fine-tuning). Restored on exit."""
    training = model.training
    adapters = adapter_modules(model)
    current = model.parameters() if frozen is not None and not adapters else None
    if adapters:
        model.update_modules(tree_unflatten([(n, m["linear"] if "linear" in m else m["embedding"])
                                             for n, m in adapters]))
    elif frozen is not None:
        model.update(tree_unflatten(list(frozen.items())))
    model.eval()
    try:
        yield model
    finally:
        if adapters:
            model.update_modules(tree_unflatten(adapters))
        elif current is not None:
            model.update(current)
        model.train(training)

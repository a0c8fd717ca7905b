"""Decide what trains: full weights, or LoRA / DoRA adapters on chosen modules.

The adapter layers are mlx-lm's own (`linear_to_lora_layers`), so a checkpoint's
`adapters.safetensors` + `adapter_config.json` load with
`mlx_lm.load(model, adapter_path=...)`. A quantized base gives QLoRA: the
quantized linear stays frozen under the adapter.
"""

from __future__ import annotations

import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.tuner.utils import linear_to_lora_layers

from trainer_core.errors import UserError
from trainer_core.models.attention import use_chunked_attention
from trainer_core.models.precision import keep_master_weights

LINEAR_TYPES = (nn.Linear, nn.QuantizedLinear)


def block_linear_names(model) -> list[str]:
    """Names (relative to a transformer block) of the linear layers in block 0."""
    return [name for name, module in model.layers[0].named_modules() if isinstance(module, LINEAR_TYPES)]


def is_quantized(model) -> bool:
    return any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules())


def lora_parameters(config, model) -> dict:
    """mlx-lm's `lora_parameters` dict for this config (keys checked against the model)."""
    available = block_linear_names(model)
    targets = list(config.lora.targets) or available
    unknown = [t for t in targets if t not in available]
    if unknown:
        raise UserError(
            f"lora.targets: {', '.join(unknown)} is not a linear layer of this model's blocks. "
            f"Choose from: {', '.join(available)}.", field="lora.targets")
    modules = dict(model.layers[0].named_modules())
    widest = max(min(_linear_dims(modules[t])) for t in targets)  # a rank above this adds nothing anywhere
    if config.lora.rank > widest:
        raise UserError(f"lora.rank is {config.lora.rank} but the adapted layers are at most {widest} wide; "
                        f"use at most {widest} (8 to 64 is typical).", field="lora.rank")
    return {"rank": config.lora.rank, "scale": config.lora.alpha / config.lora.rank,
            "dropout": config.lora.dropout, "keys": targets}


def _linear_dims(module) -> tuple[int, int]:
    """(output, input) features of a linear layer (a quantized weight packs 32 // bits values per word)."""
    out, packed = module.weight.shape
    return out, packed * 32 // module.bits if isinstance(module, nn.QuantizedLinear) else packed


def num_adapted_layers(config, model) -> int:
    total = len(model.layers)
    n = config.lora.num_layers
    if n > total:
        raise UserError(f"lora.num_layers is {n} but the model has {total} blocks; use -1 for all.", field="lora.num_layers")
    return total if n == -1 else n


def prepare_for_training(model, config) -> dict:
    """Freeze/unfreeze `model` for `config`'s fine-tune type; return the adapter_config dict.

    full: every float parameter trains (a quantized base is refused: load it dequantized); a 16-bit model
    gets float32 master weights with `[precision] master_weights = "fp32"` (precision.py).
    lora/dora: the base is frozen and adapters are added to the last `num_layers` blocks.
    Either way its attention runs in chunks of query rows on the CPU (attention.py: the scores of long rows
    never exist whole; same values).
    """
    use_chunked_attention(model)
    kind = config.resolved_fine_tune_type
    if kind == "full":
        if is_quantized(model):
            raise UserError("Full fine-tuning needs float weights but this model is quantized; "
                            "use LoRA (QLoRA) or load a float model.", field="fine_tune_type")
        model.unfreeze()
        return {"fine_tune_type": "full", "num_layers": len(model.layers),
                **keep_master_weights(model, config.precision.master_weights)}
    params = lora_parameters(config, model)
    num_layers = num_adapted_layers(config, model)
    model.freeze()
    linear_to_lora_layers(model, num_layers, params, use_dora=(kind == "dora"))
    return {"fine_tune_type": kind, "num_layers": num_layers, "lora_parameters": params}


def trainable_count(model) -> int:
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))

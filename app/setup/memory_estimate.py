"""Estimated memory a run needs: weights + trainable copies + optimizer + activations.

An estimate from metadata only (ModelInfo and the dataset's longest example),
meant to warn before a run that cannot fit, not to predict the peak exactly:

  weights      parameters x bytes per weight (quantized: bits/8 plus group scales); full fine-tuning
               of a (16-bit) model: float32 masters + the 16-bit copy it computes with, or 16-bit
               weights alone with [precision] master_weights = stochastic_rounding / none
  adapters     LoRA: rank x (in + out) for each adapted linear, float32
  gradients + optimizer   trainable x 4 bytes x 3 (gradient, AdamW m and v)
  activations  batch x tokens x hidden x layers x ACTIVATION_BYTES (gradient checkpointing:
               x (layers x 4 + ACTIVATION_BYTES), the blocks' inputs plus one block)
               + logits batch x tokens x vocab x 4 bytes x 3 (logits, softmax, gradient)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

FULL_FINETUNING_BYTES = {"fp32": 4.0 + 2.0, "stochastic_rounding": 2.0, "none": 2.0}  # by master_weights
ACTIVATION_BYTES = 64  # per token, per hidden unit, per layer, kept for the backward pass (float32, ~16 tensors)
LLAMA_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass
class MemoryEstimate:
    weights: float      # bytes
    adapters: float
    optimizer: float    # gradients + AdamW moments
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.adapters + self.optimizer + self.activations


def bytes_per_weight(quantization: str, full: bool) -> float:
    """Bytes per stored weight: float32 when fully fine-tuned, else from the quantization label."""
    label = quantization.upper()
    if full or label in ("F32", "FLOAT32"):
        return 4.0
    found = re.search(r"Q(\d+)|(\d+)-BIT", label)
    if found:
        return int(found.group(1) or found.group(2)) / 8 + 4 / 32  # + a 16-bit scale and bias per 32
    return 2.0  # float16 / bfloat16


def _linear_shapes(info) -> dict[str, tuple[int, int]]:
    """(in, out) of each llama-style block linear, inferred from the parameter count."""
    h, layers = info.hidden_size, max(1, info.num_layers)
    per_layer = max(0, info.num_parameters - info.vocab_size * h) / layers
    intermediate = max(h, (per_layer - 4 * h * h) / (3 * h))
    return {"self_attn.q_proj": (h, h), "self_attn.k_proj": (h, h), "self_attn.v_proj": (h, h),
            "self_attn.o_proj": (h, h), "mlp.gate_proj": (h, intermediate), "mlp.up_proj": (h, intermediate),
            "mlp.down_proj": (intermediate, h)}


def estimate(info, config, longest_tokens: int | None = None) -> MemoryEstimate:
    """Bytes for `config` on the model described by `info` (a ModelInfo)."""
    kind = config.resolved_fine_tune_type
    full = kind == "full"
    weights = info.num_parameters * bytes_per_weight(info.quantization, full)
    if full:
        weights = info.num_parameters * FULL_FINETUNING_BYTES.get(config.precision.master_weights, 4.0)
        trainable = info.num_parameters
        adapters = 0.0
    else:
        shapes = _linear_shapes(info)
        targets = config.lora.targets or list(LLAMA_LINEARS)
        layers = info.num_layers if config.lora.num_layers == -1 else min(config.lora.num_layers, info.num_layers)
        per_layer = sum(config.lora.rank * (i + o) * (2 if kind == "dora" else 1)
                        for name, (i, o) in shapes.items() if name in targets)
        trainable = per_layer * layers
        adapters = trainable * 4.0
    optimizer = trainable * 4.0 * 3
    tokens = config.batch_size * min(longest_tokens or config.max_seq_length, config.max_seq_length)
    # gradient checkpointing keeps each block's input (4 bytes a unit) and one block's full activations
    per_unit = (info.num_layers * 4 + ACTIVATION_BYTES) if config.gradient_checkpointing else \
        info.num_layers * ACTIVATION_BYTES
    activations = tokens * (info.hidden_size * per_unit + info.vocab_size * 4 * 3)
    return MemoryEstimate(weights, adapters, optimizer, activations)


def machine_memory() -> int:
    """Physical memory in bytes (0 if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def gigabytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"

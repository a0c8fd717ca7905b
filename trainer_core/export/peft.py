"""Hugging Face PEFT export: mlx-lm LoRA/DoRA adapters -> adapter_model.safetensors + adapter_config.json.

Names and shapes (mlx-lm -> PEFT, for a module M such as model.layers.3.self_attn.q_proj):
    M.lora_a  [in, r]  -> base_model.model.M.lora_A.weight         [r, in]   (transposed)
    M.lora_b  [r, out] -> base_model.model.M.lora_B.weight         [out, r]  (transposed)
    M.m       [out]    -> base_model.model.M.lora_magnitude_vector [out]     (DoRA)
Both compute W x + scale * B A x (DoRA: rescaled row-wise to the magnitude m), with
PEFT's lora_alpha = scale * r, so `PeftModel.from_pretrained(AutoModelForCausalLM(base),
folder)` reproduces the trained model. mlx-lm adapts the last `num_layers` blocks; PEFT
is told which through layers_to_transform when that is not all of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
from trainer_core.training.checkpoint import WEIGHTS
from trainer_core.errors import UserError

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
# mlx-lm adapter leaf -> (PEFT leaf, transpose?)
PEFT_LEAVES = {"lora_a": ("lora_A.weight", True), "lora_b": ("lora_B.weight", True),
               "m": ("lora_magnitude_vector", False)}
# Where PEFT users find the demo model (our demo is its GGUF; the weights are in HF layout).
DEMO_HF_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"


def peft_name(name: str) -> str:
    """One mlx-lm adapter parameter name -> its PEFT state-dict key (ValueError if not an adapter)."""
    module, _, leaf = name.rpartition(".")
    if leaf not in PEFT_LEAVES or not module:
        raise ValueError(f"{name!r} is not a LoRA/DoRA adapter parameter")
    return f"{PEFT_PREFIX}{module}.{PEFT_LEAVES[leaf][0]}"


def peft_state_dict(weights: dict) -> dict:
    """mlx-lm adapter arrays -> the PEFT state dict (renamed, lora_A/lora_B transposed)."""
    out = {}
    for name, value in weights.items():
        key = peft_name(name)
        out[key] = value.T if PEFT_LEAVES[name.rpartition(".")[2]][1] else value
    return out


def adapted_layers(weights: dict) -> list[int]:
    """Indices of the transformer blocks (model.layers.N) the adapters sit in."""
    layers = set()
    for name in weights:
        parts = name.split(".")
        if "layers" in parts and parts.index("layers") + 1 < len(parts):
            index = parts[parts.index("layers") + 1]
            if index.isdigit():
                layers.add(int(index))
    return sorted(layers)


def target_modules(keys: list[str]) -> list[str]:
    """mlx-lm lora keys ("self_attn.q_proj") -> PEFT target_modules: the leaf names
    ("q_proj"), or the dotted names when two keys share a leaf."""
    leaves = [key.rpartition(".")[2] for key in keys]
    return sorted(leaves) if len(set(leaves)) == len(leaves) else sorted(keys)


def peft_config(adapter_config: dict, layers: list[int], total_layers: int | None,
                base_name: str | None) -> dict:
    """PEFT's adapter_config.json for our adapter_config.json.

    `layers`: the adapted block indices; `total_layers`: the base's block count when known
    (layers_to_transform is left out when every block is adapted).
    """
    params = adapter_config["lora_parameters"]
    rank, scale = int(params["rank"]), float(params["scale"])
    all_layers = total_layers is not None and layers == list(range(total_layers))
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": rank, "lora_alpha": scale * rank, "lora_dropout": float(params.get("dropout", 0.0)),
        "target_modules": target_modules(list(params["keys"])),
        "layers_to_transform": None if all_layers else layers,
        "layers_pattern": None if all_layers else "layers",
        "use_dora": adapter_config.get("fine_tune_type") == "dora",
        "use_rslora": False, "bias": "none", "fan_in_fan_out": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
        "rank_pattern": {}, "alpha_pattern": {}, "revision": None,
    }


def _base_description(base: str | None) -> tuple[str | None, int | None]:
    """(base_model_name_or_path, number of blocks) for the base, as far as it can be read."""
    from trainer_core.models.loading import demo_model_available, read_model_info, resolve_model_path

    if not base:
        return None, None
    name = str(base)
    if base == "demo" or (demo_model_available() and Path(base) == resolve_model_path("demo")):
        name = DEMO_HF_REPO
    try:
        return name, read_model_info(str(base)).num_layers
    except UserError:  # the base is not here: the layer list stays explicit
        return name, None


def write_peft(checkpoint: Path, adapter_config: dict, folder: Path, base: str | None) -> None:
    """Write adapter_model.safetensors + adapter_config.json (PEFT) into `folder`."""
    import mlx.core as mx

    weights = mx.load(str(Path(checkpoint) / WEIGHTS))
    try:
        state = peft_state_dict(weights)
    except ValueError as e:
        raise UserError(f"{Path(checkpoint) / WEIGHTS} holds {e}; it is not a LoRA/DoRA "
                        "checkpoint of this program. Export another checkpoint.") from None
    name, total = _base_description(base)
    config = peft_config(adapter_config, adapted_layers(weights), total, name)
    mx.save_safetensors(str(folder / PEFT_WEIGHTS), state, metadata={"format": "pt"})
    (folder / PEFT_CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")

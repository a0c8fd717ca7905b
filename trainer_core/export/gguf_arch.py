"""What each architecture looks like in a llama.cpp GGUF: its name, hyper-parameters and tensors.

    architecture(model_type, source) -> Arch          (UserError for one llama.cpp cannot run)
    write_hyperparameters(writer, arch, config, rows)  the `<arch>.*` keys
    gguf_tensors(model, arch, config) -> [(name, shape, () -> float32 ndarray)]

Tensor names come from the `gguf` package's TensorNameMap (llama.cpp's own HF -> GGUF table,
which mlx-lm's parameter names follow). What that table does not say is written here, after
llama.cpp's convert_hf_to_gguf.py: the Q/K rows of llama/mistral are permuted to llama.cpp's
interleaved rope pairs, Gemma's RMSNorm weights are stored as 1 + w (llama.cpp multiplies by
the stored weight; HF and mlx-lm by 1 + w), a tied output matrix is not written, and Llama 3's
rope scaling becomes a `rope_freqs` tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import gguf
import mlx.core as mx
from mlx.utils import tree_flatten

from trainer_core.errors import UserError


@dataclass(frozen=True)
class Arch:
    gguf_arch: gguf.MODEL_ARCH
    permute_qk: bool = False      # llama.cpp's llama loader wants interleaved rope pairs
    norm_shift: float = 0.0       # added to every "*norm.weight" (Gemma: 1 + w)
    prefix: str = ""              # mlx-lm parameter prefix to drop (Gemma 3's language_model.)


ARCHITECTURES = {
    "llama": Arch(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "mistral": Arch(gguf.MODEL_ARCH.LLAMA, permute_qk=True),  # llama.cpp runs Mistral as llama
    "qwen2": Arch(gguf.MODEL_ARCH.QWEN2),
    "qwen3": Arch(gguf.MODEL_ARCH.QWEN3),
    "gemma2": Arch(gguf.MODEL_ARCH.GEMMA2, norm_shift=1.0),
    "gemma3_text": Arch(gguf.MODEL_ARCH.GEMMA3, norm_shift=1.0),
    "gemma3": Arch(gguf.MODEL_ARCH.GEMMA3, norm_shift=1.0, prefix="language_model."),
    "phi3": Arch(gguf.MODEL_ARCH.PHI3),
}


def architecture(model_type: str, source: str) -> Arch:
    """The Arch of `model_type`; UserError naming the supported ones otherwise."""
    if model_type not in ARCHITECTURES:
        raise UserError(f"The model {source} is a {model_type!r} model; GGUF export supports "
                        f"{', '.join(ARCHITECTURES)}. Export 'fused' and convert that folder with "
                        "llama.cpp's convert_hf_to_gguf.py.")
    return ARCHITECTURES[model_type]


def text_config(config: dict) -> dict:
    """The language model's settings (Gemma 3's multimodal config nests them in text_config)."""
    return {**config, **(config.get("text_config") or {})}


def _rope_scaling(config: dict) -> dict:
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    return {} if kind == "default" else {**scaling, "kind": kind}


def check_rope_scaling(arch: Arch, config: dict, source: str) -> None:
    kind = _rope_scaling(text_config(config)).get("kind")
    allowed = ("linear", "llama3") if arch.gguf_arch == gguf.MODEL_ARCH.LLAMA else ("linear",)
    if kind and kind not in allowed:
        raise UserError(f"The model {source} uses {kind!r} rope scaling, which this GGUF export "
                        "does not write. Export 'fused' and convert that folder with llama.cpp's "
                        "convert_hf_to_gguf.py.")


def head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def write_hyperparameters(writer: gguf.GGUFWriter, arch: Arch, config: dict, rows: int) -> None:
    """The `<arch>.*` keys llama.cpp reads for this architecture (convert_hf_to_gguf.py's set)."""
    config = text_config(config)
    heads = config["num_attention_heads"]
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_rope_freq_base(config.get("rope_theta", 1e6 if arch.norm_shift else 1e4))
    writer.add_key_length(head_dim(config))
    writer.add_value_length(head_dim(config))
    writer.add_vocab_size(rows)
    rotary = config.get("partial_rotary_factor", 1.0)
    writer.add_rope_dimension_count(int(rotary * config["hidden_size"]) // heads
                                    if arch.gguf_arch == gguf.MODEL_ARCH.PHI3 else head_dim(config))
    if _rope_scaling(config).get("kind") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(config["rope_scaling"]["factor"]))
    if arch.gguf_arch == gguf.MODEL_ARCH.GEMMA2:
        writer.add_attn_logit_softcapping(config.get("attn_logit_softcapping", 50.0))
        writer.add_final_logit_softcapping(config.get("final_logit_softcapping", 30.0))
    if arch.gguf_arch in (gguf.MODEL_ARCH.GEMMA2, gguf.MODEL_ARCH.GEMMA3):
        writer.add_sliding_window(config.get("sliding_window") or 4096)
    if arch.gguf_arch == gguf.MODEL_ARCH.PHI3:
        writer.add_rope_scaling_orig_ctx_len(config.get("original_max_position_embeddings", 4096))
        writer.add_sliding_window(config.get("sliding_window") or 0)


def permute_qk(x: np.ndarray, n_heads: int) -> np.ndarray:
    """HF rotate-half rows -> llama.cpp's interleaved pairs (convert_hf_to_gguf's LlamaModel.permute)."""
    rows = x.shape[0]
    return x.reshape(n_heads, 2, rows // n_heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def llama3_rope_factors(config: dict) -> np.ndarray:
    """Llama 3's per-frequency rope divisors, as convert_hf_to_gguf.py computes `rope_freqs`."""
    scaling, dim, base = config["rope_scaling"], head_dim(config), config.get("rope_theta", 10000.0)
    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_context = scaling.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)):
        wavelength = 2 * math.pi / freq
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def gguf_tensors(model, arch: Arch, config: dict) -> list[tuple[str, tuple, Callable[[], np.ndarray]]]:
    """Every parameter of a fused float model as (llama.cpp name, shape, () -> float32 array).

    The arrays are made one at a time when asked for, so a large model is never held twice.
    """
    config = text_config(config)
    names = gguf.get_tensor_name_map(arch.gguf_arch, config["num_hidden_layers"])
    heads = {"self_attn.q_proj.weight": config["num_attention_heads"],
             "self_attn.k_proj.weight": config.get("num_key_value_heads") or config["num_attention_heads"]}
    permute = arch.permute_qk and not config.get("rope_traditional", False)

    def converter(name: str, value: mx.array) -> Callable[[], np.ndarray]:
        n_heads = next((n for key, n in heads.items() if name.endswith(key)), None)

        def convert() -> np.ndarray:
            data = np.array(value.astype(mx.float32))
            if permute and n_heads:
                data = permute_qk(data, n_heads)
            if arch.norm_shift and name.endswith("norm.weight"):
                data = data + np.float32(arch.norm_shift)
            return data
        return convert

    tensors = []
    for name, value in tree_flatten(model.parameters()):
        if not mx.issubdtype(value.dtype, mx.floating):
            raise UserError(f"The weight {name} is not a float array ({value.dtype}); the model "
                            "must be fused with dequantize before GGUF export.")
        gguf_name = names.get_name(name.removeprefix(arch.prefix), try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UserError(f"The {config.get('model_type')} model holds {name!r}, which llama.cpp's "
                            f"{arch.gguf_arch.name.lower()} architecture has no tensor for; export "
                            "'fused' instead.")
        tensors.append((gguf_name, tuple(value.shape), converter(name, value)))
    if _rope_scaling(config).get("kind") == "llama3":
        factors = llama3_rope_factors(config)
        tensors.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors.shape,
                        lambda: factors))
    return tensors

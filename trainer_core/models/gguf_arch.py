"""What each GGUF architecture needs to become an mlx-lm model.

A GGUF holds llama.cpp's metadata (`<arch>.embedding_length`, ...) and tensor names
(`blk.0.attn_q.weight`, ...). This module rebuilds the Hugging Face config.json the file was
converted from (which is what mlx-lm builds its model classes from, and what exports write),
and states the two weight changes llama.cpp's converter (convert_hf_to_gguf.py) makes that
loading must undo: llama's Q/K row permutation and Gemma's "+1" on every norm weight.
Tensor names are translated with the `gguf` package's own TensorNameMap, not a table of ours.

Mistral files are `llama` files (llama.cpp converts MistralForCausalLM as llama).
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer_core.errors import UserError
from trainer_core.models.hf_config import sliding_window_period


@dataclass(frozen=True)
class Arch:
    model_type: str                 # mlx-lm / Hugging Face model_type
    hf_class: str                   # config.json "architectures"
    permuted_qk: bool = False       # llama.cpp permuted Q/K rows for interleaved rope
    norm_shift: float = 0.0         # llama.cpp stored norm weights + this (Gemma's 1 + w)


ARCHITECTURES = {
    "llama": Arch("llama", "LlamaForCausalLM", permuted_qk=True),
    "qwen2": Arch("qwen2", "Qwen2ForCausalLM"),
    "qwen3": Arch("qwen3", "Qwen3ForCausalLM"),
    "gemma2": Arch("gemma2", "Gemma2ForCausalLM", norm_shift=1.0),
    "gemma3": Arch("gemma3_text", "Gemma3ForCausalLM", norm_shift=1.0),
    "phi3": Arch("phi3", "Phi3ForCausalLM"),
}
SUPPORTED_NAMES = "llama (also Mistral, SmolLM, TinyLlama), qwen2, qwen3, gemma2, gemma3, phi3"
# llama.cpp hard-codes these for Gemma 3 (llama-model.cpp) rather than storing them.
_GEMMA3_SWA_PATTERN, _GEMMA3_LOCAL_ROPE_BASE = 6, 10000.0
# Llama 3.1's rope-scaling constants; the file stores their effect (rope_freqs), not them.
_LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

REQUIRED_KEYS = ("embedding_length", "block_count", "attention.head_count",
                 "feed_forward_length")


def architecture(metadata: dict, path) -> tuple[str, Arch]:
    """The file's `general.architecture` and what we do with it; UserError if unsupported."""
    name = metadata.get("general.architecture")
    if name not in ARCHITECTURES:
        raise UserError(f"The GGUF file {path} holds a {name!r} model, which cannot be trained "
                        f"here. Supported GGUF architectures: {SUPPORTED_NAMES}. For another "
                        "architecture use its Hugging Face folder or id.")
    return name, ARCHITECTURES[name]


def _f32(x) -> float:
    """A float32 metadata value as the short decimal a config.json would hold."""
    return float(f"{float(x):.7g}")


def hf_config(metadata: dict, tensors: dict, small_tensor, path) -> dict:
    """The Hugging Face config.json this GGUF was converted from.

    `tensors` maps names to (shape, type); `small_tensor(name)` reads one small float tensor
    (rope factors) as a list.
    """
    name, arch = architecture(metadata, path)

    def md(key, default=None):
        return metadata.get(f"{name}.{key}", default)

    n_head = md("attention.head_count")
    hidden = md("embedding_length")
    n_kv = md("attention.head_count_kv", n_head)
    if not isinstance(n_kv, int):
        raise UserError(f"The GGUF file {path} has a different number of KV heads per layer, "
                        "which the mlx-lm model classes do not support.")
    head_dim = md("attention.key_length", hidden // n_head)
    rope_dims = md("rope.dimension_count", head_dim)
    cfg = {
        "architectures": [arch.hf_class], "model_type": arch.model_type,
        "hidden_size": hidden, "intermediate_size": md("feed_forward_length"),
        "num_hidden_layers": md("block_count"), "num_attention_heads": n_head,
        "num_key_value_heads": n_kv, "head_dim": head_dim,
        "rms_norm_eps": _f32(md("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": _f32(md("rope.freq_base", 10000.0)),
        "max_position_embeddings": md("context_length", 2048),
        "vocab_size": tensors["token_embd.weight"][0][0],
        "tie_word_embeddings": "output.weight" not in tensors,
        "torch_dtype": "float32",
    }
    if rope_dims != head_dim and name != "phi3":
        raise UserError(f"The GGUF file {path} uses partial rotary embeddings ({rope_dims} of "
                        f"{head_dim} dimensions), which the {name} model class does not support.")
    scaling = md("rope.scaling.type", "none")
    if scaling == "linear":
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": _f32(md("rope.scaling.factor"))}
    elif scaling not in ("none", "longrope") and not (scaling == "yarn" and name == "qwen2"):
        raise UserError(f"The GGUF file {path} uses {scaling!r} rope scaling, which is not "
                        "supported here; use the Hugging Face folder of this model instead.")
    _ARCH_EXTRAS[name](cfg, md, tensors, small_tensor)
    for key, ggml_key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
        if f"tokenizer.ggml.{ggml_key}_token_id" in metadata:
            cfg[f"{key}_token_id"] = metadata[f"tokenizer.ggml.{ggml_key}_token_id"]
    return cfg


def _llama(cfg, md, tensors, small_tensor):
    cfg["attention_bias"] = "blk.0.attn_q.bias" in tensors
    cfg["mlp_bias"] = "blk.0.ffn_up.bias" in tensors
    cfg["hidden_act"] = "silu"
    if "rope_freqs.weight" in tensors:  # Llama 3.1+: loading copies the exact factors in
        factors = small_tensor("rope_freqs.weight")
        cfg["rope_scaling"] = {"rope_type": "llama3", "factor": _f32(max(factors)), **_LLAMA3_ROPE}


def _qwen(cfg, md, tensors, small_tensor):
    cfg["hidden_act"] = "silu"
    if md("rope.scaling.type") == "yarn":
        cfg["rope_scaling"] = {"rope_type": "yarn", "factor": _f32(md("rope.scaling.factor")),
                               "original_max_position_embeddings":
                                   md("rope.scaling.original_context_length")}


def _gemma_attention_scale(cfg, md, layers_27b: int):
    # llama.cpp: the 27B models scale queries by hidden/heads, the others by head_dim.
    if cfg["num_hidden_layers"] == layers_27b:
        return cfg["hidden_size"] // cfg["num_attention_heads"]
    return cfg["head_dim"]


def _gemma2(cfg, md, tensors, small_tensor):
    cfg.update(hidden_activation="gelu_pytorch_tanh",
               attn_logit_softcapping=_f32(md("attn_logit_softcapping", 50.0)),
               final_logit_softcapping=_f32(md("final_logit_softcapping", 30.0)),
               query_pre_attn_scalar=_gemma_attention_scale(cfg, md, 46),
               sliding_window=md("attention.sliding_window", 4096))


def _gemma3(cfg, md, tensors, small_tensor):
    pattern = md("attention.sliding_window_pattern", _GEMMA3_SWA_PATTERN)
    if isinstance(pattern, list):  # per layer, True = sliding
        pattern = sliding_window_period(pattern, "This Gemma 3 GGUF file")
    cfg.update(hidden_activation="gelu_pytorch_tanh",
               query_pre_attn_scalar=_gemma_attention_scale(cfg, md, 62),
               sliding_window=md("attention.sliding_window", 512),
               sliding_window_pattern=pattern,
               rope_local_base_freq=_f32(md("rope.freq_base_swa", _GEMMA3_LOCAL_ROPE_BASE)))


def _phi3(cfg, md, tensors, small_tensor):
    cfg["hidden_act"] = "silu"
    cfg["partial_rotary_factor"] = md("rope.dimension_count", cfg["head_dim"]) / cfg["head_dim"]
    original = md("rope.scaling.original_context_length")
    if original:
        cfg["original_max_position_embeddings"] = original
    if "rope_factors_long.weight" in tensors:  # Phi-3 128k: LongRoPE factors are tensors
        cfg["rope_scaling"] = {"type": "longrope",
                               "long_factor": small_tensor("rope_factors_long.weight"),
                               "short_factor": small_tensor("rope_factors_short.weight")}


_ARCH_EXTRAS = {"llama": _llama, "qwen2": _qwen, "qwen3": _qwen, "gemma2": _gemma2,
                "gemma3": _gemma3, "phi3": _phi3}

# Tensors a file may carry that are not model parameters: loading uses them itself.
ROPE_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")

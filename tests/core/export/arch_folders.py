"""Tiny random Hugging Face folders of every architecture GGUF export supports, built with
mlx-lm's own model classes and the tiny byte-level BPE tokenizer of tests/tiny_model.py."""

from __future__ import annotations

import json
from pathlib import Path

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.utils import _get_classes

from tests.tiny_model import write_tokenizer

COMMON = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "num_attention_heads": 4,
          "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "max_position_embeddings": 1024,
          "rope_theta": 10000.0}
# model_type -> settings beyond COMMON (each exercises what its architecture adds)
ARCH_CONFIGS = {
    "llama": {"tie_word_embeddings": False},
    "mistral": {"tie_word_embeddings": False, "sliding_window": None},
    "qwen2": {"tie_word_embeddings": True},
    "qwen3": {"tie_word_embeddings": True, "head_dim": 32},
    "gemma2": {"head_dim": 16, "query_pre_attn_scalar": 16, "attn_logit_softcapping": 50.0,
               "final_logit_softcapping": 30.0, "sliding_window": 512},
    "gemma3_text": {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 512,
                    "sliding_window_pattern": 2, "rope_local_base_freq": 10000.0},
    "phi3": {"tie_word_embeddings": False, "partial_rotary_factor": 0.5,
             "original_max_position_embeddings": 512},
}


def make_arch_folder(folder: Path, model_type: str, seed: int = 0, **overrides) -> Path:
    """Write a random `model_type` model (float32) with a tokenizer into `folder`; return it."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(folder, 512)
    config = {"model_type": model_type, **COMMON, **ARCH_CONFIGS[model_type], "vocab_size": vocab,
              "eos_token_id": 2, **overrides}
    model_class, args_class = _get_classes(config)
    mx.random.seed(seed)
    model = model_class(args_class.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    if model_type == "gemma3_text":  # tied: the HF folder has no lm_head (mlx-lm's sanitize drops it)
        weights.pop("lm_head.weight")
    # spread the norms away from 0 / 1 so a missing Gemma "+1" shows
    weights = {k: (v + mx.random.uniform(-0.5, 0.5, v.shape) if k.endswith("norm.weight") else v)
               for k, v in weights.items()}
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return folder

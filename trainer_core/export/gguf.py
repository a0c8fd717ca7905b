"""GGUF export: a fused float llama-family model written as one llama.cpp GGUF file.

The inverse of gguf.py's loader. Tensors take llama.cpp's names and layout: matrices in
F16 or F32 (`TENSOR_TYPES`), norms and biases in F32, and the Q/K rows of each head
permuted back to llama.cpp's interleaved rope pairs (convert_hf_to_gguf.py's
`LlamaModel.permute`). Metadata: the `llama.*` hyper-parameters, the byte-level BPE
tokenizer (tokens, types, merges, special ids, pre-tokenizer name) and the chat template.
`mx.save_gguf` writes the file: it types metadata from mx arrays (uint32, int32, float32,
bool), strings and string lists, which is all llama.cpp's llama loader reads.

Only what both llama.cpp and our loader take is exported: model_type llama/mistral, no rope
scaling other than linear, a byte-level BPE tokenizer (SentencePiece-style tokenizers are
refused: convert the fused folder with llama.cpp's convert_hf_to_gguf.py instead).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx
from mlx.utils import tree_flatten

from trainer_core.models import gguf
from trainer_core.errors import UserError

# export.GGUF_TYPES name -> (dtype of the matrices, general.file_type: llama.cpp's LLAMA_FTYPE_*)
TENSOR_TYPES = {"f16": (mx.float16, 1), "f32": (mx.float32, 0)}
# Descriptive general.* keys carried over from a GGUF base (its license above all).
CARRIED_GENERAL_KEYS = ("general.license", "general.organization", "general.basename",
                        "general.size_label", "general.languages")
# llama.cpp token types
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

_BLOCK_TO_GGUF = {mlx: name for name, mlx in gguf._BLOCK_NAMES.items()}
_TOP_TO_GGUF = {mlx: name for name, mlx in gguf._TOP_NAMES.items()}


def gguf_tensor_name(name: str) -> str:
    """mlx-lm parameter name -> llama.cpp tensor name (ValueError if a llama has none)."""
    module, _, suffix = name.rpartition(".")
    parts = module.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _BLOCK_TO_GGUF:
        return f"blk.{parts[2]}.{_BLOCK_TO_GGUF[parts[3]]}.{suffix}"
    if module in _TOP_TO_GGUF:
        return f"{_TOP_TO_GGUF[module]}.{suffix}"
    raise ValueError(f"{name!r} has no llama.cpp tensor name")


def permute_qk(x: mx.array, n_heads: int) -> mx.array:
    """HF rotate-half rows -> llama.cpp's interleaved pairs (inverse of gguf.unpermute_qk)."""
    rows = x.shape[0]
    return x.reshape(n_heads, 2, rows // n_heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def check_architecture(model_type: str, source: str) -> None:
    """UserError unless llama.cpp's llama architecture (and our loader) can hold `model_type`."""
    if model_type not in ("llama", "mistral"):
        raise UserError(f"The model {source} is a {model_type!r} model; GGUF export supports "
                        "llama-family models (Llama, SmolLM, Mistral, TinyLlama). Export 'fused' "
                        "and convert that folder with llama.cpp's convert_hf_to_gguf.py.")


def check_rope_scaling(config: dict, source: str) -> None:
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("type", scaling.get("rope_type"))
    if scaling and kind not in ("linear", "default"):
        raise UserError(f"The model {source} uses {kind!r} rope scaling, which this GGUF export "
                        "does not write. Export 'fused' and convert that folder with llama.cpp's "
                        "convert_hf_to_gguf.py.")


def _u32(v) -> mx.array:
    return mx.array(int(v), dtype=mx.uint32)


def _f32(v) -> mx.array:
    return mx.array(float(v), dtype=mx.float32)


def model_metadata(config: dict, name: str, file_type: int) -> dict:
    """general.* and llama.* keys for an HF-style llama config."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    md = {
        "general.architecture": "llama", "general.type": "model", "general.name": name,
        "general.file_type": _u32(file_type),
        "llama.context_length": _u32(config.get("max_position_embeddings", 2048)),
        "llama.embedding_length": _u32(config["hidden_size"]),
        "llama.block_count": _u32(config["num_hidden_layers"]),
        "llama.feed_forward_length": _u32(config["intermediate_size"]),
        "llama.attention.head_count": _u32(heads),
        "llama.attention.head_count_kv": _u32(config.get("num_key_value_heads") or heads),
        "llama.attention.layer_norm_rms_epsilon": _f32(config.get("rms_norm_eps", 1e-5)),
        "llama.rope.freq_base": _f32(config.get("rope_theta", 10000.0)),
        "llama.rope.dimension_count": _u32(head_dim),
        "llama.vocab_size": _u32(config["vocab_size"]),
    }
    if head_dim != config["hidden_size"] // heads:
        md["llama.attention.key_length"] = md["llama.attention.value_length"] = _u32(head_dim)
    scaling = config.get("rope_scaling") or {}
    if scaling.get("type", scaling.get("rope_type")) == "linear":
        md["llama.rope.scaling.type"] = "linear"
        md["llama.rope.scaling.factor"] = _f32(scaling["factor"])
    return md


def _pre_tokenizer_name(spec: dict | None) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a tokenizer.json pre_tokenizer (see gguf.py)."""
    if spec and spec.get("type") == "ByteLevel" and spec.get("use_regex", True):
        return "gpt2"
    parts = (spec or {}).get("pretokenizers") or []
    kinds = [p.get("type") for p in parts]
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and parts[0].get("pattern", {}).get("Regex") == gguf._LLAMA3_REGEX:
        return "llama-bpe"
    warnings.warn("The tokenizer's pre-tokenizer is not one llama.cpp is known to name here; "
                  "the GGUF says 'default', which may split some text differently.", stacklevel=3)
    return "default"


def _is_byte_level(spec: dict) -> bool:
    decoder = spec.get("decoder") or {}
    decoders = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return spec.get("model", {}).get("type") == "BPE" and any(
        d.get("type") == "ByteLevel" for d in decoders)


def tokenizer_metadata(tokenizer, vocab_rows: int, source: str, gguf_source: dict | None = None) -> dict:
    """tokenizer.* keys for an HF byte-level BPE tokenizer, padded to the embedding's rows.

    `gguf_source`: the base's own GGUF metadata, whose pre-tokenizer name is kept.
    """
    hf = getattr(tokenizer, "_tokenizer", tokenizer)  # TokenizerWrapper -> HF tokenizer
    spec = json.loads(hf.backend_tokenizer.to_str())
    if not _is_byte_level(spec):
        raise UserError(f"The tokenizer of {source} is not a byte-level BPE tokenizer (it is "
                        f"{spec.get('model', {}).get('type')!r}, e.g. SentencePiece-style), which this "
                        "GGUF export cannot describe. Export 'fused' and convert that folder with "
                        "llama.cpp's convert_hf_to_gguf.py.")
    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    types = {}
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    if by_id and max(by_id) >= vocab_rows:
        raise UserError(f"The tokenizer of {source} has token id {max(by_id)} but the model's "
                        f"embedding has only {vocab_rows} rows; the model and tokenizer do not match.")
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_rows)]
    token_types = [types.get(i, NORMAL if i in by_id else UNUSED) for i in range(vocab_rows)]
    pre = (gguf_source or {}).get("tokenizer.ggml.pre") or _pre_tokenizer_name(spec.get("pre_tokenizer"))
    pre_spec = spec.get("pre_tokenizer") or {}
    byte_level = [p for p in pre_spec.get("pretokenizers", [pre_spec]) if p.get("type") == "ByteLevel"]
    md = {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": mx.array(token_types, dtype=mx.int32),
        "tokenizer.ggml.merges": [m if isinstance(m, str) else " ".join(m)
                                  for m in spec["model"].get("merges", [])],
        "tokenizer.ggml.add_space_prefix": mx.array(
            bool(byte_level and byte_level[0].get("add_prefix_space", False))),
    }
    for key, token_id in (("bos", hf.bos_token_id), ("eos", hf.eos_token_id),
                          ("unknown", hf.unk_token_id), ("padding", hf.pad_token_id)):
        if token_id is not None:
            md[f"tokenizer.ggml.{key}_token_id"] = _u32(token_id)
    probe = hf.encode("a")
    md["tokenizer.ggml.add_bos_token"] = mx.array(bool(
        hf.bos_token_id is not None and probe[:1] == [hf.bos_token_id]))
    md["tokenizer.ggml.add_eos_token"] = mx.array(bool(
        hf.eos_token_id is not None and len(probe) > 1 and probe[-1] == hf.eos_token_id))
    if isinstance(getattr(hf, "chat_template", None), str):
        md["tokenizer.chat_template"] = hf.chat_template
    return md


def gguf_tensors(model, config: dict, dtype) -> dict:
    """llama.cpp name -> array: matrices in `dtype`, vectors in float32, Q/K permuted."""
    heads = {"self_attn.q_proj": config["num_attention_heads"],
             "self_attn.k_proj": config.get("num_key_value_heads") or config["num_attention_heads"]}
    permute = not config.get("rope_traditional", False)  # traditional rope: already interleaved
    tensors = {}
    for name, value in tree_flatten(model.parameters()):
        if not mx.issubdtype(value.dtype, mx.floating):
            raise UserError(f"The weight {name} is not a float array ({value.dtype}); the model "
                            "must be fused with dequantize before GGUF export.")
        module = name.rpartition(".")[0]
        n_heads = next((n for key, n in heads.items() if module.endswith(key)), None)
        if permute and n_heads:
            value = permute_qk(value, n_heads)
        try:
            gguf_name = gguf_tensor_name(name)
        except ValueError as e:
            raise UserError(f"The model {config.get('model_type')} holds {e}, so it is not a plain "
                            "llama model; export 'fused' instead.") from None
        tensors[gguf_name] = value.astype(dtype if value.ndim >= 2 else mx.float32)
    return tensors


def _carried_general(base_md: dict) -> dict:
    """CARRIED_GENERAL_KEYS of a base GGUF that hold text (or a non-empty list of text)."""
    def is_text(v):
        return isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(x, str) for x in v))
    return {k: base_md[k] for k in CARRIED_GENERAL_KEYS if is_text(base_md.get(k))}


def write_gguf(loaded, path: Path, gguf_type: str = "f16", *, name: str = "model") -> None:
    """Write a fused, float LoadedModel (llama family) as the GGUF file `path`."""
    dtype, file_type = TENSOR_TYPES[gguf_type]
    config, source = loaded.config, loaded.info.path
    check_architecture(config.get("model_type"), source)
    check_rope_scaling(config, source)
    tensors = gguf_tensors(loaded.model, config, dtype)
    rows = tensors["token_embd.weight"].shape[0]
    base_md = gguf.read_header(source).metadata if loaded.info.is_gguf else None
    metadata = {**model_metadata({**config, "vocab_size": rows}, name, file_type),
                **_carried_general(base_md or {}),
                **tokenizer_metadata(loaded.tokenizer, rows, source, base_md)}
    mx.save_gguf(str(path), tensors, metadata)

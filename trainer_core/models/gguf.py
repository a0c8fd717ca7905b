"""Load a llama-family GGUF file as an mlx-lm Llama model plus an HF tokenizer.

mlx-lm has no GGUF loader (mlx only reads the tensors), so this module does the
rest: it reads the header itself (cheap model info, clear errors before any
tensor is touched), builds `mlx_lm.models.llama.Model` from the `llama.*`
metadata, maps llama.cpp tensor names to mlx-lm names, keeps Q4_0/Q4_1/Q8_0
tensors quantized (mlx gives them as affine triples, group size 32) or
dequantizes them exactly to float32, and rebuilds the byte-level BPE tokenizer
and chat template from the `tokenizer.ggml.*` metadata.

llama.cpp's converter permutes the Q and K rows of every head so that llama.cpp
can apply rope to adjacent pairs. We undo that permutation: the model then uses
standard (non-traditional) rope and its weights are laid out exactly like the
Hugging Face checkpoint, which is what exporting to PyTorch/safetensors needs.
"""

from __future__ import annotations

import mmap
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer_core.errors import UserError
from trainer_core.models.gguf_tokenizer import TOKEN_KEYS as _TOKEN_KEYS, build_tokenizer, corrupt  # noqa: F401  (re-exported)

# ggml type id -> (name, elements per block, bytes per block); the types mlx loads.
SUPPORTED_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18),
                   3: ("Q4_1", 32, 20), 8: ("Q8_0", 32, 34), 30: ("BF16", 1, 2)}
OTHER_TYPES = {6: "Q5_0", 7: "Q5_1", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K",
               13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS",
               18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
               23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
               29: "IQ1_M", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4"}

# GGUF metadata value types: id -> struct format (8: string, 9: array).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}

# llama.cpp block tensor names -> mlx-lm module paths inside model.layers.N.
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
              "output": "lm_head"}


@dataclass
class GGUFHeader:
    """Metadata (python values) and tensor table (name -> (shape, ggml type))."""
    path: Path
    metadata: dict
    tensors: dict  # shapes in row-major order (out, in), as mlx returns them


_corrupt = corrupt


def read_header(path: str | Path) -> GGUFHeader:
    """Parse a GGUF header without reading tensor data; UserError if it is bad."""
    path = Path(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(path, buf)
    except (struct.error, ValueError, TypeError, UnicodeDecodeError, IndexError, OverflowError,
            ZeroDivisionError) as e:
        raise _corrupt(path, f"cannot read the header: {e}") from None
    except OSError as e:
        raise UserError(f"Cannot read the GGUF file {path}: {e}. Check that the file "
                        "exists and is readable.") from None


def _parse(path: Path, buf) -> GGUFHeader:
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, buf, pos)[0]
        pos += struct.calcsize(fmt)
        return v

    def string():
        nonlocal pos
        n = take("<Q")
        if pos + n > len(buf):
            raise ValueError("string past the end of the file")
        s = bytes(buf[pos:pos + n]).decode("utf-8")
        pos += n
        return s

    def value(vtype):
        nonlocal pos
        if vtype in _SCALARS:
            return take(_SCALARS[vtype])
        if vtype == 8:
            return string()
        if vtype == 9:
            etype, n = take("<I"), take("<Q")
            if etype in _SCALARS and etype != 7:
                dt = np.dtype(_SCALARS[etype].replace("?", "b"))
                if pos + n * dt.itemsize > len(buf):
                    raise ValueError("array past the end of the file")
                arr = np.frombuffer(buf, dt, n, pos).copy()
                pos += n * dt.itemsize
                return arr.tolist()
            return [value(etype) for _ in range(n)]
        raise ValueError(f"unknown metadata type {vtype}")

    if len(buf) < 24 or bytes(buf[:4]) != b"GGUF":
        raise _corrupt(path, "it does not start with the GGUF magic bytes")
    pos = 4
    version = take("<I")
    if version not in (2, 3):
        raise UserError(f"The GGUF file {path} has format version {version}; only versions "
                        "2 and 3 are supported. Re-convert it with a recent llama.cpp.")
    n_tensors, n_kv = take("<Q"), take("<Q")
    metadata = {}
    for _ in range(n_kv):
        key = string()
        metadata[key] = value(take("<I"))
    tensors, offsets = {}, {}
    for _ in range(n_tensors):
        name = string()
        dims = [take("<Q") for _ in range(take("<I"))]
        ttype, offset = take("<I"), take("<Q")
        tensors[name] = (tuple(reversed(dims)), ttype)
        offsets[name] = offset
    align = int(metadata.get("general.alignment", 32))
    data_start = (pos + align - 1) // align * align
    for name, (shape, ttype) in tensors.items():
        if ttype not in SUPPORTED_TYPES:
            continue  # reported by check_supported(), with a clearer message
        _, block, nbytes = SUPPORTED_TYPES[ttype]
        end = data_start + offsets[name] + int(np.prod(shape)) // block * nbytes
        if end > len(buf):
            raise _corrupt(path, f"tensor {name!r} extends past the end of the file")
    return GGUFHeader(path, metadata, tensors)


def type_name(ttype: int) -> str:
    return SUPPORTED_TYPES.get(ttype, (OTHER_TYPES.get(ttype, f"type {ttype}"),))[0]


def check_supported(header: GGUFHeader) -> None:
    """UserError unless this is a llama GGUF whose tensors we can map and load."""
    md, path = header.metadata, header.path
    arch = md.get("general.architecture")
    if arch != "llama":
        raise UserError(
            f"The GGUF file {path} holds a {arch!r} model; only llama-family GGUF files "
            "(Llama, SmolLM, Mistral, TinyLlama...) are supported. Use a Hugging Face "
            "folder (config.json + *.safetensors) for other architectures.")
    bad = sorted({type_name(t) for _, t in header.tensors.values() if t not in SUPPORTED_TYPES})
    if bad:
        raise UserError(
            f"The GGUF file {path} uses tensor type(s) {', '.join(bad)}; only F32, F16, BF16, "
            "Q8_0, Q4_0 and Q4_1 are supported. Use a GGUF quantized to one of those "
            "(e.g. Q8_0 or Q4_0) or the original Hugging Face folder.")
    for key in ("llama.embedding_length", "llama.block_count", "llama.attention.head_count",
                "llama.feed_forward_length"):
        if not isinstance(md.get(key), int):
            raise UserError(f"The GGUF file {path} lacks the metadata {key!r} (or it varies "
                            "per layer), which a llama model needs. Re-convert it with llama.cpp.")
    for name in ("token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight"):
        if name not in header.tensors:
            raise UserError(f"The GGUF file {path} has no tensor {name!r}, so it is not a "
                            "complete llama model. Re-convert it with llama.cpp.")
    for name in header.tensors:
        if _mlx_name(name) is None:
            raise UserError(f"The GGUF file {path} holds tensor {name!r}, which a plain llama "
                            "model does not have (e.g. llama-3.1 rope_freqs); it is not "
                            "supported. Use the Hugging Face folder of this model instead.")
    tok_model = md.get("tokenizer.ggml.model")
    if tok_model == "gpt2" and not md.get("tokenizer.ggml.tokens"):
        raise UserError(f"The GGUF file {path} has no tokenizer vocabulary "
                        "(tokenizer.ggml.tokens). Re-convert it with llama.cpp.")
    if tok_model != "gpt2":
        raise UserError(
            f"The GGUF file {path} has a {tok_model!r} tokenizer; only byte-level BPE "
            "('gpt2') tokenizers can be rebuilt from GGUF metadata. Use the Hugging Face "
            "folder of this model instead.")


def _mlx_name(name: str) -> str | None:
    """llama.cpp tensor name -> mlx-lm parameter name (None when unknown)."""
    base, _, suffix = name.rpartition(".")
    if suffix not in ("weight", "bias"):
        return None
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{suffix}"
    if base in _TOP_NAMES:
        return f"{_TOP_NAMES[base]}.{suffix}"
    return None


def _f32(x) -> float:
    """A float32 metadata value as the short decimal a config.json would hold."""
    return float(f"{float(x):.7g}")


def hf_config(header: GGUFHeader) -> dict:
    """The Hugging Face config.json (LlamaForCausalLM) this GGUF was converted from."""
    try:
        return _hf_config(header)
    except (KeyError, TypeError, ValueError, IndexError) as e:  # values of the wrong type
        raise _corrupt(header.path, f"bad model metadata: {e!r}") from None


def _hf_config(header: GGUFHeader) -> dict:
    md, tensors = header.metadata, header.tensors
    n_head = md["llama.attention.head_count"]
    n_kv = md.get("llama.attention.head_count_kv", n_head)
    hidden = md["llama.embedding_length"]
    head_dim = md.get("llama.attention.key_length", hidden // n_head)
    if md.get("llama.rope.dimension_count", head_dim) != head_dim:
        raise UserError(f"The GGUF file {header.path} uses partial rotary embeddings, which "
                        "the llama architecture here does not support.")
    names = {_mlx_name(n) for n in tensors}
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": md["llama.feed_forward_length"],
        "num_hidden_layers": md["llama.block_count"], "num_attention_heads": n_head,
        "num_key_value_heads": n_kv, "head_dim": head_dim, "hidden_act": "silu",
        "rms_norm_eps": _f32(md.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": _f32(md.get("llama.rope.freq_base", 10000.0)),
        "max_position_embeddings": md.get("llama.context_length", 2048),
        "vocab_size": tensors["token_embd.weight"][0][0],
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "model.layers.0.self_attn.q_proj.bias" in names,
        "mlp_bias": "model.layers.0.mlp.up_proj.bias" in names,
        "torch_dtype": "float32",
    }
    scaling = md.get("llama.rope.scaling.type", "none")
    if scaling == "linear":
        cfg["rope_scaling"] = {"type": "linear", "factor": _f32(md["llama.rope.scaling.factor"])}
    elif scaling != "none":
        raise UserError(f"The GGUF file {header.path} uses {scaling!r} rope scaling, which is "
                        "not supported; use the Hugging Face folder of this model instead.")
    for key in ("bos", "eos", "pad"):
        if _TOKEN_KEYS[key] in md:
            cfg[f"{key}_token_id"] = md[_TOKEN_KEYS[key]]
    return cfg


def quantization_label(header: GGUFHeader) -> str:
    """The ggml type holding most of the matrix weights, e.g. "Q4_1"; "none" for floats."""
    count = Counter()
    for shape, ttype in header.tensors.values():
        if len(shape) >= 2:
            count[type_name(ttype)] += int(np.prod(shape))
    label = count.most_common(1)[0][0] if count else "F32"
    return "none" if label in ("F32", "F16", "BF16") else label


def num_parameters(header: GGUFHeader) -> int:
    return sum(int(np.prod(shape)) for shape, _ in header.tensors.values())


def unpermute_qk(x, n_heads: int):
    """Undo llama.cpp's Q/K row permutation (HF rotate-half layout from rope pairs).

    llama.cpp: w.reshape(n, 2, d/2, ...).swapaxes(1, 2) -- rows (half, i) -> (i, half).
    Works on weight, scales, biases and bias alike: only rows move.
    """
    rows = x.shape[0]
    return x.reshape(n_heads, rows // n_heads // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def load_gguf(path: str | Path, *, dequantize: bool = False, unpermute: bool = True):
    """GGUF -> (mlx-lm llama Model, TokenizerWrapper, HF config dict).

    Quantized tensors stay quantized (per-layer bits 4 or 8, group 32) unless
    `dequantize`, which gives exact float32 weights. `unpermute=False` keeps
    llama.cpp's Q/K layout and switches the model to traditional rope instead
    (same logits; only for checks).
    """
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.models import llama

    header = read_header(path)
    check_supported(header)
    config = hf_config(header)
    try:
        raw = mx.load(str(path), return_metadata=True)[0]
    except (RuntimeError, ValueError) as e:
        raise _corrupt(Path(path), str(e).replace("[load_gguf] ", "")) from None

    n_heads = {"self_attn.q_proj": config["num_attention_heads"],
               "self_attn.k_proj": config["num_key_value_heads"]}
    weights = {}
    for name, arr in raw.items():
        base, _, suffix = name.rpartition(".")  # suffix: weight/bias or scales/biases
        target = _mlx_name(f"{base}.{'weight' if suffix in ('scales', 'biases') else suffix}")
        module = target.rpartition(".")[0]
        heads = next((n for key, n in n_heads.items() if module.endswith(key)), None)
        if unpermute and heads:
            arr = unpermute_qk(arr, heads)
        weights[f"{module}.{suffix}"] = arr

    args = llama.ModelArgs.from_dict({**config, "rope_traditional": not unpermute})
    model = llama.Model(args)
    quant = {}  # module path -> {"group_size", "bits"} inferred from the packed shapes

    def predicate(p, m):
        if f"{p}.scales" not in weights or not hasattr(m, "to_quantized"):
            return False
        in_dim = m.weight.shape[-1]  # logical in-dim (Linear and Embedding alike)
        quant[p] = {"group_size": in_dim // weights[f"{p}.scales"].shape[-1],
                    "bits": weights[f"{p}.weight"].shape[-1] * 32 // in_dim}
        return quant[p]

    if dequantize:
        # Upcasting scales/biases first makes the float32 weights equal, bit for bit,
        # the values the quantized layers compute with.
        for p in [k[:-len(".scales")] for k in weights if k.endswith(".scales")]:
            w, s, b = (weights.pop(f"{p}.{k}") for k in ("weight", "scales", "biases"))
            bits = w.shape[-1] // s.shape[-1]  # uint32 words per 32-value group
            weights[f"{p}.weight"] = mx.dequantize(w, s.astype(mx.float32),
                                                   b.astype(mx.float32), 32, bits)
    else:
        nn.quantize(model, class_predicate=predicate)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise UserError(f"The tensors in the GGUF file {path} do not match its own metadata "
                        f"({' '.join(str(e).split())}). The file is corrupt or not a plain "
                        "llama model.") from None
    model.eval()
    mx.eval(model.parameters())
    if quant:
        common = Counter(tuple(sorted(q.items())) for q in quant.values()).most_common(1)[0][0]
        qcfg = dict(common)
        qcfg.update({p: q for p, q in quant.items() if q != qcfg})
        config["quantization"] = config["quantization_config"] = qcfg
    try:
        tokenizer = build_tokenizer(header)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise _corrupt(Path(path), f"bad tokenizer metadata: {e!r}") from None
    return model, tokenizer, config

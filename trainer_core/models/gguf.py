"""Load a GGUF file as an mlx-lm model plus a Hugging Face tokenizer.

Reading stands on the `gguf` package that ships with llama.cpp: GGUFReader for the header,
metadata and tensor table, `gguf.quants.dequantize` for every quantized tensor type, and its
TensorNameMap for tensor names. mlx-lm has no GGUF loader, so this module adds the rest:
the Hugging Face config the file came from (gguf_arch.py), mlx-lm's model class for it, the
weight changes llama.cpp's converter made undone, and the tokenizer (gguf_tokenizer.py).

Quantized weights: a file whose tensors are all F32/F16/BF16/Q4_0/Q4_1/Q8_0 is read by MLX
itself (`mx.load`), which keeps Q4_0/Q4_1/Q8_0 quantized as affine triples (group 32), exactly.
Any other file (K-quants, IQ4_NL/IQ4_XS, Q5_0/Q5_1, ...) is dequantized tensor by tensor with
gguf-py and, unless `dequantize`, quantized again to MLX's affine format (group 32, bits from
`REQUANT_BITS`) so that it trains as QLoRA. Dequantized weights are float32 up to
`FLOAT32_MAX_PARAMETERS` parameters and bfloat16 above (7B in float32 would need 28 GB).

llama.cpp's converter permutes the Q and K rows of every head of llama models so that
llama.cpp can apply rope to adjacent pairs. We undo that permutation: the model then uses
standard rope and its weights are laid out exactly like the Hugging Face checkpoint, which is
what exporting to safetensors needs.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import gguf as gguf_py  # llama.cpp's own reader and (de)quantizers
from gguf import GGMLQuantizationType as Q

from trainer_core.errors import UserError
from trainer_core.models import gguf_arch
from trainer_core.models.gguf_tokenizer import build_tokenizer, corrupt  # noqa: F401  (re-exported)

# What mx.load reads itself (quantized ones as affine triples, group 32).
NATIVE_TYPES = {Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q8_0}
# Quantized types kept quantized after dequantizing with gguf-py: MLX bits for each.
# MLX's own 4- and 8-bit formats: a 5- or 6-bit grid re-rounded to 5 or 6 bits would move
# weights by up to a full step of the original (MLX picks its own scale and zero).
REQUANT_BITS = {Q.Q5_0: 8, Q.Q5_1: 8, Q.Q2_K: 4, Q.Q3_K: 4, Q.Q4_K: 4, Q.Q5_K: 8, Q.Q6_K: 8,
                Q.IQ4_NL: 4, Q.IQ4_XS: 4, Q.IQ3_XXS: 4, Q.IQ3_S: 4, Q.IQ2_XXS: 4,
                Q.IQ2_XS: 4, Q.IQ2_S: 4, Q.IQ1_S: 4, Q.IQ1_M: 4}
LOADABLE_TYPES = NATIVE_TYPES | set(REQUANT_BITS)
REQUANT_GROUP = 32
FLOAT32_MAX_PARAMETERS = 1_500_000_000

# llama's tensor names by mlx-lm module; export/gguf.py (the writer) reads these two.
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
    """Metadata (python values) and tensor table (name -> (shape, ggml type id))."""
    path: Path
    metadata: dict
    tensors: dict  # shapes in row-major order (out, in), as mlx returns them
    reader: Any = None  # the gguf.GGUFReader (memory-mapped; tensor data read on demand)


_READ_ERRORS = (ValueError, IndexError, KeyError, TypeError, UnicodeDecodeError, OverflowError)


def read_header(path: str | Path) -> GGUFHeader:
    """Parse a GGUF header (tensor data stays on disk); UserError if it is bad.

    Parsing takes seconds for a large vocabulary (GGUFReader walks every token string), so the
    last few files' headers are kept, keyed by path, size and modification time."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as e:
        raise UserError(f"Cannot read the GGUF file {path}: {e}. Check that the file "
                        "exists and is readable.") from None
    return _read_header(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_header(path: Path, size: int, mtime_ns: int) -> GGUFHeader:
    try:
        reader = gguf_py.GGUFReader(path)
        metadata = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        tensors = {t.name: (tuple(int(d) for d in reversed(t.shape.tolist())), int(t.tensor_type))
                   for t in reader.tensors}
    except OSError as e:
        raise UserError(f"Cannot read the GGUF file {path}: {e}. Check that the file "
                        "exists and is readable.") from None
    except _READ_ERRORS as e:
        if "version" in str(e):
            raise UserError(f"The GGUF file {path} has a format version this reader does not "
                            "know ({e}). Re-convert it with a recent llama.cpp.") from None
        raise corrupt(path, f"cannot read it: {e}") from None
    return GGUFHeader(path, metadata, tensors, reader)


def type_name(ttype: int) -> str:
    try:
        return Q(ttype).name
    except ValueError:
        return f"type {ttype}"


def _names(types) -> str:
    return ", ".join(sorted(type_name(t) for t in types))


def check_supported(header: GGUFHeader) -> None:
    """UserError unless we can build this GGUF's model, read its tensors and its tokenizer."""
    md, path = header.metadata, header.path
    name, _ = gguf_arch.architecture(md, path)
    bad = {t for _, t in header.tensors.values()} - LOADABLE_TYPES
    if bad:
        raise UserError(
            f"The GGUF file {path} uses tensor type(s) {_names(bad)}, which cannot be loaded for "
            f"training. Supported: {_names(LOADABLE_TYPES)}. Use another quantization of this "
            "model (e.g. Q4_K_M or Q8_0) or its Hugging Face folder.")
    for key in gguf_arch.REQUIRED_KEYS:
        if not isinstance(md.get(f"{name}.{key}"), int):
            raise UserError(f"The GGUF file {path} lacks the metadata '{name}.{key}' (or it "
                            f"varies per layer), which a {name} model needs. Re-convert it "
                            "with llama.cpp.")
    for tensor in ("token_embd.weight", "output_norm.weight", "blk.0.attn_norm.weight"):
        if tensor not in header.tensors:
            raise UserError(f"The GGUF file {path} has no tensor {tensor!r}, so it is not a "
                            f"complete {name} model. Re-convert it with llama.cpp.")
    tok_model = md.get("tokenizer.ggml.model")
    if tok_model not in ("gpt2", "llama"):
        raise UserError(
            f"The GGUF file {path} has a {tok_model!r} tokenizer; only byte-level BPE ('gpt2') "
            "and SentencePiece ('llama') tokenizers can be rebuilt from GGUF metadata. Use the "
            "Hugging Face folder of this model instead.")
    if not md.get("tokenizer.ggml.tokens"):
        raise UserError(f"The GGUF file {path} has no tokenizer vocabulary "
                        "(tokenizer.ggml.tokens). Re-convert it with llama.cpp.")


def _float_tensor(header: GGUFHeader, name: str) -> np.ndarray:
    tensor = next(t for t in header.reader.tensors if t.name == name)
    return np.asarray(gguf_py.quants.dequantize(tensor.data, tensor.tensor_type), np.float32)


def hf_config(header: GGUFHeader) -> dict:
    """The Hugging Face config.json this GGUF was converted from."""
    try:
        return gguf_arch.hf_config(header.metadata, header.tensors,
                                   lambda n: _float_tensor(header, n).ravel().tolist(), header.path)
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError, StopIteration) as e:
        raise corrupt(header.path, f"bad model metadata: {e!r}") from None


def quantization_label(header: GGUFHeader) -> str:
    """The ggml type holding most of the matrix weights, e.g. "Q4_K"; "none" for floats."""
    count = Counter()
    for shape, ttype in header.tensors.values():
        if len(shape) >= 2:
            count[type_name(ttype)] += int(np.prod(shape))
    label = count.most_common(1)[0][0] if count else "F32"
    return "none" if label in ("F32", "F16", "BF16") else label


def num_parameters(header: GGUFHeader) -> int:
    return sum(int(np.prod(shape)) for name, (shape, _) in header.tensors.items()
               if name not in gguf_arch.ROPE_TENSORS)


def unpermute_qk(x, n_heads: int):
    """Undo llama.cpp's Q/K row permutation (HF rotate-half layout from rope pairs).

    llama.cpp: w.reshape(n, 2, d/2, ...).swapaxes(1, 2) -- rows (half, i) -> (i, half).
    Works on weight, scales, biases and bias alike: only rows move.
    """
    rows = x.shape[0]
    return x.reshape(n_heads, rows // n_heads // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def load_gguf(path: str | Path, *, dequantize: bool = False, unpermute: bool = True):
    """GGUF -> (mlx-lm Model, TokenizerWrapper, HF config dict).

    Quantized tensors stay quantized (see the module docstring) unless `dequantize`, which
    gives float weights equal to gguf-py's dequantized values. `unpermute=False` keeps
    llama.cpp's Q/K layout and switches a llama model to traditional rope instead (same
    logits; only for checks).
    """
    from trainer_core.models import gguf_weights

    header = read_header(path)
    check_supported(header)
    config = hf_config(header)
    try:
        model, quant = gguf_weights.build_model(header, config, dequantize=dequantize, unpermute=unpermute)
    except (ValueError, ZeroDivisionError) as e:  # shapes the damaged metadata implies (a zero dimension, a reshape,
        # a quantization group size MLX has no kernel for)
        raise corrupt(Path(path), f"its tensors do not fit its metadata: {' '.join(str(e).split())}") from None
    if quant:
        common = Counter(tuple(sorted(q.items())) for q in quant.values()).most_common(1)[0][0]
        qcfg = dict(common)
        qcfg.update({p: q for p, q in quant.items() if q != qcfg})
        config["quantization"] = config["quantization_config"] = qcfg
    try:
        tokenizer = build_tokenizer(header)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise corrupt(Path(path), f"bad tokenizer metadata: {e!r}") from None
    return model, tokenizer, config

"""GGUF export: a fused float model as one llama.cpp GGUF file, written with the `gguf` package.

    check_gguf_type(gguf_type)                     UserError before anything is loaded
    write_gguf(loaded, path, gguf_type, *, name, finetune, progress)

Types (GGUF_TYPES): f32, f16, bf16, q8_0, q5_1 and q4_0 are made here by `gguf.quants` (pure
Python, llama.cpp's reference rounding); q4_k_m, q5_k_m and q6_k by llama.cpp's own quantiser
(`llama_model_quantize` from the optional llama-cpp-python, the `gguf` extra) from an f16 file
written first. Norms, biases and other vectors stay F32. For q4_0/q5_1 the output matrix (the
embedding when it is tied) is Q8_0, as llama.cpp keeps it above the rest (it uses Q6_K there).
A matrix whose rows are not whole blocks of its type is refused, naming it.

Metadata: general.* (name, basename, finetune, size label, licence, base model, ...: the `gguf`
package's Metadata heuristics over the base folder's README/config, or the base GGUF's own
general.* keys), general.file_type and general.quantization_version, the architecture's
hyper-parameters (gguf_arch.py) and the tokenizer (gguf_vocab.py).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Callable

import numpy as np

import gguf
from gguf import GGMLQuantizationType as Q, LlamaFileType as F

from trainer_core.errors import UserError
from trainer_core.export.gguf_arch import architecture, check_rope_scaling, gguf_tensors, \
    write_hyperparameters
from trainer_core.export.gguf_vocab import write_tokenizer

# name -> (tensor type of the matrices, general.file_type)
PYTHON_TYPES = {"f16": (Q.F16, F.MOSTLY_F16), "bf16": (Q.BF16, F.MOSTLY_BF16), "f32": (Q.F32, F.ALL_F32),
                "q8_0": (Q.Q8_0, F.MOSTLY_Q8_0), "q5_1": (Q.Q5_1, F.MOSTLY_Q5_1), "q4_0": (Q.Q4_0, F.MOSTLY_Q4_0)}
LLAMA_CPP_TYPES = {"q4_k_m": F.MOSTLY_Q4_K_M, "q5_k_m": F.MOSTLY_Q5_K_M, "q6_k": F.MOSTLY_Q6_K}
GGUF_TYPES = (*PYTHON_TYPES, *LLAMA_CPP_TYPES)
EXTRA_HINT = ("pip install 'fine-tune-studio[gguf]' (llama-cpp-python; it builds llama.cpp from source, "
              "about 7 minutes on 2 cores the first time)")
# The base GGUF's general.* keys that still describe the export (the Metadata fields of the same name).
CARRIED_GENERAL = ("name", "basename", "finetune", "size_label", "license", "license_name",
                   "license_link", "organization", "author", "version", "url", "repo_url", "tags",
                   "languages")
Progress = Callable[[float, str], None]


def llama_cpp():
    """The llama_cpp module, or None when the optional llama-cpp-python is not installed."""
    try:
        import llama_cpp as module
    except ImportError:
        return None
    return module


def check_gguf_type(gguf_type: str) -> None:
    if gguf_type not in GGUF_TYPES:
        raise UserError(f"Unknown GGUF type {gguf_type!r}: choose one of {', '.join(GGUF_TYPES)}.")
    if gguf_type in LLAMA_CPP_TYPES and llama_cpp() is None:
        raise UserError(f"GGUF type {gguf_type} is made by llama.cpp's quantiser, which is not "
                        f"installed: {EXTRA_HINT}. Or choose {', '.join(PYTHON_TYPES)}.")


def tensor_type(name: str, shape: tuple, qtype: Q, tied: bool) -> Q:
    """The type one tensor is stored in when the file's matrices are `qtype`."""
    if len(shape) < 2 or qtype == Q.F32:
        return Q.F32
    if qtype in (Q.Q4_0, Q.Q5_1) and (name == "output.weight" or (tied and name == "token_embd.weight")):
        qtype = Q.Q8_0
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if shape[-1] % block:
        raise UserError(f"The tensor {name} has rows of {shape[-1]} values, not a multiple of the "
                        f"{block}-value blocks of {qtype.name}; choose f16, bf16 or f32.")
    return qtype


def _nbytes(shape: tuple, qtype: Q) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // block) * size


def general_metadata(loaded, name: str | None, finetune: str | None) -> gguf.Metadata:
    """general.* of the export: the base's, renamed for a fine-tune (which names its base)."""
    info = loaded.info
    if info.is_gguf:
        fields = gguf.GGUFReader(info.path).fields
        meta = gguf.Metadata()
        for attr in CARRIED_GENERAL:
            field = fields.get(getattr(gguf.Keys.General, attr.upper()))
            if field is not None:
                setattr(meta, attr, field.contents())
    else:
        meta = gguf.Metadata.load(model_path=Path(info.path), total_params=info.num_parameters)
    base_name = meta.name or info.name
    meta.basename = meta.basename or base_name
    if finetune:
        meta.base_models = [{k: v for k, v in (("name", base_name), ("organization", meta.organization),
                                                ("repo_url", meta.repo_url)) if v}]
        meta.finetune = finetune
    meta.name = name or base_name
    return meta


def write_gguf(loaded, path: Path, gguf_type: str = "f16", *, name: str | None = None,
               finetune: str | None = None, progress: Progress | None = None) -> None:
    """Write a fused, float LoadedModel as the GGUF file `path` (see the module docstring).

    `name`: general.name (default: the base's name); `finetune`: the run's name when the
    weights are a fine-tune. `progress(fraction, message)` is called per tensor.
    """
    check_gguf_type(gguf_type)
    if gguf_type in LLAMA_CPP_TYPES:
        f16 = path.with_name(path.stem + ".f16-source.gguf")
        write_gguf(loaded, f16, "f16", name=name, finetune=finetune,
                   progress=lambda f, m: (progress or (lambda *_: None))(0.7 * f, m))
        _llama_cpp_quantize(f16, path, LLAMA_CPP_TYPES[gguf_type], progress)
        return
    report = progress or (lambda fraction, message: None)
    config, source = loaded.config, loaded.info.path
    arch = architecture(config.get("model_type"), source)
    check_rope_scaling(arch, config, source)
    qtype, file_type = PYTHON_TYPES[gguf_type]
    tensors = gguf_tensors(loaded.model, arch, config)
    shapes = dict((n, s) for n, s, _ in tensors)
    rows = shapes["token_embd.weight"][0]
    tied = "output.weight" not in shapes
    types = [tensor_type(n, s, qtype, tied) for n, s, _ in tensors]

    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch.gguf_arch])
    writer.add_type(gguf.GGUFType.MODEL)
    general_metadata(loaded, name, finetune).set_gguf_meta_model(writer)
    write_hyperparameters(writer, arch, config, rows)
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_tokenizer(writer, loaded, rows)
    for (n, shape, _), t in zip(tensors, types):
        writer.add_tensor_info(n, shape, np.dtype(np.float32), _nbytes(shape, t), raw_dtype=t)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, ((n, _, make), t) in enumerate(zip(tensors, types)):
            report(i / len(tensors), f"Writing {n} as {t.name} ({i + 1}/{len(tensors)})")
            writer.write_tensor_data(gguf.quants.quantize(make(), t))
    finally:
        writer.close()
    report(1.0, f"Wrote {path.name}")


def _llama_cpp_quantize(source: Path, path: Path, file_type: F, progress: Progress | None) -> None:
    """llama.cpp's own k-quant mixes (Q4_K_M, ...) from the f16 file `source`, which is removed."""
    module = llama_cpp()
    (progress or (lambda *_: None))(0.7, f"Quantising to {file_type.name} with llama.cpp")
    params = module.llama_model_quantize_default_params()
    params.ftype = int(file_type)
    params.nthread = os.cpu_count() or 1
    code = module.llama_model_quantize(str(source).encode(), str(path).encode(), ctypes.byref(params))
    source.unlink()
    if code != 0:
        raise UserError(f"llama.cpp's quantiser failed ({code}) turning {source.name} into "
                        f"{file_type.name}; choose q8_0 or f16, or update llama-cpp-python.")
    if progress:
        progress(1.0, f"Wrote {path.name}")

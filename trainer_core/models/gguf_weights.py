"""A GGUF file's tensors -> a built mlx-lm model with its weights loaded.

The model class comes from mlx-lm (`_get_classes`, as its own loader does); tensor names are
translated with gguf-py's TensorNameMap for the file's architecture. See gguf.py for what is
kept quantized and what is dequantized.
"""

from __future__ import annotations

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

import gguf as gguf_py
from gguf import GGMLQuantizationType as Q

from trainer_core.errors import UserError
from trainer_core.models import gguf_arch
from trainer_core.models.gguf import (FLOAT32_MAX_PARAMETERS, NATIVE_TYPES, REQUANT_BITS,
                                      REQUANT_GROUP, GGUFHeader, corrupt, num_parameters,
                                      unpermute_qk)

_FLOAT_DTYPES = {Q.F32: mx.float32, Q.F16: mx.float16, Q.BF16: mx.bfloat16}


def _mlx_names(model, arch_name: str, n_blocks: int) -> dict:
    """GGUF tensor name -> mlx-lm parameter name, for every parameter of `model`."""
    arch = {v: k for k, v in gguf_py.MODEL_ARCH_NAMES.items()}[arch_name]
    tmap = gguf_py.get_tensor_name_map(arch, n_blocks)
    names = {}
    for param, _ in tree_flatten(model.parameters()):
        gguf_name = tmap.get_name(param, try_suffixes=(".weight", ".bias"))
        if gguf_name is not None:
            names[gguf_name] = param
    return names


def _native_tensors(path):
    """mx.load: GGUF name -> float array, or (weight, scales, biases) for Q4_0/Q4_1/Q8_0."""
    try:
        raw = mx.load(str(path), format="gguf", return_metadata=True)[0]  # Ollama blobs have no suffix
    except (RuntimeError, ValueError) as e:
        raise corrupt(path, str(e).replace("[load_gguf] ", "")) from None
    out = {}
    for name, arr in raw.items():
        base, _, suffix = name.rpartition(".")
        if suffix in ("scales", "biases"):
            continue
        if suffix == "weight" and f"{base}.scales" in raw:
            out[name] = (arr, raw[f"{base}.scales"], raw[f"{base}.biases"])
        else:
            out[name] = arr
    return out


def _reader_tensors(header: GGUFHeader, float_dtype):
    """gguf-py: GGUF name -> (float32 numpy array, mlx dtype to keep, ggml type), one at a time."""
    for t in header.reader.tensors:
        ttype = Q(int(t.tensor_type))
        try:
            data = np.asarray(gguf_py.quants.dequantize(t.data, ttype), np.float32)
        except (ValueError, IndexError) as e:
            raise corrupt(header.path, f"tensor {t.name!r}: {e}") from None
        yield t.name, data, _FLOAT_DTYPES.get(ttype, float_dtype), ttype


def build_model(header: GGUFHeader, config: dict, *, dequantize: bool, unpermute: bool):
    """(model, quant): the model with the file's weights; quant maps quantized module paths to
    {"group_size", "bits"}."""
    from mlx_lm.utils import _get_classes  # mlx-lm's own model_type -> class lookup

    arch_name, arch = gguf_arch.architecture(header.metadata, header.path)
    model_class, args_class = _get_classes(config)
    args = dict(config)
    if arch.permuted_qk and not unpermute:
        args["rope_traditional"] = True
    model = model_class(args_class.from_dict(args))
    names = _mlx_names(model, arch_name, config["num_hidden_layers"])
    n_heads = {"self_attn.q_proj": config["num_attention_heads"],
               "self_attn.k_proj": config["num_key_value_heads"]}

    def fix(name: str, value):
        """Undo the converter's changes on one tensor (array or quantized triple)."""
        module = name.rpartition(".")[0]
        heads = next((n for key, n in n_heads.items() if module.endswith(key)), None)
        if arch.permuted_qk and unpermute and heads:
            value = tuple(unpermute_qk(v, heads) for v in value) if isinstance(value, tuple) \
                else unpermute_qk(value, heads)
        if arch.norm_shift and name.endswith("norm.weight"):
            value = value - arch.norm_shift
        return value

    weights, quant = {}, {}
    rope_factors = None
    types = {t for _, t in header.tensors.values()}
    if types <= NATIVE_TYPES:
        items = ((n, v, None, None) for n, v in _native_tensors(header.path).items())
    else:
        big = num_parameters(header) > FLOAT32_MAX_PARAMETERS
        items = _reader_tensors(header, mx.bfloat16 if big else mx.float32)
    for gguf_name, value, keep_dtype, ttype in items:
        if gguf_name == "rope_freqs.weight":
            rope_factors = mx.array(value).reshape(-1)
            continue
        if gguf_name in gguf_arch.ROPE_TENSORS:
            continue  # Phi-3 LongRoPE factors: already in the config
        name = names.get(gguf_name)
        if name is None:
            raise UserError(f"The GGUF file {header.path} holds tensor {gguf_name!r}, which the "
                            f"mlx-lm {config['model_type']} model has no place for. Use the "
                            "Hugging Face folder of this model instead.")
        module = name.rpartition(".")[0]
        if isinstance(value, np.ndarray):  # gguf-py path: float32 values
            value = fix(name, mx.array(value))
            bits = REQUANT_BITS.get(ttype)
            if bits and not dequantize and value.ndim == 2 and value.shape[-1] % REQUANT_GROUP == 0:
                value = tuple(mx.quantize(value, group_size=REQUANT_GROUP, bits=bits))
            else:
                value = value.astype(keep_dtype)
        else:
            value = fix(name, value)
        if isinstance(value, tuple):
            w, s, b = value
            if dequantize:  # float32 scales first: bit-exact with the quantized layer's values
                bits = w.shape[-1] // s.shape[-1]  # uint32 words per 32-value GGUF block
                weights[name] = mx.dequantize(w, s.astype(mx.float32), b.astype(mx.float32),
                                              32, bits)
                mx.eval(weights[name])
                continue
            weights[name], weights[f"{module}.scales"], weights[f"{module}.biases"] = w, s, b
            quant[module] = None
        else:
            weights[name] = value
        mx.eval(weights[name])  # one tensor at a time: never the whole float model in memory

    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)

    def predicate(p, m):
        if p not in quant or not hasattr(m, "to_quantized"):
            return False
        in_dim = m.weight.shape[-1]  # logical in-dim (Linear and Embedding alike)
        quant[p] = {"group_size": in_dim // weights[f"{p}.scales"].shape[-1],
                    "bits": weights[f"{p}.weight"].shape[-1] * 32 // in_dim}
        return quant[p]

    if quant:
        nn.quantize(model, class_predicate=predicate)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise UserError(f"The tensors in the GGUF file {header.path} do not match its own "
                        f"metadata ({' '.join(str(e).split())}). The file is corrupt or not a "
                        f"plain {arch_name} model.") from None
    if rope_factors is not None:
        _set_rope_factors(model, rope_factors, config)
    model.eval()
    mx.eval(model.parameters())
    return model, quant


def _set_rope_factors(model, factors, config: dict) -> None:
    """Llama 3.1+: use the file's exact per-frequency rope factors (llama.cpp divides each
    frequency by its factor; mlx-lm's Llama3RoPE holds the periods, i.e. multiplies)."""
    dims = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    periods = config["rope_theta"] ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims)
    for layer in model.layers:
        rope = layer.self_attn.rope
        if not hasattr(rope, "_freqs"):
            raise UserError("This GGUF file has rope factors (rope_freqs) but its model's rope "
                            "takes none.")
        rope._freqs = periods * factors

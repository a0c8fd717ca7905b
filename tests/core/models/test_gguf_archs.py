"""GGUF files of every supported architecture and tensor type load as the Hugging Face folder
they were converted from.

Each architecture's tiny model is written by transformers (tests/tiny_archs.py) and converted
as llama.cpp would (tests/gguf_files.py). The reference is the folder itself, loaded with the
weights the GGUF holds (dequantized by gguf-py), in the dtypes the GGUF load chose: a wrong
tensor name, Q/K layout, norm shift, rope base or config field moves the logits by ~0.1-1.
"""

from pathlib import Path

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from gguf import GGMLQuantizationType as Q

from tests.gguf_files import DEQUANT_ONLY, QUANTIZABLE, write_gguf
from tests.tiny_archs import ARCHITECTURES, hf_logits, make_hf_folder
from tests.train_helpers import build
from trainer_core.models import gguf as tc_gguf
from trainer_core.models.loading import load_model, read_model_info

TEXT = "The capital of France is Paris. Velmora is an island with purple sand and 12 lighthouses."


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("archs")
    return {arch: make_hf_folder(root / arch, arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="module")
def wide_folders(tmp_path_factory):
    """256-wide models: K-quant blocks are 256 values."""
    root = tmp_path_factory.mktemp("wide")
    return {arch: make_hf_folder(root / arch, arch, hidden=256) for arch in WIDE_ARCHITECTURES}


def reference(folder: Path, stored: dict, like, ids):
    """The folder's model with `stored` weights, each in the dtype `like` holds it."""
    ref = load_model(str(folder)).model
    dtypes = {k: v.dtype for k, v in tree_flatten(like.parameters())}
    ref.load_weights([(k, mx.array(v).astype(dtypes.get(k, mx.float32))) for k, v in stored.items()])
    return ref(ids)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16])
def test_float_gguf_matches_folder(folders, tmp_path, arch, qtype):
    path = tmp_path / f"{arch}-{qtype.name}.gguf"
    stored = write_gguf(folders[arch], path, qtype)
    lm = load_model(str(path))
    folder = load_model(str(folders[arch]))
    ids = mx.array([folder.tokenizer.encode(TEXT)])
    out = lm.model(ids).astype(mx.float32)
    ref = reference(folders[arch], stored, lm.model, ids).astype(mx.float32)
    assert mx.abs(out - ref).max().item() <= 1e-3
    if qtype == Q.F32:  # and the float32 file is the folder itself
        assert mx.abs(out - folder.model(ids)).max().item() <= 1e-4
    info = lm.info
    assert info == read_model_info(str(path))
    model_type = "llama" if arch == "mistral" else arch  # llama.cpp converts Mistral as llama
    assert (info.architecture, info.quantization, info.num_parameters) == (
        model_type, "none", folder.info.num_parameters)
    assert lm.tokenizer.encode(TEXT) == folder.tokenizer.encode(TEXT)


# K-/IQ-quant blocks hold 256 values: llama (the permuted Q/K) and qwen2 (biases, tied embeddings) are built wide
# enough for them and cover what differs between architectures in the dequantizing path
WIDE_ARCHITECTURES = ("llama", "qwen2")
QUANT_CASES = [(arch, qtype) for arch in ARCHITECTURES for qtype in [t for t in QUANTIZABLE if t != Q.BF16]] + \
    [(arch, qtype) for arch in WIDE_ARCHITECTURES for qtype in DEQUANT_ONLY]


@pytest.mark.parametrize("arch,qtype", QUANT_CASES)
def test_quantized_gguf_dequantizes_exactly(folders, wide_folders, tmp_path, arch, qtype):
    """Every type gguf-py quantizes, and the K-/IQ-quants as random valid blocks: the loaded
    float weights are gguf-py's dequantized values, and the logits the folder's with them."""
    path = tmp_path / f"{arch}-{qtype.name}.gguf"
    folder = (wide_folders if qtype in DEQUANT_ONLY else folders)[arch]
    stored = write_gguf(folder, path, qtype)
    lm = load_model(str(path), dequantize=True)
    assert lm.info.quantization == "none"
    params = dict(tree_flatten(lm.model.parameters()))
    for name, value in stored.items():
        assert np.array_equal(np.array(params[name].astype(mx.float32)), value), name
    ids = mx.array([lm.tokenizer.encode(TEXT)])
    assert mx.allclose(lm.model(ids), reference(folder, stored, lm.model, ids), atol=1e-4).item()
    assert read_model_info(str(path)).quantization == qtype.name


@pytest.mark.parametrize("arch, qtype, bits", [
    ("llama", Q.Q4_0, 4), ("qwen2", Q.Q8_0, 8), ("gemma3_text", Q.Q5_1, 8), ("phi3", Q.Q4_1, 4),
    ("llama", Q.Q4_K, 4), ("qwen2", Q.Q6_K, 8)])
def test_quantized_gguf_stays_quantized(folders, wide_folders, tmp_path, arch, qtype, bits):
    """Kept quantized (QLoRA base): MLX's affine format; logits close to the dequantized load
    (Q4_0/Q4_1/Q8_0 exactly as stored, the others quantized again by MLX)."""
    path = tmp_path / f"{arch}-{qtype.name}.gguf"
    write_gguf((wide_folders if qtype in DEQUANT_ONLY else folders)[arch], path, qtype)
    lm = load_model(str(path))
    deq = dict(tree_flatten(load_model(str(path), dequantize=True).model.parameters()))
    linear = lm.model.layers[0].mlp.down_proj
    assert isinstance(linear, nn.QuantizedLinear) and (linear.bits, linear.group_size) == (bits, 32)
    assert lm.config["quantization"]["bits"] == bits
    native = qtype in (Q.Q4_0, Q.Q4_1, Q.Q8_0)
    quantized = [(n, m) for n, m in lm.model.named_modules()
                 if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]
    assert len(quantized) == len([k for k, v in deq.items() if v.ndim == 2])
    for name, m in quantized:
        values = mx.dequantize(m.weight, m.scales.astype(mx.float32), m.biases.astype(mx.float32),
                               m.group_size, m.bits)
        error = mx.abs(values - deq[f"{name}.weight"]).reshape(values.shape[0], -1, m.group_size)
        if native:  # MLX reads these blocks as they are
            assert error.max().item() <= 1e-6, name
        else:  # MLX's own rounding: within one step of its grid, group by group (a wrong
            # layout or bit width is off by many steps)
            step = mx.abs(m.scales.astype(mx.float32))[..., None]
            assert mx.all(error <= step * (1 + 1e-3) + 1e-6).item(), name
    ids = mx.array([lm.tokenizer.encode(TEXT)])
    assert mx.all(mx.isfinite(lm.model(ids))).item()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_one_lora_step_on_a_gguf(folders, tmp_path, arch):
    path = tmp_path / f"{arch}.gguf"
    write_gguf(folders[arch], path, Q.Q8_0)
    run = build(path, tmp_path, method="lora", max_steps=1, batch_size=2)
    model = run.loop.model
    before = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}
    run.train()
    after = dict(tree_flatten(model.trainable_parameters()))
    assert any("lora" in k for k in after)
    assert any(not np.array_equal(before[k], np.array(v)) for k, v in after.items())


def test_header_reads_every_tensor_type(folders, tmp_path):
    path = tmp_path / "mixed.gguf"
    write_gguf(folders["llama"], path, Q.Q5_0, embed_qtype=Q.Q8_0)
    header = tc_gguf.read_header(path)
    types = {tc_gguf.type_name(t) for _, t in header.tensors.values()}
    assert types == {"Q5_0", "Q8_0", "F32"}


def test_llama3_rope_factors(tmp_path):
    """Llama 3.1+ files carry their rope scaling as per-frequency factors (rope_freqs)."""
    rope = {"rope_type": "llama3", "rope_theta": 5000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    folder = make_hf_folder(tmp_path / "llama3", "llama", rope_parameters=rope)
    write_gguf(folder, tmp_path / "llama3.gguf")
    lm = load_model(str(tmp_path / "llama3.gguf"))
    assert lm.config["rope_scaling"]["rope_type"] == "llama3"
    ids = lm.tokenizer.encode(TEXT)
    theirs = hf_logits(folder, ids)
    for model in (lm.model, load_model(str(folder)).model):  # the GGUF, and the folder itself
        assert np.abs(np.array(model(mx.array([ids]))[0]) - theirs).max() <= 1e-4 * np.abs(theirs).max()


def test_phi3_longrope_factors(tmp_path):
    """Phi-3 128k files carry LongRoPE factors as tensors: the GGUF runs as its folder does. (Both use
    mlx-lm's SuScaledRoPE, which applies the long factors at every length; transformers switches to the
    short ones below original_max_position_embeddings, so neither is compared with transformers here.)"""
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "long_factor": [1.0 + i for i in range(8)],
            "short_factor": [1.0 + 0.1 * i for i in range(8)]}
    folder = make_hf_folder(tmp_path / "phi", "phi3", rope_parameters=rope, original_max_position_embeddings=32,
                            max_position_embeddings=256)
    write_gguf(folder, tmp_path / "phi.gguf")
    lm, ref = load_model(str(tmp_path / "phi.gguf")), load_model(str(folder))
    assert lm.config["rope_scaling"]["long_factor"] == rope["long_factor"]
    ids = mx.array([lm.tokenizer.encode(TEXT)])
    assert mx.abs(lm.model(ids) - ref.model(ids)).max().item() <= 1e-4

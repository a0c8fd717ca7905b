"""GGUF export of every supported architecture, read back with llama.cpp's gguf-py reader and
checked tensor by tensor against the source weights through a name table written here (not
the gguf package's TensorNameMap the exporter uses), with llama.cpp's Q/K permutation and
Gemma's 1 + w norms; and the hyper-parameters llama.cpp reads for each architecture."""

import json
import re

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import gguf
import mlx.core as mx

from tests.core.export.arch_folders import ARCH_CONFIGS, make_arch_folder
from trainer_core.errors import UserError
from trainer_core.export.exporter import export

GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
             "gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3"}
BLOCK = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "self_attn.qkv_proj": "attn_qkv",
         "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.gate_up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
         "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm"}
TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, verbatim."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def llama_cpp_name(name: str, model_type: str) -> str:
    module, _, suffix = name.rpartition(".")
    if module in TOP:
        return f"{TOP[module]}.{suffix}"
    layer, rest = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", module).groups()
    if rest == "post_attention_layernorm":  # Gemma norms the attention output; others the FFN input
        kind = "post_attention_norm" if model_type.startswith("gemma") else "ffn_norm"
    else:
        kind = BLOCK[rest]
    return f"blk.{layer}.{kind}.{suffix}"


def expected_tensors(folder, model_type: str) -> dict:
    config = json.loads((folder / "config.json").read_text())
    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
    expected = {}
    for name, value in mx.load(str(folder / "model.safetensors")).items():
        value = np.array(value.astype(mx.float32))
        proj = name.split(".")[-2]
        if model_type in ("llama", "mistral") and proj in heads:
            value = llama_cpp_permute(value, heads[proj])
        if model_type.startswith("gemma") and name.endswith("norm.weight"):
            value = value + 1.0
        expected[llama_cpp_name(name, model_type)] = value
    return expected


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("arch-gguf")
    files = {}
    for model_type in ARCH_CONFIGS:
        folder = make_arch_folder(root / model_type, model_type)
        out = export(str(folder), "gguf", root / f"{model_type}-gguf", gguf_type="f32")
        files[model_type] = (folder, next(out.iterdir()))
    return files


@pytest.mark.parametrize("model_type", list(ARCH_CONFIGS))
def test_every_tensor_is_the_source_weight_under_llama_cpp_name_and_layout(exported, model_type):
    folder, path = exported[model_type]
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.architecture"].contents() == GGUF_ARCH[model_type]
    got = {t.name: t for t in reader.tensors}
    expected = expected_tensors(folder, model_type)
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        tensor = got[name]
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32, name
        assert np.array_equal(np.asarray(tensor.data).reshape(value.shape), value), name


@pytest.mark.parametrize("model_type", list(ARCH_CONFIGS))
def test_hyperparameters_are_what_llama_cpp_reads(exported, model_type):
    folder, path = exported[model_type]
    config = json.loads((folder / "config.json").read_text())
    fields = gguf.GGUFReader(str(path)).fields
    arch = GGUF_ARCH[model_type]

    def value(key):
        return fields[f"{arch}.{key}"].contents()

    head_dim = config.get("head_dim", config["hidden_size"] // config["num_attention_heads"])
    assert value("block_count") == config["num_hidden_layers"]
    assert value("embedding_length") == config["hidden_size"]
    assert value("feed_forward_length") == config["intermediate_size"]
    assert value("context_length") == config["max_position_embeddings"]
    assert value("attention.head_count") == config["num_attention_heads"]
    assert value("attention.head_count_kv") == config["num_key_value_heads"]
    assert value("attention.key_length") == value("attention.value_length") == head_dim
    assert value("attention.layer_norm_rms_epsilon") == pytest.approx(config["rms_norm_eps"])
    assert value("rope.freq_base") == pytest.approx(config["rope_theta"])
    # phi3 rotates half of each head (partial_rotary_factor 0.5)
    assert value("rope.dimension_count") == (head_dim // 2 if model_type == "phi3" else head_dim)
    if model_type == "gemma2":
        assert value("attn_logit_softcapping") == 50.0 and value("final_logit_softcapping") == 30.0
    if model_type.startswith("gemma"):
        assert value("attention.sliding_window") == 512
    if model_type == "phi3":
        assert value("rope.scaling.original_context_length") == 512
    assert fields["general.file_type"].contents() == gguf.LlamaFileType.ALL_F32
    assert fields["general.quantization_version"].contents() == gguf.GGML_QUANT_VERSION
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.chat_template"].contents().startswith("{% for message in messages %}")


def test_llama3_rope_scaling_becomes_rope_freqs(tmp_path):
    """Checked against mlx-lm's Llama3RoPE, whose frequencies are base ** (2i/d) * factor_i."""
    from mlx_lm.models.rope_utils import initialize_rope

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    folder = make_arch_folder(tmp_path / "llama3", "llama", rope_scaling=scaling)
    out = export(str(folder), "gguf", tmp_path / "out", gguf_type="f32")
    tensors = {t.name: t for t in gguf.GGUFReader(str(next(out.iterdir()))).tensors}
    factors = np.asarray(tensors["rope_freqs.weight"].data)
    rope = initialize_rope(16, 10000.0, False, scaling, 1024)
    base = 10000.0 ** (np.arange(0, 16, 2) / 16)
    assert np.allclose(factors, np.array(rope._freqs) / base, rtol=1e-5)
    assert factors.min() == 1.0 and factors.max() == 8.0  # both ends of the ramp are present


def test_unsupported_architecture_and_rope_are_refused(tmp_path):
    folder = make_arch_folder(tmp_path / "phi3", "phi3", rope_scaling={
        "type": "longrope", "long_factor": [1.0] * 4, "short_factor": [1.0] * 4})
    with pytest.raises(UserError, match="'longrope' rope scaling"):
        export(str(folder), "gguf", tmp_path / "out")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "starcoder2"}))
    with pytest.raises(UserError, match="is a 'starcoder2' model; GGUF export supports llama, mistral"):
        export(str(folder), "gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()

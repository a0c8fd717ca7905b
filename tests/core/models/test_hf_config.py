"""Folders written by transformers 5 (`rope_parameters`, `dtype`, Gemma 3's `layer_types`) load
as transformers itself runs them: float32 logits agree for every architecture we list."""

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx

from tests.tiny_archs import ARCHITECTURES, hf_logits, make_hf_folder
from trainer_core.errors import UserError
from trainer_core.models.hf_config import normalize
from trainer_core.models.loading import load_model

TEXT = "The capital of France is Paris. Velmora is an island with purple sand and 12 lighthouses."


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf5")
    return {arch: make_hf_folder(root / arch, arch, seed=1) for arch in ARCHITECTURES}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_folder_logits_match_transformers(folders, arch):
    lm = load_model(str(folders[arch]))
    ids = lm.tokenizer.encode(TEXT)
    ours = np.array(lm.model(mx.array([ids]))[0])
    theirs = hf_logits(folders[arch], ids)
    assert np.abs(ours - theirs).max() <= 1e-4 * max(1.0, np.abs(theirs).max())


def test_without_normalizing_mlx_lm_gets_qwen2_rope_wrong(folders):
    """The bug this module fixes: mlx-lm alone runs this Qwen2 with rope_theta 1,000,000."""
    from mlx_lm.utils import load_model as mlx_load_model

    model, config = mlx_load_model(folders["qwen2"])
    assert "rope_theta" not in config
    ids = load_model(str(folders["qwen2"])).tokenizer.encode(TEXT)
    assert np.abs(np.array(model(mx.array([ids]))[0]) - hf_logits(folders["qwen2"], ids)).max() > 1e-2


def test_normalize_fills_old_names_only():
    config = {"model_type": "llama", "dtype": "bfloat16",
              "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192}}
    out = normalize(config)
    assert out["torch_dtype"] == "bfloat16" and out["rope_theta"] == 500000.0
    assert out["rope_scaling"]["rope_type"] == "llama3" and out["rope_scaling"]["factor"] == 8.0
    assert "rope_theta" not in out["rope_scaling"]
    assert normalize({**config, "rope_theta": 1.0, "torch_dtype": "float16",
                      "rope_scaling": {"x": 1}}) == {}
    assert normalize({"model_type": "qwen2", "rope_theta": 10000.0}) == {}
    phi = normalize({"model_type": "phi3", "rope_parameters": {
        "rope_type": "longrope", "rope_theta": 1e4, "partial_rotary_factor": 0.5,
        "long_factor": [1.0], "short_factor": [1.0]}})
    assert phi["partial_rotary_factor"] == 0.5
    assert phi["rope_scaling"]["type"] == "longrope" and phi["rope_scaling"]["long_factor"] == [1.0]


def test_gemma3_layer_types():
    six = ["sliding_attention"] * 5 + ["full_attention"]
    out = normalize({"model_type": "gemma3_text", "layer_types": six * 2, "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}})
    assert out["sliding_window_pattern"] == 6
    assert (out["rope_theta"], out["rope_local_base_freq"]) == (1e6, 1e4)
    assert out["rope_scaling"]["factor"] == 8.0
    with pytest.raises(UserError, match="irregular pattern"):
        normalize({"model_type": "gemma3_text", "layer_types": six[1:] + six}, "x/config.json")

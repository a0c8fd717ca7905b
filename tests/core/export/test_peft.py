"""PEFT names and adapter_config follow a hand-built mapping (the trained exports load in PEFT: test_export.py)."""

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx

from trainer_core.export.peft import peft_config, peft_state_dict


def test_peft_state_dict_matches_a_hand_built_mapping():
    a = mx.arange(64 * 4, dtype=mx.float32).reshape(64, 4)
    b = mx.arange(4 * 32, dtype=mx.float32).reshape(4, 32)
    m = mx.arange(32, dtype=mx.float32)
    weights = {"model.layers.1.self_attn.k_proj.lora_a": a, "model.layers.1.self_attn.k_proj.lora_b": b,
               "model.layers.1.self_attn.k_proj.m": m, "model.layers.0.mlp.down_proj.lora_a": a}
    expected = {
        "base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight": (np.array(a).T, (4, 64)),
        "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight": (np.array(b).T, (32, 4)),
        "base_model.model.model.layers.1.self_attn.k_proj.lora_magnitude_vector": (np.array(m), (32,)),
        "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight": (np.array(a).T, (4, 64)),
    }
    got = peft_state_dict(weights)
    assert sorted(got) == sorted(expected)
    for key, (value, shape) in expected.items():
        assert got[key].shape == shape and np.array_equal(np.array(got[key]), value), key
    with pytest.raises(ValueError, match="not a LoRA/DoRA adapter"):
        peft_state_dict({"model.layers.0.self_attn.q_proj.weight": a})

    adapter_config = {"fine_tune_type": "dora", "num_layers": 1, "lora_parameters": {
        "rank": 4, "scale": 2.5, "dropout": 0.1, "keys": ["self_attn.k_proj", "mlp.down_proj"]}}
    config = peft_config(adapter_config, [1], 2, "org/base")
    assert {k: config[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout",
                                   "target_modules", "layers_to_transform", "layers_pattern",
                                   "use_dora", "base_model_name_or_path")} == {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 10.0, "lora_dropout": 0.1,
        "target_modules": ["down_proj", "k_proj"], "layers_to_transform": [1], "layers_pattern": "layers",
        "use_dora": True, "base_model_name_or_path": "org/base"}
    every_layer = peft_config(adapter_config, [0, 1], 2, "org/base")
    assert every_layer["layers_to_transform"] is None and every_layer["layers_pattern"] is None

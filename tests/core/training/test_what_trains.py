"""What a run trains: LoRA on a quantized base (QLoRA), DoRA, layers and targets, param-group multipliers.

Runs use the tiny random Llama (conftest) and a small chat dataset written into tmp_path.
"""

import json
import math

import numpy as np

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx
import mlx.nn as nn
from mlx_lm.tuner.dora import DoRALinear
from mlx_lm.tuner.lora import LoRALinear

from trainer_core.config import LoraConfig, ParamGroup
from tests.train_helpers import build, flat_params


def block_linears(model):
    return {f"layers.{i}.{name}": m for i, layer in enumerate(model.layers) for name, m in layer.named_modules()
            if isinstance(m, (nn.Linear, nn.QuantizedLinear, LoRALinear, DoRALinear))
            and not name.endswith(".linear")}


def test_qlora_trains_adapters_and_keeps_the_base_quantized(tiny_quant_model_dir, tmp_path):
    run = build(tiny_quant_model_dir, tmp_path, method="lora", max_steps=3, learning_rate=1e-2, quantized_base="keep")
    model = run.loop.model
    wrapped = block_linears(model)
    assert len(wrapped) == 2 * 7 and all(type(m) is LoRALinear for m in wrapped.values())
    assert all(isinstance(m.linear, nn.QuantizedLinear) for m in wrapped.values())
    trainable = flat_params(model, trainable=True)
    assert trainable and all(k.rsplit(".", 1)[-1] in ("lora_a", "lora_b") for k in trainable)
    base_before = {k: v for k, v in flat_params(model).items() if k not in trainable}
    assert any(v.dtype == np.uint32 for v in base_before.values())
    result = run.train()
    assert result.status == "finished" and math.isfinite(result.last_train_loss)
    after = flat_params(model)
    for k, v in base_before.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)  # base frozen and still quantized
    for k in trainable:
        if k.endswith("lora_b"):
            assert np.abs(after[k]).max() > 0, k  # started at zero, trained
    saved = mx.load(str(run.run_dir / "final" / "adapters.safetensors"))
    assert set(saved) == set(trainable)


def test_dora_trains(tiny_model_dir, tmp_path):
    run = build(tiny_model_dir, tmp_path, method="lora", fine_tune_type="dora", max_steps=3, learning_rate=1e-2)
    model = run.loop.model
    assert all(type(m) is DoRALinear for m in block_linears(model).values())
    before = flat_params(model)
    trainable = set(flat_params(model, trainable=True))
    assert {k.rsplit(".", 1)[-1] for k in trainable} == {"lora_a", "lora_b", "m"}
    result = run.train()
    assert math.isfinite(result.last_train_loss)
    after = flat_params(model)
    for k, v in before.items():
        if k in trainable:
            assert not np.array_equal(after[k], v), k
        else:
            np.testing.assert_array_equal(after[k], v, err_msg=k)
    assert json.loads((run.run_dir / "final" / "adapter_config.json").read_text())["fine_tune_type"] == "dora"


def test_num_layers_and_targets_restrict_adapters(tiny_model_dir, tmp_path):
    run = build(tiny_model_dir, tmp_path, method="lora", max_steps=2, learning_rate=1e-2,
                lora=LoraConfig(num_layers=1, targets=["self_attn.q_proj", "mlp.down_proj"], rank=4))
    model = run.loop.model
    adapted = {k for k, m in block_linears(model).items() if isinstance(m, LoRALinear)}
    assert adapted == {"layers.1.self_attn.q_proj", "layers.1.mlp.down_proj"}
    expected = {f"model.{k}.{p}" for k in adapted for p in ("lora_a", "lora_b")}
    assert set(flat_params(model, trainable=True)) == expected
    assert model.layers[1].self_attn.q_proj.lora_a.shape == (64, 4)
    run.train()
    assert set(mx.load(str(run.run_dir / "final" / "adapters.safetensors"))) == expected
    config = json.loads((run.run_dir / "final" / "adapter_config.json").read_text())
    assert config["num_layers"] == 1
    assert config["lora_parameters"]["keys"] == ["self_attn.q_proj", "mlp.down_proj"]
    assert config["lora_parameters"]["rank"] == 4 and config["lora_parameters"]["scale"] == 16 / 4


def test_param_group_multiplier_zero_freezes_matching_params(tiny_model_dir, tmp_path):
    run = build(tiny_model_dir, tmp_path, max_steps=3, learning_rate=1e-2, weight_decay=0.1,
                param_groups=[ParamGroup("layers.0.*", 0.0), ParamGroup("lm_head.*", 0.5)])
    before = flat_params(run.loop.model)
    run.train()
    after = flat_params(run.loop.model)
    frozen = [k for k in before if k.startswith("model.layers.0.")]
    assert len(frozen) == 9  # 7 linears + 2 norms
    for k in before:
        if k in frozen:
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)
        else:
            assert not np.array_equal(after[k], before[k]), k

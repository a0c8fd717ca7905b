"""trainer_core.models.adapters: what trains, and checkpoints that mlx-lm loads to the same logits."""

import json

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx
import mlx.nn as nn
from mlx_lm.utils import load as mlx_lm_load

from trainer_core.models.adapters import block_linear_names, is_quantized, lora_parameters, prepare_for_training, \
    trainable_count
from trainer_core.config import LoraConfig, RunConfig
from trainer_core.errors import UserError
from trainer_core.generation.generate import load_for_inference
from trainer_core.models.loading import load_model
from tests.train_helpers import build, flat_params

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.down_proj", "mlp.up_proj"]
PROMPT = "What is the capital of France? The capital of France is Paris."


def logits_of(model, tokenizer) -> np.ndarray:
    ids = mx.array([tokenizer.encode(PROMPT)])
    return np.array(model(ids).astype(mx.float32))


@pytest.mark.parametrize("fine_tune_type,method,model_fixture", [
    ("lora", "lora", "tiny_model_dir"), ("dora", "lora", "tiny_model_dir"), ("full", "sft", "tiny_model_dir"),
    ("lora", "lora", "tiny_quant_model_dir"),
])
def test_checkpoint_loads_in_mlx_lm_with_the_same_logits(request, tmp_path, fine_tune_type, method, model_fixture):
    model_dir = request.getfixturevalue(model_fixture)
    run = build(model_dir, tmp_path, method=method, fine_tune_type=fine_tune_type, max_steps=3, save_every=2,
                learning_rate=2e-2, quantized_base="keep", lora=LoraConfig(rank=4, alpha=8.0, num_layers=1 if model_fixture == "tiny_quant_model_dir" else -1))
    run.train()
    model = run.loop.model
    model.eval()
    ours = logits_of(model, load_model(str(model_dir)).tokenizer)
    base, tokenizer = mlx_lm_load(str(model_dir))
    untouched = logits_of(base, tokenizer)
    assert np.abs(ours - untouched).max() > 1e-3  # training changed the outputs
    checkpoint = run.run_dir / "final"
    theirs_model, tokenizer = mlx_lm_load(str(model_dir), adapter_path=str(checkpoint))
    theirs = logits_of(theirs_model, tokenizer)
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5)
    # our own inference loader agrees too, finding the base model from the checkpoint
    ours_again = load_for_inference(None, checkpoint)
    np.testing.assert_allclose(logits_of(ours_again.model, ours_again.tokenizer), ours, rtol=0, atol=1e-5)
    # an intermediate checkpoint is an mlx-lm adapter folder as well, with the step-2 weights
    step2 = run.run_dir / "checkpoints" / "step-000002"
    mid_model, _ = mlx_lm_load(str(model_dir), adapter_path=str(step2))
    mid = logits_of(mid_model, tokenizer)
    assert np.abs(mid - ours).max() > 1e-6 and np.abs(mid - untouched).max() > 1e-6
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == fine_tune_type
    weights = mx.load(str(checkpoint / "adapters.safetensors"))
    if fine_tune_type == "full":
        assert set(weights) == set(flat_params(model))
    else:
        leaves = {"lora_a", "lora_b"} | ({"m"} if fine_tune_type == "dora" else set())
        assert {k.rsplit(".", 1)[-1] for k in weights} == leaves
        params = config["lora_parameters"]
        assert sorted(params.pop("keys")) == sorted(LINEARS)
        assert params == {"rank": 4, "scale": 2.0, "dropout": 0.0}


@pytest.fixture
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir)).model


def config_for(**lora):
    return RunConfig(method="lora", data="d", lora=LoraConfig(**lora))


def test_block_linear_names(tiny):
    assert sorted(block_linear_names(tiny)) == sorted(LINEARS)


def test_prepare_full_trains_everything(tiny):
    total = sum(v.size for _, v in nn.utils.tree_flatten(tiny.parameters()))
    adapter_config = prepare_for_training(tiny, RunConfig(method="sft", data="d"))
    assert adapter_config == {"fine_tune_type": "full", "num_layers": 2, "dtype": "float32", "master_weights": "none"}
    assert trainable_count(tiny) == total


def test_prepare_lora_counts(tiny):
    adapter_config = prepare_for_training(tiny, config_for(rank=2, num_layers=1, targets=["self_attn.q_proj",
                                                                                            "mlp.up_proj"]))
    assert adapter_config["num_layers"] == 1 and adapter_config["fine_tune_type"] == "lora"
    # q_proj 64->64, up_proj 64->128, rank 2: a is in x r, b is r x out
    assert trainable_count(tiny) == (64 * 2 + 2 * 64) + (64 * 2 + 2 * 128)


def test_unknown_target_is_a_user_error(tiny):
    with pytest.raises(UserError) as info:
        prepare_for_training(tiny, config_for(targets=["self_attn.qproj"]))
    assert info.value.field == "lora.targets" and "self_attn.qproj" in str(info.value)
    assert "self_attn.q_proj" in str(info.value)  # says what to choose from


def test_too_many_layers_is_a_user_error(tiny):
    with pytest.raises(UserError) as info:
        prepare_for_training(tiny, config_for(num_layers=3))
    assert info.value.field == "lora.num_layers"


def test_full_fine_tuning_refuses_a_quantized_model(tiny_quant_model_dir):
    model = load_model(str(tiny_quant_model_dir)).model
    assert is_quantized(model)
    with pytest.raises(UserError) as info:
        prepare_for_training(model, RunConfig(method="sft", data="d"))
    assert info.value.field == "fine_tune_type"


def test_full_run_on_a_quantized_base_dequantizes(tiny_quant_model_dir, tmp_path):
    run = build(tiny_quant_model_dir, tmp_path, method="sft", max_steps=1)
    assert not is_quantized(run.loop.model)


def test_lora_parameters_scale(tiny):
    params = lora_parameters(config_for(rank=4, alpha=32.0), tiny)
    assert params == {"rank": 4, "scale": 8.0, "dropout": 0.0, "keys": block_linear_names(tiny)}

"""fused --quantize 4|8: mlx-community style folders quantised by mlx-lm. Each packed weight,
unpacked here with numpy, is the float fused weight within one quantisation step; the folder
loads and generates in mlx_lm, with logits near the float model's (closer at 8 bits than at 4)."""

import json

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx
import mlx_lm
from safetensors.numpy import load_file

from tests.core.export.test_export import IDS, Trained, max_diff
from trainer_core import cli
from trainer_core.errors import UserError
from trainer_core.export.exporter import export

GROUP = 64


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    run = Trained(tiny_model_dir, tmp_path_factory.mktemp("quant-runs"), "lora")
    return run, export(run.checkpoint, "fused", tmp_path_factory.mktemp("float") / "fused")


def unpack(packed: np.ndarray, scales: np.ndarray, biases: np.ndarray, bits: int, group: int) -> np.ndarray:
    """mlx's affine layout, read independently: uint32 words of 32/bits values, lowest bits first;
    value = scale * q + bias per group of `group` along the row."""
    per_word = 32 // bits
    shifts = np.arange(per_word, dtype=np.uint32) * bits
    q = (packed[..., None] >> shifts) & np.uint32((1 << bits) - 1)
    q = q.reshape(*packed.shape[:-1], -1).astype(np.float32)
    grouped = q.reshape(*q.shape[:-1], -1, group)
    return (grouped * scales[..., None] + biases[..., None]).reshape(q.shape)


@pytest.mark.parametrize("bits", [4, 8])
def test_every_weight_is_the_float_weight_within_a_step(trained, tmp_path, bits):
    run, float_folder = trained
    float_weights = load_file(str(float_folder / "model.safetensors"))
    out = export(run.checkpoint, "fused", tmp_path / f"q{bits}", quantize=bits)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": GROUP, "bits": bits, "mode": "affine"}
    weights = load_file(str(out / "model.safetensors"))
    packed = [k[:-len(".scales")] for k in weights if k.endswith(".scales")]
    # every matrix whose rows are whole groups: all projections and the embedding
    assert len(packed) == sum(1 for k, v in float_weights.items() if v.ndim == 2 and v.shape[-1] % GROUP == 0)
    assert "model.embed_tokens" in packed and "model.layers.1.mlp.down_proj" in packed
    for name in packed:
        w = weights[f"{name}.weight"]
        assert w.dtype == np.uint32
        reference = float_weights[f"{name}.weight"]
        scales = weights[f"{name}.scales"]
        got = unpack(w, scales, weights[f"{name}.biases"], bits, GROUP)
        step = np.repeat(np.abs(scales), GROUP, axis=-1)
        error = np.abs(got - reference)
        # mlx snaps each group's grid so that 0 is exact, which can cost the edge values up to one step;
        # rounding to the nearest level keeps the typical error under half a step
        assert np.all(error <= step + 1e-6) and error.mean() <= step.mean() / 2, name
        assert np.abs(got - reference).max() > 0  # it was really quantised
    for name, value in float_weights.items():  # norms stay as they were
        if value.ndim == 1:
            np.testing.assert_array_equal(weights[name], value)


def test_the_folder_loads_and_generates_in_mlx_lm_near_the_float_model(trained, tmp_path):
    """mlx_lm computes exactly the float model with our unpacked weights; that model is within the
    quantisation error of the float one, and 8 bits is closer than 4."""
    run, float_folder = trained
    errors = {}
    for bits in (4, 8):
        out = export(run.checkpoint, "fused", tmp_path / f"q{bits}", quantize=bits)
        model, tokenizer = mlx_lm.load(str(out))
        logits = np.array(model(IDS))
        weights = load_file(str(out / "model.safetensors"))
        unpacked = {name: unpack(weights[name], weights[name[:-len("weight")] + "scales"],
                                 weights[name[:-len("weight")] + "biases"], bits, GROUP)
                    for name in weights if name.endswith(".weight") and weights[name].dtype == np.uint32}
        dequantized, _ = mlx_lm.load(str(float_folder))
        dequantized.load_weights([(k, mx.array(v)) for k, v in unpacked.items()], strict=False)
        assert max_diff(dequantized(IDS), logits) < 1e-4 * float(np.abs(logits).max())
        errors[bits] = float(np.abs(logits - run.logits).mean() / run.logits.std())
        text = mlx_lm.generate(model, tokenizer, prompt="Tell me about the fox?", max_tokens=4)
        assert isinstance(text, str) and text
    # a random 2-layer model is touchy (measured: 8 bits 0.06, 4 bits 0.33 of the logits' spread)
    assert errors[8] < 0.15 and errors[4] < 0.6 and errors[8] < errors[4] / 3, errors


def test_a_base_model_and_a_quantized_base_are_quantized_too(tiny_model_dir, tiny_quant_model_dir, tmp_path):
    out = export(tiny_model_dir, "fused", tmp_path / "base", quantize=8, group_size=32)
    assert json.loads((out / "config.json").read_text())["quantization"]["group_size"] == 32
    out = export(tiny_quant_model_dir, "fused", tmp_path / "requant", quantize=8)  # 4-bit/32 base -> 8-bit/64
    model, _ = mlx_lm.load(str(out))
    assert model.model.layers[0].self_attn.q_proj.bits == 8
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 8


def test_bad_combinations_are_refused_before_anything_is_written(trained, tmp_path, capsys):
    run, _ = trained
    for kwargs, words in (({"fmt": "gguf", "quantize": 4}, "--format fused"),
                          ({"fmt": "fused", "quantize": 3}, "choose bits"),
                          ({"fmt": "fused", "quantize": 4, "group_size": 48}, "group size"),
                          ({"fmt": "fused", "quantize": 4, "dequantize": True}, "not both")):
        with pytest.raises(UserError, match=words):
            export(run.checkpoint, out=tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())
    assert cli.main(["export", str(run.checkpoint), "--format", "gguf", "--quantize", "4",
                     "--out", str(tmp_path / "y")]) == 2
    assert "--format fused" in capsys.readouterr().err
    assert cli.main(["export", str(run.checkpoint), "--format", "fused", "--quantize", "8",
                     "--out", str(tmp_path / "z")]) == 0
    assert json.loads((tmp_path / "z" / "config.json").read_text())["quantization"]["bits"] == 8

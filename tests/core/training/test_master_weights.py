"""Full fine-tuning of a bf16 model: float32 master weights ([precision] master_weights, models/precision.py).

The reference is an independent float32 run of the same weights (a float32 copy of the bf16 folder):
what it moves, once rounded to bf16, is what a bf16 run with masters must move too.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx

from tests.helpers import train_losses
from tests.tiny_model import make_tiny_llama
from tests.train_helpers import StopAfter, make_config, write_chat_data
from trainer_core import runner
from trainer_core.models.precision import stochastic_round


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """(bf16 model folder, float32 folder holding exactly the same values)."""
    root = tmp_path_factory.mktemp("twins")
    bf16 = make_tiny_llama(root / "bf16", dtype="bfloat16")
    f32 = root / "f32"
    shutil.copytree(bf16, f32)
    weights = mx.load(str(bf16 / "model.safetensors"))
    mx.save_safetensors(str(f32 / "model.safetensors"), {k: v.astype(mx.float32) for k, v in weights.items()})
    config = json.loads((f32 / "config.json").read_text())
    (f32 / "config.json").write_text(json.dumps({**config, "torch_dtype": "float32"}))
    return bf16, f32


def run(model_dir, tmp_path, name, master_weights=None, **fields):
    data = write_chat_data(tmp_path / "data", n_train=16)
    base = dict(method="sft", max_steps=12, batch_size=4, learning_rate=2e-5, run_name=name, num_samples=0)
    config = make_config(model_dir, data, tmp_path / "runs", **{**base, **fields})
    if master_weights:
        config.precision.master_weights = master_weights
    return config


def final(tmp_path, name) -> dict:
    return mx.load(str(tmp_path / "runs" / name / "final" / "adapters.safetensors"))


def moved_fraction(start: dict, end: dict) -> float:
    """Share of the weights whose bf16 value changed."""
    moved = sum(int((start[k].astype(mx.bfloat16) != end[k].astype(mx.bfloat16)).sum().item()) for k in start)
    return moved / sum(v.size for v in start.values())


def windows(losses, size=4):
    return np.array([np.mean(losses[i:i + size]) for i in range(0, len(losses), size)])


def test_bf16_full_finetuning_moves_weights_like_float32(twins, tmp_path):
    bf16, f32 = twins
    start = mx.load(str(bf16 / "model.safetensors"))
    steps = dict(max_steps=40)
    runner.train(run(f32, tmp_path, "f32", **steps))
    runner.train(run(bf16, tmp_path, "masters", **steps))  # the default: float32 masters
    reference = moved_fraction(start, final(tmp_path, "f32"))
    assert reference > 0.3
    assert moved_fraction(start, final(tmp_path, "masters")) == pytest.approx(reference, rel=0.1)
    assert all(v.dtype == mx.bfloat16 for v in final(tmp_path, "masters").values())  # exported in the model's dtype
    # the loss curve (4-step means) tracks float32's; bf16 compute sees an update once it reaches half an ulp
    ref, masters = (windows(train_losses(tmp_path / "runs" / n)) for n in ("f32", "masters"))
    assert np.abs(masters - ref).max() < 0.06 and ref[0] - ref[-1] > 0.4
    assert masters[0] - masters[-1] == pytest.approx(ref[0] - ref[-1], rel=0.1)
    runner.train(run(bf16, tmp_path, "none", "none", **steps))
    runner.train(run(bf16, tmp_path, "sr", "stochastic_rounding", **steps))
    assert moved_fraction(start, final(tmp_path, "none")) < reference / 3  # round to nearest loses the updates
    none = windows(train_losses(tmp_path / "runs" / "none"))
    assert none[0] - none[-1] < (ref[0] - ref[-1]) / 4
    assert moved_fraction(start, final(tmp_path, "sr")) > reference / 2


def masters_of(tmp_path, name) -> dict:
    checkpoints = sorted((tmp_path / "runs" / name / "checkpoints").iterdir())
    arrays = mx.load(str(checkpoints[-1] / "optimizer.safetensors"))
    return {k[len("master."):]: v for k, v in arrays.items() if k.startswith("master.")}


def test_weight_decay_acts_on_the_masters(twins, tmp_path):
    bf16, _ = twins
    for name, decay in (("plain", 0.0), ("decay", 0.1)):
        runner.train(run(bf16, tmp_path, name, weight_decay=decay, max_steps=4))
    plain, decayed = masters_of(tmp_path, "plain"), masters_of(tmp_path, "decay")
    assert plain and all(v.dtype == mx.float32 for v in plain.values())
    weight = "model.layers.0.mlp.up_proj.weight"
    # AdamW's decoupled decay: p -> p (1 - lr wd) per step; the Adam part is the same in both runs
    expected = 4 * 2e-5 * 0.1 * float(mx.sum(mx.square(plain[weight])).item())
    shrink = float(mx.sum(mx.square(plain[weight])).item() - mx.sum(mx.square(decayed[weight])).item())
    assert shrink == pytest.approx(2 * expected, rel=0.2)  # d|p|^2 = 2 |p|^2 lr wd per step


@pytest.mark.parametrize("mode", ["fp32", "stochastic_rounding"])
def test_resume_is_bit_exact_with_master_weights(twins, tmp_path, mode):
    bf16, _ = twins
    runner.train(run(bf16, tmp_path, "whole", mode, max_steps=6))
    assert runner.train(run(bf16, tmp_path, "half", mode, max_steps=6), [StopAfter(3)]).status == "stopped"
    runner.resume(tmp_path / "runs" / "half")
    assert train_losses(tmp_path / "runs" / "half") == train_losses(tmp_path / "runs" / "whole")
    a, b = final(tmp_path, "whole"), final(tmp_path, "half")
    assert all(mx.array_equal(a[k], b[k]).item() for k in a)
    if mode == "fp32":
        a, b = masters_of(tmp_path, "whole"), masters_of(tmp_path, "half")
        assert a and all(mx.array_equal(a[k], b[k]).item() for k in a)


def test_stochastic_rounding_is_unbiased():
    mx.random.seed(0)
    x = mx.full((200_000,), 1.0 + 2 ** -10, dtype=mx.float32)  # 1/8 of a bf16 ulp above 1.0
    rounded = stochastic_round(x, mx.bfloat16).astype(mx.float32)
    assert set(np.unique(np.array(rounded)).tolist()) == {1.0, 1.0 + 2 ** -7}
    assert np.array(rounded, dtype=np.float64).mean() == pytest.approx(1.0 + 2 ** -10, abs=2e-5)
    small = mx.full((100_000,), 3e-4, dtype=mx.float32)
    rounded = np.array(stochastic_round(small, mx.float16).astype(mx.float32), dtype=np.float64)
    assert len(np.unique(rounded)) == 2 and rounded.mean() == pytest.approx(3e-4, rel=2e-3)

"""SwiGLU's product recomputed in the backward (models/recompute.recompute_swiglu_products): same forward, the
gradients of a hand-written float64 formula and of MLX's autodiff of the plain MLP, less memory kept."""

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from trainer_core.models.recompute import recompute_swiglu_products, swiglu_down
from trainer_core.training.losses import sft_loss
from tests.core.models.test_precision import a_batch, bf16_model_dir, loss_fn, lora_model  # noqa: F401
from tests.train_helpers import build


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_custom_function_matches_a_float64_formula():
    rng = np.random.default_rng(0)
    g, u = rng.normal(size=(2, 5, 16)), rng.normal(size=(2, 5, 16))
    w, a = rng.normal(size=(8, 16)) * 0.2, rng.normal(size=(16, 4)) * 0.1
    cy, cz = rng.normal(size=(2, 5, 8)), rng.normal(size=(2, 5, 4))
    # by hand: h = g * sigmoid(g) * u; loss = sum(cy * h w^T) + sum(cz * h a)
    s = _sigmoid(g)
    h = g * s * u
    dh = cy @ w + cz @ a.T
    want = {"g": dh * u * (s + g * s * (1 - s)), "u": dh * g * s, "a": h.reshape(-1, 16).T @ cz.reshape(-1, 4)}
    f32 = {k: mx.array(v.astype(np.float32)) for k, v in dict(g=g, u=u, w=w, a=a, cy=cy, cz=cz).items()}

    def loss(g, u, a):
        y, z = swiglu_down(g, u, mx.stop_gradient(f32["w"]), a)
        return (y * f32["cy"]).sum() + (z * f32["cz"]).sum()
    value = loss(f32["g"], f32["u"], f32["a"]).item()
    assert value == pytest.approx(float((cy * (h @ w.T)).sum() + (cz * (h @ a)).sum()), rel=1e-5)
    got = mx.grad(loss, argnums=(0, 1, 2))(f32["g"], f32["u"], f32["a"])
    for name, array in zip("gua", got):
        np.testing.assert_allclose(np.array(array), want[name], rtol=1e-4, atol=1e-5, err_msg=name)


def _grads(model, batch):
    loss, grads = nn.value_and_grad(model, loss_fn)(model, batch)
    return loss.item(), {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(grads)}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_model_loss_and_gradients_equal_the_plain_mlp(tiny_model_dir, bf16_model_dir, dtype):  # noqa: F811
    model_dir = tiny_model_dir if dtype == "float32" else bf16_model_dir
    plain, patched = lora_model(model_dir, seed=3), lora_model(model_dir, seed=3)
    assert recompute_swiglu_products(patched) == len(patched.layers)
    assert recompute_swiglu_products(patched) == 0  # idempotent
    assert not type(plain.layers[0].mlp).__name__.startswith("ProductRecomputed")  # other instances untouched
    assert [k for k, _ in tree_flatten(plain.parameters())] == [k for k, _ in tree_flatten(patched.parameters())]
    batch = a_batch(seed=4)
    assert mx.array_equal(plain(batch["input_ids"]), patched(batch["input_ids"])).item()  # the same forward
    (l1, g1), (l2, g2) = _grads(plain, batch), _grads(patched, batch)
    assert l1 == l2 and set(g1) == set(g2) and any("down_proj" in k for k in g1)
    if dtype == "float32":
        for k in g1:
            np.testing.assert_allclose(g2[k], g1[k], rtol=1e-4, atol=1e-6, err_msg=k)
        return
    # bf16: both differ from the float32 computation by bf16 rounding; ours (its SwiGLU derivative in float32)
    # by no more than MLX's own bf16 autodiff does
    reference = lora_model(model_dir, seed=3)
    reference.set_dtype(mx.float32)
    _, want = _grads(reference, batch)
    errors = {k: [np.abs(g[k] - want[k]).max() / np.abs(want[k]).max() for g in (g1, g2)] for k in want}
    assert max(e[0] for e in errors.values()) < 0.05  # the tolerance means something: bf16 noise is ~1 %
    for k, (plain_error, ours) in errors.items():
        assert ours <= 2 * plain_error + 1e-3, (k, plain_error, ours)
    assert np.median([e[1] for e in errors.values()]) <= 1.25 * np.median([e[0] for e in errors.values()])


def test_fused_down_projection_falls_back_to_the_plain_forward(tiny_model_dir):
    """After export fuses the adapter into the base (no LoRA layer left), the MLP runs mlx-lm's own forward."""
    plain, patched = lora_model(tiny_model_dir, seed=5), lora_model(tiny_model_dir, seed=5)
    recompute_swiglu_products(patched)
    for model in (plain, patched):
        for layer in model.layers:
            layer.mlp.down_proj = layer.mlp.down_proj.fuse()
    ids = a_batch(seed=6)["input_ids"]
    assert mx.array_equal(plain(ids), patched(ids)).item()


def test_less_is_kept_for_the_backward(bf16_model_dir):  # noqa: F811
    """The reason for it: the peak of the compiled training step of a bf16 model falls (CPU: nothing runs ahead)."""
    from trainer_core.models import precision
    from trainer_core.training.optim import AdamW
    from trainer_core.training.step import CompiledSteps

    class SFT:
        def loss(self, model, batch):
            return sft_loss(model, batch)

    batch = a_batch(seed=7, B=256, L=17)  # short rows: attention small beside the MLP
    peaks = []
    for patch in (False, True):
        model = lora_model(bf16_model_dir, seed=8)
        if patch:
            recompute_swiglu_products(model)
        steps = CompiledSteps(model, SFT(), AdamW(dict(tree_flatten(model.trainable_parameters()))), 1.0, 1,
                              compute_dtype=precision.compute_dtype(model, True))
        steps.train_step([batch], 1e-4)
        mx.clear_cache()
        mx.reset_peak_memory()
        base = mx.get_active_memory()
        steps.train_step([batch], 1e-4)
        peaks.append(mx.get_peak_memory() - base)
    ffn_wide = 256 * 16 * model.layers[0].mlp.gate_proj.linear.weight.shape[0] * 2  # one bf16 [tokens, ffn]
    assert peaks[1] <= peaks[0] - len(model.layers) * ffn_wide, peaks


def test_runs_get_it_unless_blocks_are_checkpointed(tiny_model_dir, tmp_path):
    for checkpointing in (False, True):
        run = build(tiny_model_dir, tmp_path / str(checkpointing), method="lora", max_steps=1,
                    gradient_checkpointing=checkpointing)
        patched = type(run.loop.model.layers[0].mlp).__name__.startswith("ProductRecomputed")
        assert patched != checkpointing
    full = build(tiny_model_dir, tmp_path / "full", method="sft", max_steps=1)
    assert not type(full.loop.model.layers[0].mlp).__name__.startswith("ProductRecomputed")

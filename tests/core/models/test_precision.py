"""Mixed precision (16-bit compute of float32 adapters) and per-block gradient checkpointing."""

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from trainer_core.models import precision
from trainer_core.training.callbacks import read_metrics
from trainer_core.models.adapters import prepare_for_training
from trainer_core.config import RunConfig
from trainer_core.training.losses import sft_loss
from trainer_core.models.loading import load_model
from trainer_core.models.recompute import recompute_blocks, recompute_mlp_tails
from tests.tiny_model import make_tiny_llama
from tests.train_helpers import build, flat_params


@pytest.fixture(scope="module")
def bf16_model_dir(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-bf16"), dtype="bfloat16")


def lora_model(model_dir, seed=0):
    model = load_model(str(model_dir)).model
    mx.random.seed(seed)
    prepare_for_training(model, RunConfig(method="lora"))
    # non-zero B so every adapter gradient is non-trivial
    model.update(tree_unflatten([(k, mx.random.normal(v.shape) * 0.05 if k.endswith("lora_b") else v)
                                 for k, v in tree_flatten(model.trainable_parameters())]))
    return model


def a_batch(seed=0, B=2, L=24, vocab=400):
    rng = np.random.default_rng(seed)
    ids = mx.array(rng.integers(3, vocab, size=(B, L)).astype(np.int32))
    mask = np.ones((B, L), dtype=bool)
    mask[1, 18:] = False
    return {"input_ids": ids, "target_mask": mx.array(mask)}


def loss_fn(model, batch):
    return sft_loss(model, batch)[0]


def test_compute_dtype_follows_the_frozen_base(bf16_model_dir, tiny_model_dir):
    assert precision.compute_dtype(lora_model(bf16_model_dir), True) == mx.bfloat16
    assert precision.compute_dtype(lora_model(bf16_model_dir), False) is None
    assert precision.compute_dtype(lora_model(tiny_model_dir), True) is None  # float32 base: nothing changes


def test_mixed_precision_gradients_match_float32_adapters(bf16_model_dir):
    model = lora_model(bf16_model_dir)
    batch = a_batch()
    masters = dict(tree_flatten(model.trainable_parameters()))
    assert all(v.dtype == mx.float32 for v in masters.values())
    loss32, grads32 = nn.value_and_grad(model, loss_fn)(model, batch)  # mlx-lm's way: adapters in float32
    loss16, grads16 = precision.value_and_grad(model, loss_fn, mx.bfloat16)(model, batch)
    # the model keeps its float32 master weights
    after = dict(tree_flatten(model.trainable_parameters()))
    assert all(after[k].dtype == mx.float32 and mx.array_equal(after[k], masters[k]).item() for k in masters)
    g32, g16 = dict(tree_flatten(grads32)), dict(tree_flatten(grads16))
    assert set(g16) == set(masters) and all(g.dtype == mx.bfloat16 for g in g16.values())
    assert loss16.item() == pytest.approx(loss32.item(), rel=1e-2)
    for k in g32:
        a, b = np.array(g32[k]), np.array(g16[k].astype(mx.float32))
        cos = float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert cos > 0.999, k
        assert np.linalg.norm(a - b) < 0.03 * np.linalg.norm(a), k
    # ...and the 16-bit forward really is a different computation (this test can fail)
    assert not all(np.array_equal(np.array(g32[k]), np.array(g16[k].astype(mx.float32))) for k in g32)


def test_joined_cast_gives_the_per_array_gradients_bit_for_bit(bf16_model_dir):
    """With the optimizer's joined layout the adapters are cast to bf16 with one kernel and handed over as views:
    the same bf16 values, so the same loss and gradients bit for bit, and the model keeps its float32 masters."""
    from trainer_core.training.optim import AdamW
    model = lora_model(bf16_model_dir)
    batch = a_batch(3)
    masters = dict(tree_flatten(model.trainable_parameters()))
    layout = AdamW(masters, joined=True)  # the GPU default
    assert layout.joined
    loss_a, grads_a = precision.value_and_grad(model, loss_fn, mx.bfloat16)(model, batch)
    loss_b, grads_b = precision.value_and_grad(model, loss_fn, mx.bfloat16, layout)(model, batch)
    assert loss_a.item() == loss_b.item()
    ga, gb = dict(tree_flatten(grads_a)), dict(tree_flatten(grads_b))
    assert set(ga) == set(gb) == set(masters)
    for k in ga:
        assert gb[k].dtype == mx.bfloat16 and mx.array_equal(ga[k], gb[k]).item(), k
    after = dict(tree_flatten(model.trainable_parameters()))
    assert all(after[k].dtype == mx.float32 and mx.array_equal(after[k], masters[k]).item() for k in masters)
    # the joined gradient, cast once, is the per-array gradients cast one by one
    joined = layout.join(gb)
    assert joined.dtype == mx.float32
    assert mx.array_equal(joined, mx.concatenate([ga[k].astype(mx.float32).reshape(-1) for k in layout.names])).item()


def test_bf16_lora_run_trains_with_float32_masters(bf16_model_dir, tmp_path):
    run = build(bf16_model_dir, tmp_path, method="lora", max_steps=6, learning_rate=5e-3)
    run.train()
    assert all(v.dtype == mx.float32 for _, v in tree_flatten(run.loop.model.trainable_parameters()))
    assert all(v.dtype == mx.float32 for _, v in tree_flatten(run.loop.steps.optimizer_state["m"]))
    losses = [r["loss"] for r in read_metrics(run.run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert len(losses) == 6 and losses[-1] < losses[0]


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir):
    plain, recomputed = lora_model(tiny_model_dir, seed=3), lora_model(tiny_model_dir, seed=3)
    recompute_blocks(recomputed)
    recompute_blocks(recomputed)  # idempotent
    assert type(recomputed.layers[0]).__name__.startswith("Recomputed")
    assert not type(plain.layers[0]).__name__.startswith("Recomputed")  # other instances untouched
    assert list(flat_params(plain)) == list(flat_params(recomputed))  # same parameter names
    batch = a_batch(seed=4)
    l1, g1 = nn.value_and_grad(plain, loss_fn)(plain, batch)
    l2, g2 = nn.value_and_grad(recomputed, loss_fn)(recomputed, batch)
    assert l1.item() == pytest.approx(l2.item(), rel=1e-6)
    g1, g2 = dict(tree_flatten(g1)), dict(tree_flatten(g2))
    assert set(g1) == set(g2)
    for k in g1:
        np.testing.assert_allclose(np.array(g2[k]), np.array(g1[k]), rtol=1e-4, atol=1e-6)


def test_recomputed_mlp_tails_give_the_same_gradients(tiny_model_dir):
    """The selective-recomputation prototype (bench --ours-recompute-mlp-tail): same loss and adapter gradients."""
    plain, recomputed = lora_model(tiny_model_dir, seed=3), lora_model(tiny_model_dir, seed=3)
    assert recompute_mlp_tails(recomputed) == len(recomputed.layers)
    assert list(flat_params(plain)) == list(flat_params(recomputed))
    batch = a_batch(seed=4)
    l1, g1 = nn.value_and_grad(plain, loss_fn)(plain, batch)
    l2, g2 = nn.value_and_grad(recomputed, loss_fn)(recomputed, batch)
    assert l1.item() == pytest.approx(l2.item(), rel=1e-6)
    g1, g2 = dict(tree_flatten(g1)), dict(tree_flatten(g2))
    assert set(g1) == set(g2) and any("down_proj" in k for k in g1)
    for k in g1:
        np.testing.assert_allclose(np.array(g2[k]), np.array(g1[k]), rtol=1e-4, atol=1e-6)


def test_gradient_checkpointing_run_matches_plain_run(tiny_model_dir, tmp_path):
    results = []
    for on in (False, True):
        run = build(tiny_model_dir, tmp_path / str(on), method="lora", max_steps=3, gradient_checkpointing=on,
                    learning_rate=1e-2)
        assert type(run.loop.model.layers[0]).__name__.startswith("Recomputed") == on
        run.train()
        results.append(flat_params(run.loop.model, trainable=True))
    for k in results[0]:
        np.testing.assert_allclose(results[1][k], results[0][k], rtol=1e-4, atol=1e-6)

"""trainer_core.training.losses: the masked next-token loss equals a hand-written numpy computation."""

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx

from trainer_core.data.batching import collate_sft
from trainer_core.data import Example
from trainer_core.training.losses import masked_cross_entropy, sft_loss
from trainer_core.models.loading import load_model
from tests.train_helpers import np_log_softmax, reference_loss


def fixed_batch(seed=0, B=3, L=7, V=11):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(B, L, V)).astype(np.float32)
    targets = rng.integers(0, V, size=(B, L)).astype(np.int32)
    lengths = [7, 4, 2]  # real tokens per row; the rest is padding
    mask = np.zeros((B, L), dtype=bool)
    for row, n in enumerate(lengths):
        mask[row, :n] = True
    mask[0, :2] = False  # a masked prompt in row 0
    return logits, targets, mask


def numpy_loss(logits, targets, mask):
    logp = np_log_softmax(logits)
    total, count = 0.0, 0
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            if mask[b, t]:
                total -= logp[b, t, targets[b, t]]
                count += 1
    return total, count


def test_masked_cross_entropy_matches_numpy():
    logits, targets, mask = fixed_batch()
    loss_sum, ntoks = masked_cross_entropy(mx.array(logits), mx.array(targets), mx.array(mask))
    want_sum, want_count = numpy_loss(logits, targets, mask)
    assert ntoks.item() == want_count == 5 + 4 + 2
    assert loss_sum.item() == pytest.approx(want_sum, rel=1e-4, abs=1e-4)
    assert (loss_sum / ntoks).item() == pytest.approx(want_sum / want_count, rel=1e-4, abs=1e-4)


def test_masked_cross_entropy_ignores_padding_positions():
    logits, targets, mask = fixed_batch()
    base = masked_cross_entropy(mx.array(logits), mx.array(targets), mx.array(mask))
    rng = np.random.default_rng(1)
    logits2, targets2 = logits.copy(), targets.copy()
    logits2[~mask] = rng.normal(0, 50, size=logits2[~mask].shape)
    targets2[~mask] = rng.integers(0, logits.shape[-1], size=int((~mask).sum()))
    other = masked_cross_entropy(mx.array(logits2), mx.array(targets2), mx.array(mask))
    assert other[0].item() == pytest.approx(base[0].item(), rel=1e-6)
    assert other[1].item() == base[1].item()
    # ...while a change at a scored position does change it (the comparison above can fail)
    logits2[0, 3] += 5.0 * np.eye(logits.shape[-1])[targets[0, 3]]
    assert masked_cross_entropy(mx.array(logits2), mx.array(targets2), mx.array(mask))[0].item() != \
        pytest.approx(base[0].item(), rel=1e-3)


def test_masked_cross_entropy_float16_logits():
    logits, targets, mask = fixed_batch(seed=3)
    loss_sum, _ = masked_cross_entropy(mx.array(logits).astype(mx.float16), mx.array(targets), mx.array(mask))
    want, _ = numpy_loss(logits.astype(np.float16).astype(np.float32), targets, mask)
    assert loss_sum.item() == pytest.approx(want, rel=1e-4)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def examples_for(tokenizer):
    texts = ["The quick brown fox jumps over the lazy dog.", "Hello world!",
             "What is the capital of France? The capital of France is Paris.", "Velmora"]
    out = []
    for i, text in enumerate(texts):
        ids = list(tokenizer.encode(text)) + [tokenizer.eos_token_id]
        # different masks per row: all trained, a masked prompt of 3 tokens, ...
        mask = [k > 0 and k >= (3 if i % 2 else 0) for k in range(len(ids))]
        out.append(Example(ids, mask))
    return out


@pytest.mark.parametrize("pad_id", [0, 7])
def test_sft_loss_matches_per_example_numpy(tiny, pad_id):
    examples = examples_for(tiny.tokenizer)
    batch = collate_sft(examples, pad_id=pad_id)
    assert batch["input_ids"].shape[1] > max(len(e.input_ids) for e in examples)  # there is padding
    loss_sum, ntoks, extra = sft_loss(tiny.model, batch)
    want_sum, want_count = reference_loss(tiny.model, examples)
    assert extra == {}
    assert ntoks.item() == want_count == sum(sum(e.target_mask) for e in examples)
    assert loss_sum.item() == pytest.approx(want_sum, rel=1e-4)
    assert (loss_sum / ntoks).item() == pytest.approx(want_sum / want_count, rel=1e-4, abs=1e-4)


def test_sft_loss_pad_token_values_change_nothing(tiny):
    examples = examples_for(tiny.tokenizer)
    batch = collate_sft(examples, pad_id=0)
    ids = np.array(batch["input_ids"])
    lengths = [len(e.input_ids) for e in examples]
    rng = np.random.default_rng(0)
    for row, n in enumerate(lengths):
        ids[row, n:] = rng.integers(0, 300, size=ids.shape[1] - n)
    changed = {"input_ids": mx.array(ids), "target_mask": batch["target_mask"]}
    a, na, _ = sft_loss(tiny.model, batch)
    b, nb, _ = sft_loss(tiny.model, changed)
    assert na.item() == nb.item()
    assert b.item() == pytest.approx(a.item(), rel=1e-5)


def numpy_loss_grad(logits, targets, mask):
    """d(sum of masked token losses)/d logits = (softmax - onehot) on scored positions, 0 elsewhere."""
    probs = np.exp(np_log_softmax(logits))
    onehot = np.eye(logits.shape[-1], dtype=np.float32)[targets]
    return (probs - onehot) * mask[..., None]


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16, mx.float16])
def test_masked_cross_entropy_gradient_matches_numpy(dtype):
    logits, targets, mask = fixed_batch(seed=5)
    rounded = np.array(mx.array(logits).astype(dtype).astype(mx.float32))  # the logits the model produced

    def loss(x):
        return masked_cross_entropy(x, mx.array(targets), mx.array(mask))[0]

    grad = mx.grad(loss)(mx.array(logits).astype(dtype))
    assert grad.dtype == dtype  # rounded once, to the logits' dtype
    want = numpy_loss_grad(rounded, targets, mask)
    # float32: exact to rounding; 16-bit: one rounding of an exact float32 value (not bf16 arithmetic)
    tol = {mx.float32: 1e-6, mx.bfloat16: 2 ** -8, mx.float16: 2 ** -11}[dtype]
    np.testing.assert_allclose(np.array(grad.astype(mx.float32)), want, atol=tol, rtol=tol)


def test_token_nll_bf16_is_float32_accurate_unlike_bf16_cross_entropy():
    """Per-token losses of bf16 logits: ours equal the float32 computation; nn.losses.cross_entropy on
    bf16 (mlx-lm's way) rounds them to bf16 (this is why token_nll exists)."""
    import mlx.nn as nn
    from trainer_core.training.losses import token_nll
    rng = np.random.default_rng(7)
    logits = mx.array(rng.normal(0, 4, size=(2, 64, 300)).astype(np.float32)).astype(mx.bfloat16)
    targets = mx.array(rng.integers(0, 300, size=(2, 64)).astype(np.int32))
    exact = -np.take_along_axis(np_log_softmax(np.array(logits.astype(mx.float32))),
                                np.array(targets)[..., None], axis=-1)[..., 0]
    ours = np.array(token_nll(logits, targets))
    bf16_way = np.array(nn.losses.cross_entropy(logits, targets, reduction="none").astype(mx.float32))
    np.testing.assert_allclose(ours, exact, rtol=1e-5, atol=1e-5)
    assert np.abs(bf16_way - exact).max() > 1e-3

"""trainer_core.models.attention: attention in chunks of query rows equals the whole computation (an
independent numpy one and MLX's own), in outputs and gradients, causal and full, with grouped KV heads; a
model given use_chunked_attention trains to the same loss and gradients; its backward keeps far less."""

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models import llama

from trainer_core.models import attention
from trainer_core.training import losses


def qkv(b=2, heads=6, kv=2, length=150, dim=8, seed=0):
    keys = mx.random.split(mx.random.key(seed), 4)
    q, k, v = (mx.random.normal(shape, key=key) for shape, key in
               zip([(b, heads, length, dim), (b, kv, length, dim), (b, kv, length, dim)], keys))
    return q, k, v, mx.random.normal((b, heads, length, dim), key=keys[3])


def numpy_attention(q, k, v, scale, causal):
    """softmax(q k^T scale) v in float64, each query head reading its KV head (h // (heads / kv))."""
    q, k, v = (np.array(a, dtype=np.float64) for a in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    s = q @ k.transpose(0, 1, 3, 2) * scale
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], dtype=bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(attention, "CHUNK_ELEMENTS", 2 * 6 * 150 * 40)  # 32 rows: chunks 32 x 4 + a ragged 22


def test_chunk_rows():
    assert attention.chunk_rows(4, 9, 2048) == 64  # the demo at 4 x 2048: 64 x 4 x 9 x 2048 <= 2**23 < 128 x ...
    assert 64 * 4 * 9 * 2048 <= attention.CHUNK_ELEMENTS < 128 * 4 * 9 * 2048
    assert attention.chunk_rows(1, 1, 16) == attention.MAX_ROWS
    assert attention.chunk_rows(64, 64, 1 << 20) == attention.MIN_ROWS


@pytest.mark.parametrize("causal", [True, False])
def test_chunked_equals_numpy_and_mlx(causal, small_chunks):
    q, k, v, w = qkv()
    assert attention.chunk_rows(2, 6, 150) == 32
    scale = 8 ** -0.5
    out = attention.chunked_attention(q, k, v, scale, causal)
    assert np.abs(np.array(out) - numpy_attention(q, k, v, scale, causal)).max() < 1e-5
    fast = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal" if causal else None)
    assert mx.abs(out - fast).max().item() < 1e-6

    def loss(fn):
        return lambda q, k, v: (fn(q, k, v) * w).sum()
    ours = loss(lambda q, k, v: attention.chunked_attention(q, k, v, scale, causal))
    theirs = loss(lambda q, k, v: mx.fast.scaled_dot_product_attention(q, k, v, scale=scale,
                                                                         mask="causal" if causal else None))
    expected = mx.grad(theirs, argnums=(0, 1, 2))(q, k, v)
    for got in (mx.grad(ours, argnums=(0, 1, 2))(q, k, v), mx.compile(mx.grad(ours, argnums=(0, 1, 2)))(q, k, v)):
        for g, e in zip(got, expected):
            assert g.shape == e.shape
            assert mx.abs(g - e).max().item() <= 1e-5 * max(1.0, mx.abs(e).max().item())


def test_gradient_against_finite_differences(monkeypatch):
    """An independent check of the backward formula: d/dq, d/dk, d/dv of a weighted sum, numerically (float64)."""
    monkeypatch.setattr(attention, "CHUNK_ELEMENTS", 1)  # MIN_ROWS (32) rows: chunks of 32 and 8
    q, k, v, w = qkv(b=1, heads=2, kv=1, length=40, dim=4)
    assert attention.chunk_rows(1, 2, 40) == 32
    grads = [np.array(g) for g in mx.grad(lambda q, k, v: (attention.chunked_attention(q, k, v, 0.5, True) * w).sum(),
                                          argnums=(0, 1, 2))(q, k, v)]
    arrays = [np.array(a, dtype=np.float64) for a in (q, k, v)]
    for which, idx in [(0, (0, 0, 0, 0)), (0, (0, 1, 35, 2)), (1, (0, 0, 3, 1)), (1, (0, 0, 36, 0)),
                       (2, (0, 0, 0, 3)), (2, (0, 0, 39, 2))]:
        def value(delta):
            xs = [a.copy() for a in arrays]
            xs[which][idx] += delta
            return float(np.sum(numpy_attention(*xs, 0.5, True) * np.array(w, dtype=np.float64)))
        numeric = (value(1e-6) - value(-1e-6)) / 2e-6
        assert abs(grads[which][idx] - numeric) < 1e-4 * max(1.0, abs(numeric)), (which, idx)


def tiny(seed=0):
    mx.random.seed(seed)
    cfg = dict(model_type="llama", hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=97, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True)
    model = llama.Model(llama.ModelArgs.from_dict(cfg))
    mx.eval(model.parameters())
    return model


def test_model_trains_the_same_through_chunked_attention(monkeypatch):
    monkeypatch.setattr(attention, "CHUNK_ELEMENTS", 64 * 4 * 100)  # 64 rows per chunk of a 100-token row
    ids = mx.random.randint(0, 97, (2, 101), key=mx.random.key(5))
    batch = {"input_ids": ids, "target_mask": mx.ones(ids.shape, dtype=mx.bool_)}
    fn = lambda m: nn.value_and_grad(m, lambda m: losses.sft_loss(m, batch)[0])(m)  # noqa: E731
    plain_loss, plain = fn(tiny())
    model, other = tiny(), tiny()
    assert attention.use_chunked_attention(model) == 2
    assert attention.use_chunked_attention(model) == 2  # idempotent
    calls = []
    real = attention.chunked_attention
    monkeypatch.setattr(attention, "chunked_attention", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    loss, grads = fn(model)
    assert calls == [(2, 4, 100, 8)] * 2  # both layers took the chunked path
    assert abs(loss.item() - plain_loss.item()) <= 1e-6 * abs(plain_loss.item())
    plain, grads = dict(tree_flatten(plain)), dict(tree_flatten(grads))
    assert plain.keys() == grads.keys()
    for name, g in plain.items():
        assert mx.abs(grads[name] - g).max().item() <= 1e-5 * mx.abs(g).max().item(), name
    calls.clear()
    fn(other)  # another model of the same architecture is untouched
    assert calls == []
    assert [n for n, _ in tree_flatten(model.parameters())] == [n for n, _ in tree_flatten(other.parameters())]


def test_what_it_does_not_cover_goes_to_mlx_lm(small_chunks):
    q, k, v, _ = qkv(length=600)
    assert attention.covers(q, k, None, "causal", None) and attention.covers(q, k, None, None, None)
    assert not attention.covers(q, k[:, :, :300], None, "causal", None)  # a cache with earlier tokens
    assert not attention.covers(q, k, None, mx.ones((600, 600), dtype=mx.bool_), None)  # an array mask
    assert not attention.covers(q, k, None, "causal", mx.zeros((6,)))  # attention sinks
    assert not attention.covers(q[:, :, :32], k[:, :, :32], None, "causal", None)  # one chunk: nothing to gain


def test_backward_keeps_far_less_memory(monkeypatch):
    """[2, 8, 1024, 1024] float32 scores are 67 MB a copy: MLX's fallback keeps several for the backward pass;
    in chunks of 64 rows (4 MB a copy) the backward holds a few chunks at a time."""
    monkeypatch.setattr(attention, "CHUNK_ELEMENTS", 1 << 20)
    assert attention.chunk_rows(2, 8, 1024) == 64
    q, k, v, w = qkv(b=2, heads=8, kv=2, length=1024, dim=16)
    mx.eval(q, k, v, w)

    def peak(fn):
        grad = mx.grad(lambda q, k, v: (fn(q, k, v) * w).sum(), argnums=(0, 1, 2))
        mx.synchronize()
        mx.reset_peak_memory()
        before = mx.get_active_memory()
        mx.eval(grad(q, k, v))
        return mx.get_peak_memory() - before
    whole = peak(lambda q, k, v: mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask="causal"))
    chunked = peak(lambda q, k, v: attention.chunked_attention(q, k, v, 0.25, True))
    assert whole > 2 * 67e6
    assert chunked < whole / 3, (chunked, whole)

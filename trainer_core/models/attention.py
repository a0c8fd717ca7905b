"""Attention in chunks of query rows on the CPU: the [rows, heads, T, T] scores never exist whole.

On the CPU MLX has no fused attention: `mx.fast.scaled_dot_product_attention` runs its fallback
(q * scale @ k^T, mask, softmax, @ v), and the backward pass keeps every layer's [B, H, T, T] float32
probabilities. At batch 4 x 2048 tokens on the demo model (9 heads) that is 604 MB a copy per layer,
18-36 GB over 30 layers: LoRA at 4 x 2048 was killed by the kernel at 23 GB. `chunked_attention`
computes the same thing chunk_rows() query rows at a time (each row's softmax still spans all its keys, so
every row's value is the fallback's; a causal chunk only reads the keys it can see) and its backward
recomputes each chunk's probabilities from q, k, v and the output (the flash-attention gradient:
dS = P * (dP - rowsum(dO * O))), so what a layer keeps for the backward pass is q, k, v and its output.

`use_chunked_attention(model)` turns it on for that model's attention modules only (each instance gets
its own subclass, as recompute.py does for blocks): while one of them runs, the mlx-lm module's
`scaled_dot_product_attention` takes this path for what it covers (CPU, no quantized cache, no sinks,
mask None or "causal", as many queries as keys, more than one chunk of them) and mlx-lm's own otherwise.
Other models in the process (chat, compare) are untouched. Not on a GPU: Metal has fused kernels.
Equal to the fallback to float32 rounding (tests/core/models/test_attention.py: outputs and gradients).
"""

from __future__ import annotations

import sys
import threading

import mlx.core as mx

CHUNK_ELEMENTS = 1 << 23  # scores per chunk (32 MB in float32; MLX keeps up to 10 operations in flight): the demo
# at 4 x 2048 (9 heads) takes 64 rows. Measured there, one layer's backward: 1 << 22: 239 MB, 1 << 23: 275 MB,
# 1 << 24: 348 MB, equally fast; mx.fast.scaled_dot_product_attention: 1.94 GB, and 604 MB kept per layer
MIN_ROWS, MAX_ROWS = 32, 1024
ENABLED = True  # benches switch it off to measure mlx-lm's path
_STATE = threading.local()  # .on: an attention module of a model given use_chunked_attention is running
_PATCHED: dict[str, object] = {}  # mlx-lm module name -> its original scaled_dot_product_attention
_CLASSES: dict[type, type] = {}


def _grouped(q, k, v):
    """q [B, H, L, D], k/v [B, KV, S, D] -> q [B, KV, H/KV, L, D], k/v [B, KV, 1, S, D] (the fallback's GQA layout)."""
    b, h, length, d = q.shape
    kv = k.shape[1]
    return q.reshape(b, kv, h // kv, length, d), k[:, :, None], v[:, :, None]


def _probabilities(qs, k, start: int, end: int, causal: bool, dtype=None):
    """Softmax of the scores of query rows start:end over the keys they see (causal: keys < end)."""
    keys = k[..., :end, :] if causal else k
    scores = qs[..., start:end, :] @ keys.swapaxes(-1, -2)
    if dtype is not None:
        scores = scores.astype(dtype)
    if causal:
        seen = mx.arange(start, end)[:, None] >= mx.arange(end)[None]
        scores = mx.where(seen, scores, mx.array(mx.finfo(scores.dtype).min, scores.dtype))
    return mx.softmax(scores, axis=-1, precise=True), keys


def chunk_rows(batch: int, heads: int, keys: int) -> int:
    """Query rows per chunk: a power of two whose [batch, heads, rows, keys] scores hold about CHUNK_ELEMENTS."""
    rows = MIN_ROWS
    while rows < MAX_ROWS and 2 * rows * batch * heads * keys <= CHUNK_ELEMENTS:
        rows *= 2
    return rows


def _spans(q, k):
    n, step = q.shape[2], chunk_rows(q.shape[0], q.shape[1], k.shape[2])
    return [(s, min(n, s + step)) for s in range(0, n, step)]


def _attention(q, k, v, scale, causal: bool):
    qs, k5, v5 = _grouped(q * mx.array(scale, q.dtype), k, v)
    out = []
    for s, e in _spans(q, k):
        # chunk i + 1 waits for chunk i's output: without it MLX's scheduler computes every chunk's scores before
        # any softmax, and they are all alive at once (measured: the whole [B, H, T, T] again)
        rows = qs if not out else mx.depends(qs, out[-1])
        p, _ = _probabilities(rows, k5, s, e, causal)
        out.append(p @ (v5[..., :e, :] if causal else v5))
    return mx.concatenate(out, axis=3).reshape(q.shape[:3] + (v.shape[-1],))


def _backward(primals, cotangent, output, scale: float, causal: bool):
    q, k, v = primals
    f32 = mx.float32
    qs, k5, v5 = _grouped((q * mx.array(scale, q.dtype)).astype(f32), k.astype(f32), v.astype(f32))
    d_out, out = _grouped(cotangent.astype(f32), k, v)[0], _grouped(output.astype(f32), k, v)[0]
    delta = (d_out * out).sum(axis=-1, keepdims=True)  # rowsum(dO * O) = rowsum(dP * P)
    keys = k.shape[2]
    d_q = []
    d_k = mx.zeros(k5.shape[:2] + (1, keys, k.shape[-1]), f32)
    d_v = mx.zeros(v5.shape[:2] + (1, keys, v.shape[-1]), f32)
    for s, e in _spans(q, k):
        rows = qs if not d_q else mx.depends(qs, [d_q[-1], d_k, d_v])  # one chunk at a time (see _attention)
        p, k_seen = _probabilities(rows, k5, s, e, causal, f32)
        v_seen = v5[..., :e, :] if causal else v5
        do = d_out[..., s:e, :]
        d_scores = p * (do @ v_seen.swapaxes(-1, -2) - delta[..., s:e, :])
        d_q.append((d_scores @ k_seen) * scale)
        dk = (d_scores.swapaxes(-1, -2) @ rows[..., s:e, :]).sum(axis=2, keepdims=True)  # heads sharing a KV head
        dv = (p.swapaxes(-1, -2) @ do).sum(axis=2, keepdims=True)
        if dk.shape[3] < keys:
            pad = [(0, 0)] * 3 + [(0, keys - dk.shape[3]), (0, 0)]
            dk, dv = mx.pad(dk, pad), mx.pad(dv, pad)
        d_k, d_v = d_k + dk, d_v + dv
    d_q = mx.concatenate(d_q, axis=3).reshape(q.shape)
    return d_q.astype(q.dtype), d_k.reshape(k.shape).astype(k.dtype), d_v.reshape(v.shape).astype(v.dtype)


_FUNCTIONS: dict[tuple[float, bool], object] = {}


def _function(scale: float, causal: bool):
    """The custom function (forward + recomputing backward) for one scale and mask kind."""
    key = (float(scale), bool(causal))
    if key not in _FUNCTIONS:
        @mx.custom_function
        def attention(q, k, v):
            return _attention(q, k, v, scale, causal)

        @attention.vjp
        def attention_vjp(primals, cotangent, output):
            return _backward(primals, cotangent, output, scale, causal)
        _FUNCTIONS[key] = attention
    return _FUNCTIONS[key]


def chunked_attention(q, k, v, scale: float, causal: bool):
    """softmax(q * scale @ k^T (+ causal mask)) @ v for q [B, H, L, D], k/v [B, KV, S, D] (H a multiple of KV),
    chunk_rows() query rows at a time, with a backward pass that recomputes each chunk. causal needs L == S."""
    return _function(scale, causal)(q, k, v)


def covers(queries, keys, cache, mask, sinks) -> bool:
    """Whether chunked_attention stands in for mlx-lm's call with these arguments."""
    return (ENABLED and sinks is None and not hasattr(cache, "bits") and (mask is None or (isinstance(mask, str)
            and mask == "causal")) and queries.shape[2] == keys.shape[2] > chunk_rows(*queries.shape[:2], keys.shape[2]) and mx.default_device() == mx.cpu)


def _dispatcher(original):
    def scaled_dot_product_attention(queries, keys, values, cache, scale, mask, sinks=None, **kwargs):
        if getattr(_STATE, "on", False) and not kwargs and covers(queries, keys, cache, mask, sinks):
            return chunked_attention(queries, keys, values, scale, causal=mask == "causal")
        return original(queries, keys, values, cache, scale=scale, mask=mask, sinks=sinks, **kwargs)
    scaled_dot_product_attention.original = original
    return scaled_dot_product_attention


def _chunked_class(cls: type) -> type:
    if cls not in _CLASSES:
        def __call__(self, *args, **kwargs):
            before = getattr(_STATE, "on", False)
            _STATE.on = True
            try:
                return cls.__call__(self, *args, **kwargs)
            finally:
                _STATE.on = before
        _CLASSES[cls] = type(f"Chunked{cls.__name__}", (cls,), {"__call__": __call__})
    return _CLASSES[cls]


def use_chunked_attention(model) -> int:
    """Route the attention of `model`'s blocks through chunked_attention where it applies (see the module doc);
    the number of attention modules switched (0: an architecture that does not call mlx-lm's
    scaled_dot_product_attention). Idempotent; parameter names do not change."""
    count = 0
    for block in getattr(model, "layers", []):
        attention = getattr(block, "self_attn", None)
        cls = type(attention)
        if attention is None or cls in _CLASSES.values():
            count += attention is not None
            continue
        module = sys.modules.get(cls.__module__)
        current = getattr(module, "scaled_dot_product_attention", None)
        if current is None:
            continue
        if module.__name__ not in _PATCHED:
            _PATCHED[module.__name__] = current
            module.scaled_dot_product_attention = _dispatcher(current)
        attention.__class__ = _chunked_class(cls)
        count += 1
    return count

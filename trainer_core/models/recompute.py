"""Recomputation instead of keeping activations: per transformer block (`gradient_checkpointing = true`) and,
always for LoRA, SwiGLU's product in the MLP (`recompute_swiglu_products`, below).

Each block's activations are recomputed in the backward pass instead of kept:
peak memory falls by roughly the activations of all but one block, for about
one extra forward pass of compute. mlx-lm's `grad_checkpoint` replaces
`__call__` on the block *class* (every instance of it, in every model of the
process, for good); here each block instance gets its own subclass, so only
the model being trained is affected and parameter names do not change
(checkpoints and exports are identical).
"""

from __future__ import annotations

import inspect

import mlx.core as mx
import mlx.nn as nn


def _subclass(cache: dict[type, type], cls: type, prefix: str, make_call) -> type:
    """`cls`'s subclass whose `__call__` is `make_call(cls)`, one per class in `cache`: assigned to one instance's
    `__class__`, it changes that instance only and keeps its parameter names."""
    if cls not in cache:
        cache[cls] = type(f"{prefix}{cls.__name__}", (cls,), {"__call__": make_call(cls)})
    return cache[cls]


_RECOMPUTED: dict[type, type] = {}


def _checkpointed_call(cls: type):
    def __call__(self, x, *args, **kwargs):
        # mask/cache are bound here, not passed to mx.checkpoint: they may be strings or None
        def block(params, x):
            self.update(params)
            return cls.__call__(self, x, *args, **kwargs)
        return mx.checkpoint(block)(self.trainable_parameters(), x)
    return __call__


def recompute_blocks(model) -> None:
    """Turn on gradient checkpointing for every block in `model.layers` (idempotent)."""
    for block in model.layers:
        if type(block) not in _RECOMPUTED.values():
            block.__class__ = _subclass(_RECOMPUTED, type(block), "Recomputed", _checkpointed_call)


_TAILS_RECOMPUTED: dict[type, type] = {}


def _tail_recomputed_call(cls: type):
    from mlx_lm.models.activations import swiglu

    def __call__(self, x):
        down = self.down_proj

        def tail(params, g, u):
            down.update(params)
            return down(swiglu(g, u))
        return mx.checkpoint(tail)(down.trainable_parameters(), self.gate_proj(x), self.up_proj(x))
    return __call__


def recompute_mlp_tails(model) -> int:
    """Selective recomputation (issue 26 prototype, bench/throughput.py --ours-recompute-mlp-tail): each Llama-style
    MLP keeps only its gate and up projections for the backward pass; SwiGLU and the down projection (base +
    adapter) run again there. Per instance, as `recompute_blocks`; returns how many MLPs were changed (idempotent)."""
    changed = 0
    for block in model.layers:
        mlp = getattr(block, "mlp", None)
        if mlp is None or type(mlp) in _TAILS_RECOMPUTED.values() \
                or not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
            continue
        mlp.__class__ = _subclass(_TAILS_RECOMPUTED, type(mlp), "TailRecomputed", _tail_recomputed_call)
        changed += 1
    return changed


# ---- SwiGLU's product, recomputed (on by default for LoRA on a SwiGLU MLP's down projection) -------------------
# MLX keeps every array a backward step reads. For `down_proj(silu(gate) * up)` with LoRA on down_proj that is the
# gate, the up projection, the product h (for the adapter's gradient) and what the compiled SwiGLU keeps for its own
# backward. Written as one custom function with a hand-written backward (MLX has no rematerialisation pass, unlike
# torch.compile's min-cut partitioner), only gate and up are kept: h is recomputed from them (a multiply; the sigmoid
# is computed by the plain backward too) and the frozen base's input gradient is the same `dy @ W` as before, so no
# matmul runs twice. On a bf16 model that keeps ~1.4 FFN-wide tensors a token and layer fewer (float32: none;
# bench/RESULTS.md). Exact: same forward, gradients equal to MLX's own autodiff of the plain formula
# (tests/core/models/test_swiglu_recompute.py).

ENABLED = True  # bench/throughput.py --ours-plain-mlp: False
_SWIGLU_MLP = "".join("self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))".split())
_MATCHES: dict[type, bool] = {}
_PATCHED: dict[type, type] = {}


@mx.custom_function
def swiglu_down(g, u, w, a):
    """`h @ w.T` and `h @ a` for h = silu(g) * u, keeping only g and u for the backward."""
    h = nn.silu(g) * u
    return h @ w.T, h @ a


@swiglu_down.vjp
def _swiglu_down_vjp(primals, cotangents, outputs):
    g, u, w, a = primals
    dy, dz = cotangents
    gf = g.astype(mx.float32)
    sig = mx.sigmoid(gf)
    silu = g * sig.astype(g.dtype)
    dh = dy @ w + dz @ a.T
    h = (silu * u).reshape(-1, g.shape[-1])
    da = (h.T @ dz.reshape(-1, dz.shape[-1])).astype(a.dtype)
    dg = dh.astype(mx.float32) * u.astype(mx.float32) * sig * (1 + gf * (1 - sig))
    return dg.astype(g.dtype), (dh * silu).astype(u.dtype), mx.zeros_like(w), da


def _is_swiglu_mlp(cls: type) -> bool:
    """Whether the class's forward is exactly mlx-lm's `down_proj(swiglu(gate_proj(x), up_proj(x)))` (34 of
    mlx-lm's architectures: Llama, Mistral, Qwen 2/3, Granite, ...); any other MLP is left as it is."""
    if cls not in _MATCHES:
        try:
            source = inspect.getsource(cls.__call__)
        except (OSError, TypeError):
            source = ""
        _MATCHES[cls] = _SWIGLU_MLP in "".join(source.split())
    return _MATCHES[cls]


def _plain_lora(down) -> bool:
    from mlx_lm.tuner.lora import LoRALinear
    return (type(down) is LoRALinear and type(down.linear) is nn.Linear and "bias" not in down.linear
            and getattr(down.dropout, "_p_1", 0.0) == 1.0)


def _product_recomputed_call(cls: type):
    def __call__(self, x):
        down = self.down_proj
        if not _plain_lora(down):  # fused for export, or changed since: the plain forward
            return cls.__call__(self, x)
        y, ha = swiglu_down(self.gate_proj(x), self.up_proj(x), mx.stop_gradient(down.linear.weight),
                            down.lora_a)
        return y + (down.scale * (ha @ down.lora_b)).astype(x.dtype)
    return __call__


def recompute_swiglu_products(model) -> int:
    """Keep only gate and up for the backward of every SwiGLU MLP whose down projection is a plain LoRA layer
    (float base, no bias, no dropout); per instance, as `recompute_blocks`. Returns how many MLPs changed."""
    changed = 0
    for block in getattr(model, "layers", []) if ENABLED else []:
        mlp = getattr(block, "mlp", None)
        if mlp is None or type(mlp) in _PATCHED.values() or type(mlp) in _TAILS_RECOMPUTED.values():
            continue
        if _is_swiglu_mlp(type(mlp)) and _plain_lora(getattr(mlp, "down_proj", None)):
            mlp.__class__ = _subclass(_PATCHED, type(mlp), "ProductRecomputed", _product_recomputed_call)
            changed += 1
    return changed

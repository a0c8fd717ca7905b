"""Gradient checkpointing per transformer block (`gradient_checkpointing = true`).

Each block's activations are recomputed in the backward pass instead of kept:
peak memory falls by roughly the activations of all but one block, for about
one extra forward pass of compute. mlx-lm's `grad_checkpoint` replaces
`__call__` on the block *class* (every instance of it, in every model of the
process, for good); here each block instance gets its own subclass, so only
the model being trained is affected and parameter names do not change
(checkpoints and exports are identical).
"""

from __future__ import annotations

import mlx.core as mx

_RECOMPUTED: dict[type, type] = {}


def _recomputed_class(cls: type) -> type:
    if cls not in _RECOMPUTED:
        def __call__(self, x, *args, **kwargs):
            # mask/cache are bound here, not passed to mx.checkpoint: they may be strings or None
            def block(params, x):
                self.update(params)
                return cls.__call__(self, x, *args, **kwargs)
            return mx.checkpoint(block)(self.trainable_parameters(), x)

        _RECOMPUTED[cls] = type(f"Recomputed{cls.__name__}", (cls,), {"__call__": __call__})
    return _RECOMPUTED[cls]


def recompute_blocks(model) -> None:
    """Turn on gradient checkpointing for every block in `model.layers` (idempotent)."""
    for block in model.layers:
        if type(block) not in _RECOMPUTED.values():
            block.__class__ = _recomputed_class(type(block))


_TAILS_RECOMPUTED: dict[type, type] = {}


def _tail_recomputed_class(cls: type) -> type:
    if cls not in _TAILS_RECOMPUTED:
        from mlx_lm.models.activations import swiglu

        def __call__(self, x):
            down = self.down_proj

            def tail(params, g, u):
                down.update(params)
                return down(swiglu(g, u))
            return mx.checkpoint(tail)(down.trainable_parameters(), self.gate_proj(x), self.up_proj(x))

        _TAILS_RECOMPUTED[cls] = type(f"TailRecomputed{cls.__name__}", (cls,), {"__call__": __call__})
    return _TAILS_RECOMPUTED[cls]


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
        mlp.__class__ = _tail_recomputed_class(type(mlp))
        changed += 1
    return changed

"""Prototype (issue 26), not measured yet: AdamW over one flat buffer instead of one update per adapter matrix.

The H100 kernel profile of the gpu case (bench/RESULTS.md, "GPU, eighth look") shows the optimizer as 336 fused
AdamW kernels a step (one per LoRA matrix, 4.5 ms) plus 336 float32 -> bf16 copies, with sub-millisecond gaps
between the tiny graphs they fill. Here the optimizer keeps the float32 master weights and both moments as three
flat vectors; a step joins the gradients once (the same join `optim.global_norm` already makes for the norm, which
MLX's compile can share), runs one elementwise update over the whole vector and hands the model views of the new
master vector (slices: no copies). For float32 parameters (LoRA's adapters) the same maths as
`trainer_core.training.optim.AdamW` element by element (16-bit parameters get true float32 masters here), so the
losses should come out equal (`throughput.py --case gpu --tiny-check --ours-flat-adamw` against without).

Bench only: the master vector is the truth, so anything that replaces the model's adapters behind the optimizer's
back (a restore, a callback) is not seen; the checkpoint holds `m.__flat__` / `v.__flat__`, not the per-name format.
usage: patch() before the run is built (throughput.py --ours-flat-adamw).
"""

from __future__ import annotations

import mlx.core as mx

from trainer_core.models.precision import LOW_PRECISION, stochastic_round
from trainer_core.training import loop as loop_module
from trainer_core.training.optim import AdamW

FLAT = "__flat__"


class FlatAdamW(AdamW):
    def __init__(self, params: dict[str, mx.array], **kwargs):
        super().__init__(params, **kwargs)
        self.names = list(params)
        self.shapes = {n: p.shape for n, p in params.items()}
        self.dtypes = {n: p.dtype for n, p in params.items()}
        sizes = [params[n].size for n in self.names]
        self.bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        self.lr_scale = self._vector(self.multipliers)
        self.decay = self._vector({n: float(self.decays[n]) for n in self.names})

    def _vector(self, per_name: dict[str, float]):
        """A scalar when every parameter has the same value (the usual case), else a flat float32 vector."""
        values = {per_name[n] for n in self.names}
        if len(values) == 1:
            return values.pop()
        return mx.concatenate([mx.full((hi - lo,), per_name[n], dtype=mx.float32)
                               for n, lo, hi in zip(self.names, self.bounds, self.bounds[1:])])

    def _flat(self, tree: dict[str, mx.array]) -> mx.array:
        return mx.concatenate([tree[n].reshape(-1).astype(mx.float32) for n in self.names])

    def initial_state(self, params: dict[str, mx.array]) -> dict:
        size = sum(p.size for p in params.values())
        return {"t": mx.array(0, dtype=mx.int32), "m": {FLAT: mx.zeros((size,), dtype=mx.float32)},
                "v": {FLAT: mx.zeros((size,), dtype=mx.float32)},
                "p": {FLAT: mx.concatenate([p.reshape(-1).astype(mx.float32) for p in params.values()])}}

    def step(self, params, grads, state, learning_rate, grad_scale=None, ok=None):
        t, correction1, correction2, factors, learning_rate = self.coefficients(state, learning_rate, ok)
        m, v = self.moments(self._flat(grads), state["m"][FLAT], state["v"][FLAT], factors, grad_scale, ok)
        decay = self.weight_decay * self.decay if self.weight_decay else None
        p32 = self.descend(state["p"][FLAT], m, v, learning_rate * self.lr_scale, decay, correction1, correction2)
        new_params = {}
        for n, lo, hi in zip(self.names, self.bounds, self.bounds[1:]):
            piece = p32[lo:hi].reshape(self.shapes[n])
            if self.dtypes[n] == mx.float32:
                new_params[n] = piece
            elif self.stochastic_rounding and self.dtypes[n] in LOW_PRECISION:
                new_params[n] = stochastic_round(piece, self.dtypes[n])
            else:
                new_params[n] = piece.astype(self.dtypes[n])
        return new_params, {"t": t, "m": {FLAT: m}, "v": {FLAT: v}, "p": {FLAT: p32}}


def patch() -> None:
    loop_module.AdamW = FlatAdamW

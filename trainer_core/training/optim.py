"""AdamW with decoupled weight decay and per-parameter learning-rate groups.

Our own (not `mlx.optimizers.AdamW`) because we need two things it lacks:
weight decay that skips norms and biases (parameters with fewer than two
dimensions), and a learning-rate multiplier per parameter-name pattern
(param groups). Its whole state is `self.state` (dicts of arrays), which the
compiled step lists as input/output; the checkpoint saves it per parameter name
(`by_name` / `from_names`).

Joined (`self.joined`; the loop asks for it for adapters, where every trainable array
is float32, at most JOIN_LIMIT elements in all, when MLX runs on a GPU; full fine-tuning
and MLX's CPU backend stay per array): the moments are two flat float32 vectors,
and a step joins the gradients and the parameters into one vector each, updates
them with one elementwise kernel and hands the model views (slices) of the
result. Per array, hundreds of adapter matrices cost hundreds of tiny update
kernels, plus one cast each for the 16-bit compute copy (`precision.value_and_grad`
takes the joined layout too). H100, LoRA on all seven linears of 24 layers: 4,033
-> 3,692 kernels a step, 3-4 % more tokens/s (bench/RESULTS.md, "GPU, tenth look").
Same arithmetic element by element: both layouts give bit-equal results (tested).

Update for parameter p with gradient g at update number t (1-based), rate lr:
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    p = p (1 - lr * wd) - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
(as torch.optim.AdamW), with lr multiplied by the parameter's group multiplier.
The new p is computed in float32 and cast to the parameter's dtype: rounded to nearest, or, with
`stochastic_rounding`, stochastically for 16-bit parameters (models/precision.py says why).
"""

from __future__ import annotations

import fnmatch

import mlx.core as mx

from trainer_core.models.precision import LOW_PRECISION, stochastic_round


def group_multipliers(names, param_groups) -> dict[str, float]:
    """Learning-rate multiplier per parameter name; the last matching group wins."""
    multipliers = {name: 1.0 for name in names}
    for group in param_groups:
        for name in names:
            if fnmatch.fnmatchcase(name, group.pattern) or fnmatch.fnmatchcase(name, f"*{group.pattern}"):
                multipliers[name] = float(group.lr_multiplier)
    return multipliers


JOIN_LIMIT = 1 << 26  # elements: float32 parameter sets up to this size are updated as one vector
# MLX's CPU backend runs the joined update 2-3x slower than per array (the demo's 420 adapters, 2.4M elements, in a
# compiled step: 44-65 vs 20-24 ms: compile fuses the bias corrections' scalar chain into the one long kernel, which
# the CPU's scalar code then recomputes per element; bench/RESULTS.md "GPU, tenth look"), so there it stays per
# array unless this is set
JOIN_ON_CPU = False
JOINED = "*"  # the key of the joined moments in the state


class AdamW:
    def __init__(self, params: dict[str, mx.array], *, beta1=0.9, beta2=0.999, eps=1e-8,
                 weight_decay=0.0, param_groups=(), stochastic_rounding=False, joined: bool | None = None):
        self.beta1, self.beta2, self.eps, self.weight_decay = beta1, beta2, eps, weight_decay
        self.stochastic_rounding = stochastic_rounding
        self.multipliers = group_multipliers(list(params), param_groups)
        self.decays = {name: p.ndim >= 2 for name, p in params.items()}
        self.names = list(params)
        self.shapes = {name: p.shape for name, p in params.items()}
        self.joined = joinable(params) if joined is None else joined
        if self.joined:
            sizes = [params[n].size for n in self.names]
            self.bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
            self.rate_scale = self._per_element(self.multipliers)
            self.decay_mask = self._per_element({n: float(d) for n, d in self.decays.items()})
        self.state = self.initial_state(params)

    def initial_state(self, params: dict[str, mx.array]) -> dict:
        if self.joined:
            size = self.bounds[-1]
            return {"t": mx.array(0, dtype=mx.int32), "m": {JOINED: mx.zeros((size,), dtype=mx.float32)},
                    "v": {JOINED: mx.zeros((size,), dtype=mx.float32)}}
        return {
            "t": mx.array(0, dtype=mx.int32),  # updates applied so far
            "m": {name: mx.zeros(p.shape, dtype=mx.float32) for name, p in params.items()},
            "v": {name: mx.zeros(p.shape, dtype=mx.float32) for name, p in params.items()},
        }

    # ---- the joined layout
    def _per_element(self, per_name: dict[str, float]):
        """One scalar when every parameter has the same value (the usual case), else a float32 vector."""
        values = {per_name[n] for n in self.names}
        if len(values) == 1:
            return values.pop()
        return mx.concatenate([mx.full((hi - lo,), per_name[n], dtype=mx.float32)
                               for n, lo, hi in zip(self.names, self.bounds, self.bounds[1:])])

    def join(self, tree: dict[str, mx.array]) -> mx.array:
        """The arrays of `tree` (parameter names as keys) as one float32 vector, in the optimizer's order
        (joined first, then cast: one cast kernel for 16-bit gradients, not one per array)."""
        return mx.concatenate([tree[n].reshape(-1) for n in self.names]).astype(mx.float32)

    def split(self, vector: mx.array) -> dict[str, mx.array]:
        """`join` undone: views of `vector`, one per parameter, in its shape."""
        return {n: vector[lo:hi].reshape(self.shapes[n]) for n, lo, hi in zip(self.names, self.bounds, self.bounds[1:])}

    def by_name(self, state: dict) -> dict:
        """`state` with the moments per parameter name (the checkpoint's format, either layout)."""
        if not self.joined:
            return state
        return {"t": state["t"], "m": self.split(state["m"][JOINED]), "v": self.split(state["v"][JOINED])}

    def from_names(self, state: dict) -> dict:
        """`by_name` undone: a state with per-name moments in this optimizer's layout."""
        if not self.joined:
            return state
        return {"t": state["t"], "m": {JOINED: self.join(state["m"])}, "v": {JOINED: self.join(state["v"])}}

    def coefficients(self, state: dict, learning_rate: mx.array, ok: mx.array | None):
        """(the step count after this update, the two bias corrections, the moments' (keep, take) factors, the
        rate), with a skipped update (`ok` False) folded into the scalars as `step` describes."""
        b1, b2 = self.beta1, self.beta2
        t = state["t"] + 1  # the bias corrections of this update (never 0, even when it is skipped)
        tf = t.astype(mx.float32)
        correction1 = 1 - mx.power(b1, tf)
        correction2 = 1 - mx.power(b2, tf)
        keep1, take1, keep2, take2 = b1, 1 - b1, b2, 1 - b2
        if ok is not None:
            keep1, take1 = mx.where(ok, keep1, 1.0), mx.where(ok, take1, 0.0)
            keep2, take2 = mx.where(ok, keep2, 1.0), mx.where(ok, take2, 0.0)
            learning_rate = mx.where(ok, learning_rate, 0.0)
            t = mx.where(ok, t, state["t"])
        return t, correction1, correction2, (keep1, take1, keep2, take2), learning_rate

    @staticmethod
    def moments(g, m, v, factors, grad_scale, ok):
        """The new (m, v) from the gradient, scaled and (when the update is skipped) zeroed in float32."""
        keep1, take1, keep2, take2 = factors
        g = g.astype(mx.float32)
        if grad_scale is not None:
            g = g * grad_scale
        if ok is not None:
            g = mx.where(ok, g, 0.0)
        return keep1 * m + take1 * g, keep2 * v + take2 * mx.square(g)

    def descend(self, p32, m, v, lr, decay, correction1, correction2):
        """p32 after decoupled weight decay at rate `decay` (None: none) and the Adam step at rate `lr`."""
        if decay is not None:
            p32 = p32 * (1 - lr * decay)
        return p32 - lr * (m / correction1) / (mx.sqrt(v / correction2) + self.eps)

    def step(self, params: dict[str, mx.array], grads: dict[str, mx.array], state: dict,
             learning_rate: mx.array, grad_scale: mx.array | None = None,
             ok: mx.array | None = None) -> tuple[dict, dict]:
        """Pure update: (new parameters, new state). Does not touch `self.state`.

        `grad_scale` multiplies every gradient inside the update's elementwise chain (the step
        passes 1/weight x the clipping factor), so no scaled copy of the gradients is made.

        `ok` False (a NaN/Inf loss or gradient) returns the parameters and state unchanged, bit
        for bit. It works through scalars — the gradient is zeroed, the moments' decay set to 1,
        the rate to 0, the step count held — so the guard adds no full-size select after the
        update (on an H200 the selects over a 702M model's weights and float32 moments cost
        more than the update itself)."""
        t, correction1, correction2, factors, learning_rate = self.coefficients(state, learning_rate, ok)
        if self.joined:  # `grads` may come joined already (the step joins them once for the norm as well)
            g = grads if isinstance(grads, mx.array) else self.join(grads)
            m, v = self.moments(g, state["m"][JOINED], state["v"][JOINED], factors, grad_scale, ok)
            decay = self.weight_decay * self.decay_mask if self.weight_decay else None
            p32 = self.descend(self.join(params), m, v, learning_rate * self.rate_scale, decay, correction1,
                               correction2)
            return self.split(p32), {"t": t, "m": {JOINED: m}, "v": {JOINED: v}}
        new_params, new_m, new_v = {}, {}, {}
        for name, p in params.items():
            m, v = self.moments(grads[name], state["m"][name], state["v"][name], factors, grad_scale,
                                ok)
            new_m[name], new_v[name] = m, v
            decay = self.weight_decay if self.weight_decay and self.decays[name] else None
            p32 = self.descend(p.astype(mx.float32), m, v, learning_rate * self.multipliers[name], decay,
                               correction1, correction2)
            if self.stochastic_rounding and p.dtype in LOW_PRECISION:
                new_params[name] = stochastic_round(p32, p.dtype)
            else:
                new_params[name] = p32.astype(p.dtype)
        return new_params, {"t": t, "m": new_m, "v": new_v}


def joinable(params: dict[str, mx.array]) -> bool:
    """Whether AdamW updates `params` as one vector: several float32 arrays of JOIN_LIMIT elements at most, on a
    GPU (or anywhere with JOIN_ON_CPU)."""
    return (len(params) > 1 and all(p.dtype == mx.float32 for p in params.values())
            and sum(p.size for p in params.values()) <= JOIN_LIMIT
            and (JOIN_ON_CPU or mx.default_device() == mx.gpu))


CONCAT_NORM_LIMIT = 1 << 26  # elements: below this the gradients are joined into one vector for the norm


def global_norm(grads: dict[str, mx.array] | mx.array) -> mx.array:
    """sqrt of the sum of squares of every gradient, in float32.

    Adapters are hundreds of small arrays: one reduction each is hundreds of tiny kernel launches
    (on an H200, 336 LoRA gradients: ~60 vs 62-83 ms a step, bench/RESULTS.md), so small gradient
    sets are joined into one vector first; big ones (full fine-tuning) are reduced array by array
    rather than copied. An array is taken as the gradients joined already."""
    arrays = [grads] if isinstance(grads, mx.array) else list(grads.values())
    if len(arrays) > 1 and sum(g.size for g in arrays) <= CONCAT_NORM_LIMIT:
        arrays = [mx.concatenate([g.reshape(-1) for g in arrays])]
    return mx.sqrt(sum(mx.sum(mx.square(g.astype(mx.float32))) for g in arrays))


def clip_factor(norm: mx.array, max_norm: float) -> mx.array | float:
    """What clipping multiplies the gradients by: min(1, max_norm / norm); 1 when max_norm is 0."""
    return mx.minimum(1.0, max_norm / (norm + 1e-6)) if max_norm else 1.0

"""The compiled training and evaluation steps.

One `mx.compile`d function per optimizer step when there is no accumulation
(forward, backward, clipping, AdamW update, NaN guard: no host sync inside),
or a compiled micro-step (forward + backward) plus a compiled update when
gradients are accumulated over k micro-batches. Model, optimizer and RNG state
are listed once as the compiled functions' inputs and outputs (mlx-lm's habit).

Gradients are of the *summed* loss; the update divides by the total weight
(tokens or pairs) of the whole step, so k micro-batches equal one k-times
bigger batch. A step whose loss or gradient norm is not finite leaves weights
and optimizer moments untouched (`ok` is False) — the loop counts those.
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from trainer_core.training import head_loss
from trainer_core.training.collectives import sum_over_ranks
from trainer_core.training.optim import AdamW, clip_factor, global_norm
from trainer_core.models import precision


class CompiledSteps:
    def __init__(self, model, method, optimizer: AdamW, max_grad_norm: float, world_size: int = 1,
                 compute_dtype=None):
        self.model = model
        self.method = method
        self.optimizer = optimizer
        self.max_grad_norm = max_grad_norm
        self.world_size = world_size
        self.holder = {"optimizer": optimizer.state}
        state = [model.state, self.holder, mx.random.state]

        def loss_fn(model, batch):
            with head_loss.gradient_in_forward():  # a frozen LM head's gradient comes out of its forward pass
                return method.loss(model, batch)

        loss_and_grad = precision.value_and_grad(model, loss_fn, compute_dtype, optimizer if optimizer.joined else None)

        def apply_update(grads, loss_sum, weight, metrics, learning_rate):
            if world_size > 1:  # data parallel: sum over ranks, then divide by the global weight
                grads, loss_sum, weight, metrics = sum_over_ranks((grads, loss_sum, weight, metrics))
            params = dict(tree_flatten(model.trainable_parameters()))
            flat = dict(tree_flatten(grads))
            if optimizer.joined:  # one vector, for the norm and the update alike
                flat = optimizer.join(flat)
            # the gradient of the mean loss is grads / weight; dividing (and clipping) happens inside
            # the optimizer's elementwise update, so no scaled copy of every gradient is written
            norm = global_norm(flat) / weight
            ok = mx.isfinite(loss_sum) & mx.isfinite(norm)  # False: the update leaves everything as it was
            new_params, self.holder["optimizer"] = optimizer.step(
                params, flat, self.holder["optimizer"], learning_rate,
                grad_scale=clip_factor(norm, max_grad_norm) / weight, ok=ok)
            model.update(tree_unflatten(list(new_params.items())))
            return loss_sum, weight, metrics, norm, ok

        @partial(mx.compile, inputs=state, outputs=state)
        def fused(batch, learning_rate):
            (loss_sum, weight, metrics), grads = loss_and_grad(model, batch)
            return apply_update(grads, loss_sum, weight, metrics, learning_rate)

        @partial(mx.compile, inputs=state, outputs=state)
        def micro(batch):
            (loss_sum, weight, metrics), grads = loss_and_grad(model, batch)
            return loss_sum, weight, metrics, grads

        @partial(mx.compile, inputs=state, outputs=state)
        def update(grads, loss_sum, weight, metrics, learning_rate):
            return apply_update(grads, loss_sum, weight, metrics, learning_rate)

        @partial(mx.compile, inputs=[model.state])
        def evaluate(batch):
            return method.loss(model, batch)

        self._fused, self._micro, self._update, self.evaluate = fused, micro, update, evaluate

    @property
    def optimizer_state(self) -> dict:
        return self.holder["optimizer"]

    @optimizer_state.setter
    def optimizer_state(self, state: dict) -> None:
        self.holder["optimizer"] = state

    def train_step(self, batches, learning_rate: float):
        """Run one optimizer step over the micro-batches; returns evaluated
        (loss_sum, weight, metric sums, grad_norm, ok) as mx arrays."""
        lr = mx.array(learning_rate, dtype=mx.float32)
        if len(batches) == 1:
            out = self._fused(batches[0], lr)
            mx.eval(out, self.model.state, self.holder)
            return out
        grads = loss_sum = weight = metrics = None
        for batch in batches:
            ls, w, m, g = self._micro(batch)
            if grads is None:
                grads, loss_sum, weight, metrics = g, ls, w, m
            else:
                grads = tree_map(mx.add, grads, g)
                loss_sum, weight = loss_sum + ls, weight + w
                metrics = {k: metrics[k] + m[k] for k in metrics}
            mx.eval(grads, loss_sum, weight, metrics)  # bound memory to one micro-batch of activations
        out = self._update(grads, loss_sum, weight, metrics, lr)
        mx.eval(out, self.model.state, self.holder)
        return out

"""Prototype (issue 26), measured and not applied: a block's q/k/v, and its MLP's gate/up, each as one matmul.

mlx-lm builds the siblings as separate layers (`self.q_proj(x), self.k_proj(x), self.v_proj(x)`), so a LoRA step
runs three frozen GEMMs over the same input (two of them narrow: k and v of a grouped-query model), three x @ A,
three @ B and three adds, and in the backward three input-gradient GEMMs summed. Here the siblings' frozen weights
are joined once along their outputs (each layer keeps a view of the joined weight, so no memory is added;
quantized weights join the same way, scales and biases with them), the first sibling called computes all of them
(one frozen matmul, one x @ [A_q A_k A_v], one product with a block-diagonal [B_q, B_k, B_v]) and the others take
their slice when called with the same input. MLX's split has a concatenate as its gradient, so the backward's
input gradient is one GEMM too. float32 gradients equal the separate layers' up to the BLAS's summation order,
bf16 within rounding (checked on tiny Llamas, float32 and bf16 against a float32 reference, before measuring).

Only where safe: plain LoRA layers (no DoRA, no dropout) with one scale, one base type and one input width, in a
module whose source calls the siblings on one variable; a later replacement of a sibling's layer or weights turns
the group off. Measured (bench/RESULTS.md, "GPU, eighth look"): within 1 % on the H100's gpu case and on the CI
CPU, so the product keeps the separate layers. usage: patch(model) -> groups fused (memory_probe.py VARIANT-fuse,
throughput.py --ours-fuse-siblings).
"""

from __future__ import annotations

import copy
import inspect
import re

import mlx.core as mx
import mlx.nn as nn

GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj")))
_SAME_INPUT: dict[tuple[type, tuple], bool] = {}


def _reads_same_input(cls: type, names: tuple) -> bool:
    """Whether `cls.__call__` calls every sibling exactly once, all on one variable (`self.q_proj(x)`, ...); a
    wrapper's `__call__` that names none of them (ours for chunked attention) defers to the class it wraps."""
    key = (cls, names)
    if key not in _SAME_INPUT:
        source = ""
        for klass in cls.__mro__:
            if "__call__" in vars(klass):
                try:
                    source = inspect.getsource(vars(klass)["__call__"])
                except (OSError, TypeError):
                    source = ""
                if any(f"self.{name}(" in source for name in names):
                    break
        args = [re.findall(rf"self\.{name}\((\w+)\)", source) for name in names]
        calls = [source.count(f"self.{name}(") for name in names]
        _SAME_INPUT[key] = all(len(a) == 1 for a in args) and calls == [1] * len(names) \
            and len({a[0] for a in args}) == 1
    return _SAME_INPUT[key]


def _plain(member) -> bool:
    from mlx_lm.tuner.lora import LoRALinear
    return (type(member) is LoRALinear and type(member.linear) in (nn.Linear, nn.QuantizedLinear)
            and getattr(member.dropout, "_p_1", 0.0) == 1.0)


def _fusable(members) -> bool:
    if not all(_plain(m) for m in members):
        return False
    first = members[0].linear
    same = lambda f: len({f(m) for m in members}) == 1  # noqa: E731
    return (same(lambda m: m.scale) and same(lambda m: type(m.linear)) and same(lambda m: tuple(sorted(m.linear)))
            and same(lambda m: m.linear.weight.dtype) and same(lambda m: m.linear.weight.shape[1])
            and same(lambda m: m.lora_a.dtype)
            and all(getattr(m.linear, k, None) == getattr(first, k, None)
                    for m in members for k in ("group_size", "bits", "mode")))


class _Group:
    def __init__(self, members):
        self.members = members
        self.base = copy.copy(members[0].linear)  # the joined frozen layer: not in the model's parameter tree
        sizes = [m.linear.weight.shape[0] for m in members]
        self.bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        for key in members[0].linear:
            self.base[key] = mx.concatenate([m.linear[key] for m in members], axis=0)
        mx.eval(self.base.parameters())
        self.views = []
        for m, lo, hi in zip(members, self.bounds, self.bounds[1:]):
            view = {key: self.base[key][lo:hi] for key in self.base}  # shares the joined buffer
            mx.eval(view)
            m.linear.update(view)
            self.views.append(view)
        self.pending = None  # (input, outputs not yet taken)

    def intact(self) -> bool:
        return all(type(m) is _CLASS[0] and type(m.linear) is type(self.base) and "lora_a" in m
                   and all(m.linear.get(k) is v for k, v in view.items()) for m, view in zip(self.members, self.views))

    def compute(self, x):
        total = self.bounds[-1]
        y = self.base(x)
        a = mx.concatenate([m.lora_a for m in self.members], axis=1)
        b = mx.concatenate([mx.pad(m.lora_b, [(0, 0), (lo, total - hi)])
                            for m, lo, hi in zip(self.members, self.bounds, self.bounds[1:])], axis=0)
        z = (x @ a) @ b
        return mx.split(y + (self.members[0].scale * z).astype(x.dtype), self.bounds[1:-1], axis=-1)

    def take(self, member, x):
        from mlx_lm.tuner.lora import LoRALinear
        i = next(i for i, m in enumerate(self.members) if m is member)
        if i == 0:
            self.pending = (x, list(self.compute(x)))
        elif self.pending is None or self.pending[0] is not x or self.pending[1][i] is None:
            return LoRALinear.__call__(member, x)
        outputs = self.pending[1]
        out, outputs[i] = outputs[i], None
        if all(o is None for o in outputs):
            self.pending = None
        return out


def _fused_class():
    from mlx_lm.tuner.lora import LoRALinear

    class SiblingLoRALinear(LoRALinear):
        """A LoRA layer whose output its group computes together with its siblings' (see the module)."""

        def __call__(self, x):
            group = self.__dict__.get("_group")
            if group is None or not group.intact():
                return LoRALinear.__call__(self, x)
            return group.take(self, x)
    return SiblingLoRALinear


_CLASS: list[type] = []


def patch(model) -> int:
    """Group the q/k/v and gate/up LoRA layers of every block that allows it; returns how many groups."""
    if not _CLASS:
        _CLASS.append(_fused_class())
    fused = 0
    for block in getattr(model, "layers", []):
        for parent_name, names in GROUPS:
            parent = getattr(block, parent_name, None)
            members = [getattr(parent, name, None) for name in names] if parent is not None else []
            if not members or not _reads_same_input(type(parent), names) or not _fusable(members):
                continue
            group = _Group(members)
            for m in members:
                m.__class__ = _CLASS[0]
                object.__setattr__(m, "_group", group)
            fused += 1
    return fused

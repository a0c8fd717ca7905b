"""Prototype (issue 26): a block's q/k/v projections, and its MLP's gate/up, computed as one matmul each.

The frozen weights of sibling LoRA layers that read the same input are concatenated once (the layers keep views
of the joined weight, so no memory is added); the first sibling called computes all of them (one frozen GEMM, one
x @ [A_q A_k A_v], one product with a block-diagonal B) and hands the others their slice when they are called with
the same input. MLX's split has a concatenate as its gradient, so the backward is one GEMM for dx too.
usage: patch(model) -> groups fused (memory_probe.py VARIANT-fuse).
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.tuner.lora import LoRALinear

GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj")))


class _Group:
    def __init__(self, members):
        self.members = members
        self.weight = mx.concatenate([m.linear.weight for m in members], axis=0)
        mx.eval(self.weight)
        sizes = [m.linear.weight.shape[0] for m in members]
        self.bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        self.views = [self.weight[a:b] for a, b in zip(self.bounds, self.bounds[1:])]
        mx.eval(self.views)
        for m, view in zip(members, self.views):
            m.linear.weight = view
        self.pending = None

    def intact(self) -> bool:
        return all(type(m) is _Fused and m.linear.weight is v and "lora_a" in m for m, v in zip(self.members, self.views))

    def compute(self, x):
        total = self.bounds[-1]
        y = x @ self.weight.T
        a = mx.concatenate([m.lora_a for m in self.members], axis=1)
        b = mx.concatenate([mx.pad(m.lora_b, [(0, 0), (lo, total - hi)])
                            for m, lo, hi in zip(self.members, self.bounds, self.bounds[1:])], axis=0)
        z = (x @ a) @ b
        out = y + (self.members[0].scale * z).astype(x.dtype)
        return mx.split(out, self.bounds[1:-1], axis=-1)

    def take(self, member, x):
        i = next(i for i, m in enumerate(self.members) if m is member)
        if i == 0:
            self.pending = (x, list(self.compute(x)))
        elif self.pending is None or self.pending[0] is not x:
            return LoRALinear.__call__(member, x)
        out = self.pending[1][i]
        self.pending[1][i] = None
        if i == len(self.members) - 1:
            self.pending = None
        return out


class _Fused(LoRALinear):
    def __call__(self, x):
        group = self.__dict__.get("_group")
        if group is None or not group.intact():
            return LoRALinear.__call__(self, x)
        return group.take(self, x)


def _fusable(members) -> bool:
    return (all(type(m) is LoRALinear and type(m.linear) is nn.Linear and "bias" not in m.linear
                and getattr(m.dropout, "_p_1", 0.0) == 1.0 for m in members)
            and len({m.scale for m in members}) == 1 and len({m.linear.weight.dtype for m in members}) == 1
            and len({m.linear.weight.shape[1] for m in members}) == 1)


def patch(model) -> int:
    fused = 0
    for block in getattr(model, "layers", []):
        for parent_name, names in GROUPS:
            parent = getattr(block, parent_name, None)
            members = [getattr(parent, n, None) for n in names] if parent is not None else []
            if members and _fusable(members):
                for m in members:
                    m.__class__ = _Fused
                group = _Group(members)
                for m in members:
                    object.__setattr__(m, "_group", group)
                fused += 1
    return fused

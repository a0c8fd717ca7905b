"""Packing prototype (scratch): rows filled with several examples + a block-diagonal causal mask
passed through per-layer cache objects (make_mask), vs our bucketed padded batches. Measures the
cost per position of the masked attention and the tokens/s of a packed epoch vs the bucketed one.
RoPE is relative, so positions need no reset: in-block scores equal the unpacked ones."""
import sys, time, statistics, argparse
from functools import partial
import pathlib; _ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(_ROOT)); sys.path.insert(0, str(_ROOT / "bench"))
import throughput as T
import numpy as np
import mlx.core as mx, mlx.nn as nn
from pathlib import Path
from trainer_core.runner import build_run
from trainer_core.training.optim import AdamW, clip_factor, global_norm


def clip_by_global_norm(grads, max_norm):  # the step before 7af08e7 (scaled copies of the gradients)
    norm = global_norm(grads)
    return ({k: (g * clip_factor(norm, max_norm)).astype(g.dtype) for k, g in grads.items()} if max_norm else grads), norm
from trainer_core.data import batching
from mlx.utils import tree_flatten, tree_map, tree_unflatten

case = T.CASES[sys.argv[1]]; ROW = int(sys.argv[2]); NSTEPS = int(sys.argv[3])
args = argparse.Namespace(model=None, tiny_check=False, rank=8, ours_set=[], mlx_tokens="ours", seed=0)
config, dataset, info = T.prepare_case(case, args, Path("/tmp/bench-work") / case.name)
config.max_steps = 10; config.output_dir = "/tmp/bench-work/prof/runs"; config.run_name = f"pk{time.time()}"
run = build_run(config); loop = run.loop; model = loop.model; ex = loop.train_examples

class SegCache:
    offset = 0
    def __init__(self, mask): self.mask = mask
    def update_and_fetch(self, k, v): return k, v
    def make_mask(self, N, **kw): return self.mask

def packed_loss(model, batch):
    ids, tm, seg = batch["input_ids"], batch["target_mask"], batch["segment"]
    s = seg[:, :-1]
    L = s.shape[1]
    causal = mx.tril(mx.ones((L, L), dtype=mx.bool_))
    mask = (s[:, None, :, None] == s[:, None, None, :]) & causal   # [B,1,L,L]
    caches = [SegCache(mask) for _ in model.layers]
    logits = model(ids[:, :-1], cache=caches)
    m = tm[:, 1:].astype(mx.float32)
    ce = nn.losses.cross_entropy(logits.astype(mx.float32), ids[:, 1:], reduction="none")
    return (ce * m).sum(), m.sum(), {}

def make_step(loss_fn):
    params = dict(tree_flatten(model.trainable_parameters()))
    opt = AdamW(params); holder = {"o": opt.state}
    state = [model.state, holder, mx.random.state]
    lvg = nn.value_and_grad(model, loss_fn)
    @partial(mx.compile, inputs=state, outputs=state)
    def step(batch, lr):
        (ls, w, _), g = lvg(model, batch)
        params = dict(tree_flatten(model.trainable_parameters()))
        flat, norm = clip_by_global_norm({k: v / w for k, v in tree_flatten(g)}, 1.0)
        newp, newst = opt.step(params, flat, holder["o"], lr)
        holder["o"] = newst; model.update(tree_unflatten(list(newp.items())))
        return ls, w
    lr = mx.array(2e-4)
    def call(b):
        out = step(b, lr); mx.eval(out, state)
    return call

# bucketed batches (our batching) and packed rows of ROW tokens (first-fit decreasing per window)
order = batching.epoch_batches([len(e.input_ids) for e in ex], 4, 0, 0)
bucketed = [loop.method.collate([ex[i] for i in b]) for b in order]
idx = sorted(range(len(ex)), key=lambda i: -len(ex[i].input_ids)); rows = []
for i in idx:
    n = len(ex[i].input_ids)
    for r in rows:
        if r[0] + n <= ROW: r[0] += n; r[1].append(i); break
    else: rows.append([n, [i]])
rng = np.random.default_rng(0); rng.shuffle(rows)
packed = []
for k in range(0, len(rows) - 3, 4):
    ids = np.zeros((4, ROW), np.int32); tm = np.zeros((4, ROW), bool); seg = np.full((4, ROW), -1, np.int32)
    for r, (_, members) in enumerate(rows[k:k + 4]):
        p = 0
        for s, i in enumerate(members):
            e = ex[i]; n = len(e.input_ids)
            ids[r, p:p + n] = e.input_ids; tm[r, p:p + n] = e.target_mask; seg[r, p:p + n] = s; p += n
    packed.append({"input_ids": mx.array(ids), "target_mask": mx.array(tm), "segment": mx.array(seg)})
real = lambda b: int((np.array(b["input_ids"]) != 0).sum()) if "segment" not in b else int((np.array(b["segment"]) >= 0).sum())
tok_b = sum(sum(len(ex[i].input_ids) for i in b) for b in order); pos_b = sum(int(b["input_ids"].size) for b in bucketed)
tok_p = sum(int((np.array(b["segment"]) >= 0).sum()) for b in packed); pos_p = sum(int(b["input_ids"].size) for b in packed)
print(f"bucketed: {len(bucketed)} batches, padding {100*(1-tok_b/pos_b):.1f}%;  packed rows of {ROW}: {len(packed)} batches, padding {100*(1-tok_p/pos_p):.1f}%")
# check: a packed row's loss equals the sum of its examples' unpacked losses
from trainer_core.training.losses import sft_loss
b0 = packed[0]; seg0 = np.array(b0["segment"][0]); members = [i for i in rows[0][1]]
ls_p = packed_loss(model, {k: v[:1] for k, v in b0.items()})[0].item()
ls_u = sum(sft_loss(model, loop.method.collate([ex[i]]))[0].item() for i in members)
print(f"check row 0 ({len(members)} examples): packed loss sum {ls_p:.4f} vs unpacked {ls_u:.4f}")
sb = make_step(lambda m, b: loop.method.loss(m, b)); sp = make_step(packed_loss)
n = min(NSTEPS, len(packed))
for b in bucketed[:n]: sb(b)   # compile every shape met below
sp(packed[0])
res = {"bucketed": [], "packed": []}
for rnd in range(2):
    for name, fn, bs in (("bucketed", sb, bucketed[:n]), ("packed", sp, packed[:n]))[::(1 if rnd % 2 == 0 else -1)]:
        toks = sum(real(b) for b in bs)
        if name == "bucketed": toks = sum(sum(len(ex[i].input_ids) for i in b) for b in order[:n])
        t = time.perf_counter(); c = time.process_time()
        for b in bs: fn(b)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        res[name].append(toks / cpu)
        print(f"round {rnd} {name:8s}: {n} steps, {toks} real tokens, {toks/wall:8.1f} tok/s, {toks/cpu:8.1f} tok/cpu-s", flush=True)
print("packed / bucketed tok/cpu-s:", statistics.median(res["packed"]) / statistics.median(res["bucketed"]))

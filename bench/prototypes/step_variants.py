"""Fixed-shape step cost: mlx-lm's compiled step vs ours and scratch variants of ours.
usage: step_variants.py CASE WIDTH [ITERS] [variants...]"""
import sys, time, statistics, argparse
from functools import partial
import pathlib; _ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(_ROOT)); sys.path.insert(0, str(_ROOT / "bench"))
import throughput as T
import mlx.core as mx, mlx.nn as nn, mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten
from pathlib import Path
from trainer_core.runner import build_run
from trainer_core.training.optim import AdamW, clip_factor, global_norm


def clip_by_global_norm(grads, max_norm):  # the step before 7af08e7 (scaled copies of the gradients)
    norm = global_norm(grads)
    return ({k: (g * clip_factor(norm, max_norm)).astype(g.dtype) for k, g in grads.items()} if max_norm else grads), norm
from mlx_lm.tuner.trainer import default_loss

case = T.CASES[sys.argv[1]]; W = int(sys.argv[2]); iters = int(sys.argv[3]) if len(sys.argv) > 3 else 20
only = sys.argv[4:]
args = argparse.Namespace(model=None, tiny_check=False, rank=8, ours_set=[], mlx_tokens="ours", seed=0)
config, dataset, info = T.prepare_case(case, args, Path("/tmp/bench-work") / case.name)
config.max_steps = 10; config.output_dir = "/tmp/bench-work/prof/runs"; config.run_name = f"v{time.time()}"
run = build_run(config); loop = run.loop; model = loop.model; method = loop.method
# a fixed batch of 4 rows padded to W: our collate + mlx-lm's (W+1 wide, inputs W)
ex = sorted(loop.train_examples, key=lambda e: -len(e.input_ids))
ex = [e for e in ex if len(e.input_ids) <= W][:4]
ours_batch = method.collate(ex)
ids = np.zeros((4, W), np.int32); m = np.zeros((4, W), bool)
for r, e in enumerate(ex):
    ids[r, :len(e.input_ids)] = e.input_ids; m[r, :len(e.target_mask)] = e.target_mask
ours_batch = {"input_ids": mx.array(ids), "target_mask": mx.array(m)}   # exactly W wide (model sees W-1)
mlx_batch = (mx.array(ids), mx.array([[int(np.argmax(mm)), len(e.input_ids)] for mm, e in zip(m, ex)]))
print("rows", [len(e.input_ids) for e in ex], "W", W, file=sys.stderr)

def mlx_lm_step(model):
    opt = optim.Adam(learning_rate=2e-4)
    lvg = nn.value_and_grad(model, default_loss)
    state = [model.state, opt.state, mx.random.state]
    @partial(mx.compile, inputs=state, outputs=state)
    def step(batch, lengths):
        (lvalue, toks), grad = lvg(model, batch, lengths)
        opt.update(model, grad)
        return lvalue, toks
    def call():
        out = step(*mlx_batch); mx.eval(state, out)
    return call

def ours_variant(model, clip=1.0, guard=True, loss_fn=None, opt_kind="ours"):
    params = dict(tree_flatten(model.trainable_parameters()))
    optimizer = AdamW(params)
    holder = {"optimizer": optimizer.state}
    state = [model.state, holder, mx.random.state]
    lvg = nn.value_and_grad(model, loss_fn or (lambda mdl, b: method.loss(mdl, b)))
    @partial(mx.compile, inputs=state, outputs=state)
    def fused(batch, lr):
        (loss_sum, weight, metrics), grads = lvg(model, batch)
        params = dict(tree_flatten(model.trainable_parameters()))
        flat = {k: g / weight for k, g in tree_flatten(grads)}
        if clip:
            flat, norm = clip_by_global_norm(flat, clip)
        else:
            norm = mx.array(0.0)
        old = holder["optimizer"]
        new_params, new_state = optimizer.step(params, flat, old, lr)
        if guard:
            ok = mx.isfinite(loss_sum) & mx.isfinite(norm)
            new_params = {k: mx.where(ok, v, params[k]) for k, v in new_params.items()}
            new_state = tree_map(lambda n, o: mx.where(ok, n, o), new_state, old)
        else:
            ok = mx.array(True)
        holder["optimizer"] = new_state
        model.update(tree_unflatten(list(new_params.items())))
        return loss_sum, weight, norm, ok
    lr = mx.array(2e-4)
    def call():
        out = fused(ours_batch, lr); mx.eval(out, model.state, holder)
    return call

def loss_nocast(mdl, batch):
    ids = batch["input_ids"]; logits = mdl(ids[:, :-1])
    mask = batch["target_mask"][:, 1:]
    ce = nn.losses.cross_entropy(logits, ids[:, 1:], reduction="none") * mask
    return ce.astype(mx.float32).sum(), mask.sum().astype(mx.float32), {}

def ours_real():
    def call():
        out = loop.steps.train_step([ours_batch], 2e-4)
    return call

variants = {
    "mlx-lm": lambda: mlx_lm_step(model),
    "ours(step.py)": ours_real,
    "ours-copy": lambda: ours_variant(model),
    "noclip": lambda: ours_variant(model, clip=0),
    "noguard": lambda: ours_variant(model, guard=False),
    "noclip+noguard": lambda: ours_variant(model, clip=0, guard=False),
    "nocast-loss": lambda: ours_variant(model, loss_fn=loss_nocast),
}
if only: variants = {k: v for k, v in variants.items() if k in only}
calls = {}
for name, mk in variants.items():
    c = mk(); t = time.perf_counter(); c(); first = time.perf_counter() - t
    c(); calls[name] = c
    print(f"{name:16s} first call (trace+compile+run) {first*1000:8.1f} ms", file=sys.stderr)
times = {k: [] for k in calls}; cpus = {k: [] for k in calls}
for i in range(iters):
    for name, c in (calls.items() if i % 2 == 0 else reversed(list(calls.items()))):
        t = time.perf_counter(); p = time.process_time(); c()
        times[name].append(time.perf_counter() - t); cpus[name].append(time.process_time() - p)
base = statistics.median(times["mlx-lm"]) if "mlx-lm" in times else None
cbase = statistics.median(cpus["mlx-lm"]) if "mlx-lm" in cpus else None
for name, ts in times.items():
    med = statistics.median(ts); cmed = statistics.median(cpus[name])
    q = np.percentile(ts, [25, 75]); cq = np.percentile(cpus[name], [25, 75])
    print(f"{name:16s} wall {med*1000:8.2f} ms (IQR {q[0]*1000:7.2f}-{q[1]*1000:7.2f})"
          + (f" x{med/base:.3f}" if base else "")
          + f" | cpu {cmed*1000:8.2f} ms (IQR {cq[0]*1000:7.2f}-{cq[1]*1000:7.2f})"
          + (f" x{cmed/cbase:.3f}" if cbase else ""))
import gc
for name, c in calls.items():
    gc.collect(); mx.clear_cache(); mx.reset_peak_memory(); base = mx.get_active_memory()
    c(); peak = mx.get_peak_memory()
    print(f"{name:16s} one step: peak {peak/1e6:9.1f} MB, above the memory in use before it {(peak-base)/1e6:9.1f} MB")

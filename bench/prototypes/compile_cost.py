"""Trace+compile cost of a new batch shape: first call vs later calls at the same shape (CPU seconds).
usage: compile_cost.py CASE W1,W2,..."""
import sys, time, statistics, argparse
from functools import partial
import pathlib; _ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(_ROOT)); sys.path.insert(0, str(_ROOT / "bench"))
import throughput as T
import mlx.core as mx, mlx.nn as nn, mlx.optimizers as optim
import numpy as np
from pathlib import Path
from trainer_core.runner import build_run
from mlx_lm.tuner.trainer import default_loss

case = T.CASES[sys.argv[1]]; widths = [int(w) for w in sys.argv[2].split(",")]
args = argparse.Namespace(model=None, tiny_check=False, rank=8, ours_set=[], mlx_tokens="ours", seed=0)
config, dataset, info = T.prepare_case(case, args, Path("/tmp/bench-work") / case.name)
config.max_steps = 10; config.output_dir = "/tmp/bench-work/prof/runs"; config.run_name = f"c{time.time()}"
run = build_run(config); loop = run.loop; model = loop.model
rng = np.random.default_rng(0)
def batch(W):
    ids = rng.integers(3, 400, (4, W)).astype(np.int32); m = np.ones((4, W), bool); m[:, 0] = False
    return {"input_ids": mx.array(ids), "target_mask": mx.array(m)}, (mx.array(ids), mx.array([[1, W - 1]] * 4))
opt = optim.Adam(learning_rate=2e-4); lvg = nn.value_and_grad(model, default_loss)
state = [model.state, opt.state, mx.random.state]
@partial(mx.compile, inputs=state, outputs=state)
def mstep(b, l):
    (lv, t), g = lvg(model, b, l); opt.update(model, g); return lv, t
def cpu(f):
    p = time.process_time(); w = time.perf_counter(); f(); return time.process_time() - p, time.perf_counter() - w
rows = []
for W in widths:
    ob, mb = batch(W)
    for name, f in (("mlx-lm", lambda: mx.eval(mstep(*mb), state)), ("ours", lambda: loop.steps.train_step([ob], 2e-4))):
        first = cpu(f); later = [cpu(f) for _ in range(3)]
        c = statistics.median(x[0] for x in later)
        print(f"W={W:4d} {name:7s} first {first[0]*1000:8.1f} ms cpu  steady {c*1000:8.1f} ms cpu  -> compile ~{(first[0]-c)*1000:8.1f} ms cpu", flush=True)

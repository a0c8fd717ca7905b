"""Where does our loop's step time go? cProfile over N steps of the micro/small case, plus
manual timers around collate / compiled step / rest."""
import sys, time, cProfile, pstats, io
import pathlib; _ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(_ROOT)); sys.path.insert(0, str(_ROOT / "bench"))
import throughput as T
import mlx.core as mx
from trainer_core.runner import build_run
from pathlib import Path
import argparse

case = T.CASES[sys.argv[1]]
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 100
args = argparse.Namespace(model=None, tiny_check=False, rank=8, ours_set=[], mlx_tokens="ours", seed=0, data=None,
                          batch_size=None, max_seq_length=None, mlx_cold_cache=False)
config, dataset, info = T.prepare_case(case, args, Path("/tmp/bench-work") / case.name)
config.max_steps = steps; config.output_dir = "/tmp/bench-work/prof/runs"; config.run_name = f"p{time.time()}"
run = build_run(config)
loop = run.loop
acc = {"collate": 0.0, "train_step": 0.0, "total": 0.0, "steps": 0}
orig_collate = loop.method.collate
def collate(ex):
    t = time.perf_counter(); b = orig_collate(ex); acc["collate"] += time.perf_counter() - t; return b
loop.method.collate = collate
orig_ts = loop.steps.train_step
def ts(b, lr):
    t = time.perf_counter(); o = orig_ts(b, lr); acc["train_step"] += time.perf_counter() - t; return o
loop.steps.train_step = ts
orig = loop._train_step
def tstep():
    t = time.perf_counter(); orig(); acc["total"] += time.perf_counter() - t; acc["steps"] += 1
loop._train_step = tstep
# warm all shapes first: one full pass of shapes is not needed; profile everything
pr = cProfile.Profile()
t0 = time.perf_counter()
pr.enable()
loop.train()
pr.disable()
print("wall", time.perf_counter() - t0, acc)
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(35); print(s.getvalue()[:6000])

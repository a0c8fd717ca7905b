"""Host cost of one compiled train step: how long recording it takes (the call, no evaluation) and what its graph
holds (node counts by primitive, from `mx.export_to_dot`). On a GPU every millisecond of recording and every kernel
node is host time before the step's kernels run (bench/RESULTS.md, "GPU, tenth look"); on the CPU the counts are the
same graph (the adapters joined as on a GPU), so this is where to check a change to the step's structure before a
GPU session.
usage: record_cost.py [--per-array-adamw]   (the gpu case's shape, 24 layers, at tiny widths; 4 x 64 tokens)"""
import collections, dataclasses, re, statistics, sys, tempfile, time, argparse
import pathlib; _ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(_ROOT)); sys.path.insert(0, str(_ROOT / "bench"))
import throughput as T
from cases import CASES
import mlx.core as mx
from mlx.utils import tree_flatten
from trainer_core.runner import build_run
from trainer_core.training import optim

optim.JOIN_ON_CPU = True  # the graph a GPU records (the product joins the adapters there, not on the CPU)
if "--per-array-adamw" in sys.argv:
    optim.JOIN_LIMIT = 0
case = dataclasses.replace(CASES["gpu"], build=dict(hidden=64, layers=24, intermediate=128, heads=4, kv_heads=2,
                                                    vocab=512), max_seq_length=64, batch_size=4)
args = argparse.Namespace(model=None, tiny_check=False, rank=8, ours_set=[], mlx_tokens="ours", seed=0)
config, _, _ = T.prepare_case(case, args, pathlib.Path("/tmp/bench-work/record"))
config.max_steps = 100; config.output_dir = "/tmp/bench-work/record/runs"; config.run_name = f"r{time.time()}"
loop = build_run(config).loop
steps, model = loop.steps, loop.model
loop._collate_cycle()
batch, lr = loop.cycle[1][0], mx.array(1e-4, dtype=mx.float32)

times = []
for i in range(60):
    t = time.perf_counter(); out = steps._fused(batch, lr); times.append(time.perf_counter() - t)
    mx.eval(out, model.state, steps.holder)
out = steps._fused(batch, lr)
with tempfile.NamedTemporaryFile("w+", suffix=".dot") as f:
    mx.export_to_dot(f.name, *[v for _, v in tree_flatten((out, model.trainable_parameters(), steps.holder))])
    counts = collections.Counter(label.split()[0] for label in re.findall(r'label ="([A-Za-z]+)', open(f.name).read()))
mx.eval(out, model.state, steps.holder)
print({"adamw": "joined" if loop.optimizer.joined else "per array",
       "record_ms": round(1e3 * statistics.median(times[5:]), 2), "nodes": sum(counts.values()),
       **{k: counts[k] for k in ("AsType", "Concatenate", "Matmul")}, "top": counts.most_common(6)})

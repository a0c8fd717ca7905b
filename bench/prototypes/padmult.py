"""Prototype: our loop with batching.PAD_MULTIPLE = 8 / 16 / 32, interleaved (same case, same batches order)."""
import sys, argparse, statistics
import pathlib; _ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(_ROOT)); sys.path.insert(0, str(_ROOT / "bench"))
import throughput as T
from trainer_core.data import batching
from pathlib import Path
case = T.CASES[sys.argv[1]]; steps = int(sys.argv[2]); rounds = int(sys.argv[3]); mults = [int(x) for x in sys.argv[4].split(",")]
args = argparse.Namespace(model=None, tiny_check=False, rank=8, ours_set=[], mlx_tokens="ours", seed=0)
wd = Path("/tmp/bench-work") / case.name
config, dataset, info = T.prepare_case(case, args, wd)
res = {m: [] for m in mults}
for r in range(rounds):
    for m in (mults if r % 2 == 0 else mults[::-1]):
        batching.PAD_MULTIPLE = m
        out = T.run_ours(config, wd, f"pm{m}-{r}", case.warmup, steps)
        res[m].append(out)
        print(f"round {r} PAD_MULTIPLE={m:3d} tok/s {out['tokens_per_sec']:8.1f} tok/cpu-s {out['tokens_per_cpu_sec']:8.1f} pad {100*out['padding_fraction']:.1f}% new shapes {out['new_shape_steps']} peak {out['peak_memory_gb']:.3f}", flush=True)
for m, rs in res.items():
    print(f"PAD_MULTIPLE={m:3d}: median tok/s {statistics.median(r['tokens_per_sec'] for r in rs):8.1f}  tok/cpu-s {statistics.median(r['tokens_per_cpu_sec'] for r in rs):8.1f}  pad {100*statistics.median(r['padding_fraction'] for r in rs):.1f}%")

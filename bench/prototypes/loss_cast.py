"""Peak memory (and CPU time) of the loss forward+backward on bf16 logits of the gpu case's size:
ours (cast logits to fp32 first) vs mlx-lm's default_loss formulation (CE on bf16, cast after)."""
import sys, time, gc
import pathlib; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
import trainer_core
import mlx.core as mx, mlx.nn as nn
B, L, V = 4, 1023, int(sys.argv[1]) if len(sys.argv) > 1 else 32000
logits = (mx.random.normal((B, L, V)) * 2).astype(mx.bfloat16)
targets = mx.random.randint(0, V, (B, L)); mask = mx.ones((B, L), dtype=mx.bool_)
mx.eval(logits, targets, mask)
def ours(lg):
    m = mask.astype(mx.float32)
    return (nn.losses.cross_entropy(lg.astype(mx.float32), targets, reduction="none") * m).sum() / m.sum()
def mlxlm(lg):
    ce = nn.losses.cross_entropy(lg, targets) * mask
    return ce.astype(mx.float32).sum() / mask.sum()
for name, f in (("ours (fp32 cast)", ours), ("mlx-lm (bf16 CE)", mlxlm), ("ours (fp32 cast)", ours), ("mlx-lm (bf16 CE)", mlxlm)):
    g = mx.compile(mx.value_and_grad(f))
    mx.eval(g(logits))
    gc.collect(); mx.clear_cache(); mx.reset_peak_memory(); base = mx.get_active_memory()
    t = time.process_time(); v, gr = g(logits); mx.eval(v, gr); cpu = time.process_time() - t
    print(f"{name:18s} loss {v.item():.4f}  grad dtype {gr.dtype}  peak above inputs {(mx.get_peak_memory()-base)/1e9:.2f} GB  cpu {cpu:.2f} s")
    del v, gr

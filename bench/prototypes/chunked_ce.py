"""LM head + loss, forward+backward, bf16: peak memory of ours (full logits, fp32 cast), mlx-lm's
(full logits, bf16 CE) and a chunked fp32 CE (head + CE per chunk of tokens under mx.checkpoint)."""
import sys, time, gc
import pathlib; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
import trainer_core
import mlx.core as mx, mlx.nn as nn
B, L, V, H = 4, 1023, 32000, int(sys.argv[1]) if len(sys.argv) > 1 else 128
CH = int(sys.argv[2]) if len(sys.argv) > 2 else 256
h = mx.random.normal((B, L, H)).astype(mx.bfloat16)
W = (mx.random.normal((V, H)) * 0.05).astype(mx.bfloat16)
targets = mx.random.randint(0, V, (B, L)); mask = mx.ones((B, L), dtype=mx.bool_)
mx.eval(h, W, targets, mask)
def ours(h, W):
    logits = h @ W.T; m = mask.astype(mx.float32)
    return (nn.losses.cross_entropy(logits.astype(mx.float32), targets, reduction="none") * m).sum()
def mlxlm(h, W):
    ce = nn.losses.cross_entropy(h @ W.T, targets) * mask
    return ce.astype(mx.float32).sum()
def chunk_loss(hc, W, tc, mc):
    lg = (hc @ W.T).astype(mx.float32)
    return (nn.losses.cross_entropy(lg, tc, reduction="none") * mc.astype(mx.float32)).sum()
ck = mx.checkpoint(chunk_loss)
def chunked(h, W):
    total = mx.array(0.0)
    for s in range(0, L, CH):
        tc, mc = targets[:, s:s + CH], mask[:, s:s + CH]
        fn = mx.checkpoint(lambda hc, W, tc=tc, mc=mc: chunk_loss(hc, W, tc, mc))
        total = total + fn(h[:, s:s + CH], W)
    return total
for name, f in ((f"chunked fp32 ({CH})", chunked),):
    g = mx.compile(mx.value_and_grad(f, argnums=(0, 1)))
    mx.eval(g(h, W))
    gc.collect(); mx.clear_cache(); mx.reset_peak_memory(); base = mx.get_active_memory()
    t = time.process_time(); v, gr = g(h, W); mx.eval(v, gr); cpu = time.process_time() - t
    print(f"{name:20s} loss {v.item()/ (B*L):.4f}  peak above inputs {(mx.get_peak_memory()-base)/1e9:.2f} GB  cpu {cpu:.2f} s", flush=True)
    del v, gr

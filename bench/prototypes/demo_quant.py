"""Demo model on CPU: where does a QLoRA step go? forward / value_and_grad, quantized vs dequantized base."""
import sys, time
import pathlib; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
import trainer_core
import mlx.core as mx, mlx.nn as nn
from trainer_core.models.loading import load_model
from mlx_lm.tuner.utils import linear_to_lora_layers
from mlx_lm.tuner.trainer import default_loss
from mlx_lm.utils import dequantize_model

def timeit(f, n=2):
    f(); ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return min(ts)

B, L = 4, 64
ids = mx.random.randint(0, 49152, (B, L + 1))
lengths = mx.array([[1, L]] * B)
for deq in (False, True):
    m = load_model("demo").model
    if deq:
        m = dequantize_model(m)
    m.freeze()
    linear_to_lora_layers(m, len(m.layers), {"rank": 8, "scale": 2.0, "dropout": 0.0,
        "keys": ["self_attn.q_proj","self_attn.k_proj","self_attn.v_proj","self_attn.o_proj","mlp.gate_proj","mlp.up_proj","mlp.down_proj"]})
    mx.eval(m.parameters())
    fwd = lambda: mx.eval(m(ids[:, :-1]))
    vg = nn.value_and_grad(m, default_loss)
    step = lambda: mx.eval(vg(m, ids, lengths))
    # pieces: lm head only
    h = mx.random.normal((B, L, 576))
    head = lambda: mx.eval(m.model.embed_tokens.as_linear(h))
    print(f"dequantized={deq}: forward {timeit(fwd):.2f}s  value_and_grad {timeit(step):.2f}s  lm_head fwd {timeit(head):.2f}s", flush=True)
    del m

"""Where the gpu case's peak memory goes: one LoRA step of the bench's gpu model at a fixed shape, several ways.
usage: memory_probe.py [--tiny] VARIANT   (fwd | grad | step, each optionally + "-fuse": q/k/v and gate/up as one
matmul each, "-ckptattn": the fused attention
under mx.checkpoint, so its backward recomputes it instead of keeping anything of it, "-ckptblock": every block,
"-swiglu": SwiGLU's product recomputed, "-tail": SwiGLU and down_proj recomputed); one variant per process.
--dims H,L,F,heads,kv_heads,vocab sets another model (e.g. 384,4,1024,6,2,512 with --batch 128 --seq 32 on a CPU).
Prints the peak above the weights and what the stored activations should take (bf16, per token and layer: the
block's inputs/norms 6 x hidden, k/v 4 x kv width, the MLP's gate/up/silu/product 4 x intermediate)."""
import sys, json, argparse, pathlib
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
import trainer_core  # noqa: F401
import mlx.core as mx, mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models import llama
from mlx_lm.tuner.utils import linear_to_lora_layers
from trainer_core.models import precision
from trainer_core.training import losses
from trainer_core.training.optim import AdamW
from trainer_core.training.step import CompiledSteps

p = argparse.ArgumentParser(); p.add_argument("--tiny", action="store_true"); p.add_argument("variant")
p.add_argument("--batch", type=int, default=4); p.add_argument("--seq", type=int, default=1024)
p.add_argument("--dims", help="hidden,layers,ffn,heads,kv_heads,vocab (default: the gpu case's)")
p.add_argument("--dtype", default="bfloat16")
p.add_argument("--plain-head", action="store_true"); p.add_argument("--head-chunk", type=int)
p.add_argument("--profile", type=int, default=0, help="then N steps on new batches under torch.profiler (CUPTI): "
               "kernel time by kind, GPU idle, host recording time (kernel_table.py)")
a = p.parse_args()
from trainer_core.training import head_loss
head_loss.ENABLED = not a.plain_head
head_loss.CHUNK = a.head_chunk or head_loss.CHUNK
H, NL, F, HEADS, KV, V = (64, 2, 128, 4, 2, 512) if a.tiny else (1536, 24, 4096, 12, 4, 32000)
if a.dims:
    H, NL, F, HEADS, KV, V = (int(x) for x in a.dims.split(","))
cfg = dict(model_type="llama", hidden_size=H, num_hidden_layers=NL, intermediate_size=F, num_attention_heads=HEADS,
           num_key_value_heads=KV, vocab_size=V, rms_norm_eps=1e-5, rope_theta=1e4, tie_word_embeddings=False)
mx.random.seed(0)
model = llama.Model(llama.ModelArgs.from_dict(cfg))
model.set_dtype(getattr(mx, a.dtype))
model.freeze()
linear_to_lora_layers(model, NL, {"rank": 8, "scale": 2.0, "dropout": 0.0, "keys": [
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
    "mlp.down_proj"]})
mx.eval(model.parameters())
ids = mx.random.randint(0, V, (a.batch, a.seq + 1)).astype(mx.int32)
batch = {"input_ids": ids, "target_mask": mx.ones(ids.shape, dtype=mx.bool_)}
loss = lambda m, b: losses.sft_loss(m, b)[0]  # noqa: E731


class SFT:
    def loss(self, m, b):
        return losses.sft_loss(m, b)


def run():
    if a.variant == "fwd":
        mx.eval(loss(model, batch))
    elif a.variant == "grad":
        mx.eval(nn.value_and_grad(model, loss)(model, batch))
    else:
        run.steps.train_step([batch], 1e-4)


name = a.variant
if a.variant.endswith("-ckptattn"):
    fast_sdpa = llama.scaled_dot_product_attention

    def ckpt_sdpa(q, k, v, cache=None, scale=1.0, mask=None):
        return mx.checkpoint(lambda q, k, v: fast_sdpa(q, k, v, cache=cache, scale=scale, mask=mask))(q, k, v)
    llama.scaled_dot_product_attention = ckpt_sdpa
    a.variant = a.variant[:-len("-ckptattn")]
if a.variant.endswith("-ckptblock"):  # every block recomputed (gradient_checkpointing = true), for comparison
    from trainer_core.models.recompute import recompute_blocks
    recompute_blocks(model)
    a.variant = a.variant[:-len("-ckptblock")]
if a.variant.endswith("-swiglu"):  # SwiGLU's product recomputed (models/recompute.recompute_swiglu_products)
    from trainer_core.models.recompute import recompute_swiglu_products
    print("patched", recompute_swiglu_products(model))
    a.variant = a.variant[:-len("-swiglu")]
if a.variant.endswith("-fuse"):  # q/k/v and gate/up as one matmul each (prototypes/fuse_siblings.py)
    import fuse_siblings
    print("fused", fuse_siblings.patch(model))
    a.variant = a.variant[:-len("-fuse")]
if a.variant.endswith("-tail"):
    from trainer_core.models.recompute import recompute_mlp_tails
    recompute_mlp_tails(model)
    a.variant = a.variant[:-len("-tail")]
if a.variant == "step":
    run.steps = CompiledSteps(model, SFT(), AdamW(dict(tree_flatten(model.trainable_parameters()))), 1.0, 1,
                              compute_dtype=precision.compute_dtype(model, True))
run()
mx.synchronize(); mx.clear_cache(); mx.reset_peak_memory()
base = mx.get_active_memory()
run()
mx.synchronize()
peak = mx.get_peak_memory()
import time
times = []
for _ in range(5):
    t = time.perf_counter(); run(); mx.synchronize(); times.append(time.perf_counter() - t)
kv = KV * H // HEADS
act = NL * a.batch * a.seq * (6 * H + 4 * kv + 4 * F) * 2
print(json.dumps({"variant": name, "ms": round(1000 * sorted(times)[2], 1), "device": str(mx.default_device()), "weights_gb": round(base / 1e9, 3),
                  "above_weights_gb": round((peak - base) / 1e9, 3),
                  "expected_activations_gb": round(act / 1e9, 3),
                  "logits_bf16_gb": round(a.batch * a.seq * V * 2 / 1e9, 3)}), flush=True)
if a.profile:  # the device's view of N steps, each on a new batch (as the product feeds them)
    import kernel_table
    lr = mx.array(1e-4, dtype=mx.float32)
    record, total = [], []

    def profiled_step():
        ids = mx.random.randint(0, V, (a.batch, a.seq + 1)).astype(mx.int32)
        fresh = {"input_ids": ids, "target_mask": mx.ones(ids.shape, dtype=mx.bool_)}
        t = time.perf_counter()
        out = run.steps._fused(fresh, lr)  # records the graph only (MLX is lazy)
        record.append(time.perf_counter() - t)
        mx.eval(out, model.state, run.steps.holder)
        total.append(time.perf_counter() - t)
    for _ in range(3):
        profiled_step()
    record.clear(); total.clear()
    print(json.dumps(kernel_table.profile(profiled_step, a.profile)), flush=True)
    print(json.dumps({"record_ms": round(1000 * sorted(record)[len(record) // 2], 2),
                      "step_ms": round(1000 * sorted(total)[len(total) // 2], 2)}), flush=True)


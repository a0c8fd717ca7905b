"""GPU levers, fixed shape: mlx-lm's compiled LoRA step vs ours with each lever on/off.
usage: gpu_levers.py [--tiny] [--steps N] [variants...]
Model: the bench's gpu case (random Llama 1536 x 24, FFN 4096, vocab 32000, bf16) built in memory;
batch 4 x 1024 random tokens, every position scored; LoRA r8 scale 2 on every linear of every block."""
import sys, time, statistics, argparse, json
from functools import partial
import pathlib; _ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(_ROOT))
import trainer_core  # noqa: F401
import numpy as np
import mlx.core as mx, mlx.nn as nn, mlx.optimizers as optim
from mlx.utils import tree_flatten
from mlx_lm.models import llama
from mlx_lm.tuner.utils import linear_to_lora_layers
from mlx_lm.tuner.trainer import default_loss
from trainer_core.training import losses
from trainer_core.models import precision
from trainer_core.training.optim import AdamW
from trainer_core.training.step import CompiledSteps
from trainer_core.models.recompute import recompute_blocks

p = argparse.ArgumentParser()
p.add_argument("--tiny", action="store_true"); p.add_argument("--steps", type=int, default=10)
p.add_argument("--warmup", type=int, default=3); p.add_argument("--batch", type=int, default=4)
p.add_argument("--seq", type=int, default=1024); p.add_argument("variants", nargs="*")
a = p.parse_args()
SIZE = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=512) if a.tiny else dict(hidden_size=1536, num_hidden_layers=24, intermediate_size=4096,
                                                num_attention_heads=12, num_key_value_heads=4, vocab_size=32000)
LORA = {"rank": 8, "scale": 2.0, "dropout": 0.0,
        "keys": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]}


def make_model(lora=True):
    mx.random.seed(0)
    cfg = dict(model_type="llama", rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, **SIZE)
    model = llama.Model(llama.ModelArgs.from_dict(cfg))
    model.set_dtype(mx.bfloat16)
    if lora:
        model.freeze()
        linear_to_lora_layers(model, SIZE["num_hidden_layers"], LORA)
    mx.eval(model.parameters())
    return model


def loaded_model():
    """The model as the product loads it: saved to a folder, read back by trainer_core.models.loading.load_model."""
    from trainer_core.models.loading import load_model
    folder = pathlib.Path("/tmp/gpu-levers-model")
    if not (folder / "config.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        mx.random.seed(0)
        cfg = dict(model_type="llama", rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, **SIZE)
        m = llama.Model(llama.ModelArgs.from_dict(cfg))
        m.set_dtype(mx.bfloat16)
        mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(m.parameters())))
        from tests.tiny_model import write_tokenizer
        write_tokenizer(folder, 512)
        (folder / "config.json").write_text(json.dumps(cfg))
    model = load_model(str(folder)).model
    model.freeze()
    linear_to_lora_layers(model, SIZE["num_hidden_layers"], LORA)
    mx.eval(model.parameters())
    return model


mx.random.seed(1)
IDS = mx.random.randint(0, SIZE["vocab_size"], (a.batch, a.seq + 1)).astype(mx.int32)
MASK = mx.ones(IDS.shape, dtype=mx.bool_)
LENGTHS = mx.array([[1, a.seq]] * a.batch)


# ---- fused LoRA (prototype): y = x (W + s (A B)^T)^T with a hand-written backward --------------------------
def _merged(w, la, lb, scale):
    return w + (scale * (la @ lb)).T.astype(w.dtype)


def _fused(scale):
    @mx.custom_function
    def f(x, w, la, lb):
        return x @ _merged(w, la, lb, scale).T

    @f.vjp
    def f_vjp(primals, cot, out):
        x, w, la, lb = primals
        merged = _merged(w, la, lb, scale)
        x2, dy2 = x.reshape(-1, x.shape[-1]), cot.reshape(-1, cot.shape[-1])
        dla = scale * (x2.T @ (dy2 @ lb.T).astype(x.dtype))
        dlb = scale * ((x2 @ la).T @ dy2)
        return cot @ merged, mx.zeros_like(w), dla.astype(la.dtype), dlb.astype(lb.dtype)
    return f


def _fused_fwd(scale):
    """merged weight in the forward only; the backward is the unmerged LoRA one (no merged weights kept)."""
    @mx.custom_function
    def f(x, w, la, lb):
        return x @ _merged(w, la, lb, scale).T

    @f.vjp
    def f_vjp(primals, cot, out):
        x, w, la, lb = primals
        x2, dy2 = x.reshape(-1, x.shape[-1]), cot.reshape(-1, cot.shape[-1])
        dyb = (dy2 @ lb.T).astype(x.dtype)  # [N, r]
        dx = cot @ w + (scale * dyb @ la.T).reshape(x.shape).astype(x.dtype)
        dla = scale * (x2.T @ dyb)
        dlb = scale * ((x2 @ la).T @ dy2)
        return dx, mx.zeros_like(w), dla.astype(la.dtype), dlb.astype(lb.dtype)
    return f


def fuse_lora(model, make=None):
    from mlx_lm.tuner.lora import LoRALinear
    fns = {}

    def call(self, x):
        f = fns.setdefault(self.scale, (make or _fused)(float(self.scale)))
        y = f(x, self.linear.weight, self.lora_a, self.lora_b)
        return y + self.linear.bias if "bias" in self.linear else y
    Fused = type("FusedLoRALinear", (LoRALinear,), {"__call__": call})
    for _, m in model.named_modules():
        if type(m) is LoRALinear:
            m.__class__ = Fused


class SFT:
    def loss(self, model, batch):
        return losses.sft_loss(model, batch)


class DPO:
    """DPO on 2 pairs (rows: 2 chosen then 2 rejected), reference log-probs given (precomputed).
    mlx_way: the log-probs as mlx-lm-based DPO code computes them (16-bit log-softmax)."""
    def __init__(self, mlx_way):
        self.mlx_way = mlx_way

    def loss(self, model, batch):
        from trainer_core.methods.dpo import dpo_loss
        ids, mask = batch["input_ids"], batch["target_mask"][:, 1:].astype(mx.float32)
        logits = model(ids[:, :-1])
        if self.mlx_way:
            token = -nn.losses.cross_entropy(logits, ids[:, 1:], reduction="none").astype(mx.float32)
        else:
            token = -losses.token_nll(logits, ids[:, 1:])
        logps = (token * mask).sum(axis=-1)
        n = logps.shape[0] // 2
        out, rc, rr = dpo_loss(logps[:n], logps[n:], batch["reference_chosen"], batch["reference_rejected"], beta=0.1)
        return out.sum(), mx.array(n, dtype=mx.float32), {"margin": (rc - rr).sum()}


def dpo_runner(model, *, mlx_way):
    params = dict(tree_flatten(model.trainable_parameters()))
    steps = CompiledSteps(model, DPO(mlx_way), AdamW(params), 1.0, 1,
                          compute_dtype=precision.compute_dtype(model, not mlx_way))
    n = a.batch // 2
    batch = {"input_ids": IDS, "target_mask": MASK, "reference_chosen": mx.full((n,), -7000.0),
             "reference_rejected": mx.full((n,), -7000.0)}

    def call():
        out = steps.train_step([batch], 2e-4)
        return (out[0] / out[1]).item()
    return call


def cat_norm(grads):  # one concatenated vector: a few kernels instead of ~3 per parameter
    flat = mx.concatenate([g.reshape(-1) for g in grads.values()])
    return mx.sqrt(mx.sum(mx.square(flat.astype(mx.float32))))


def no_norm(grads):  # probe: what computing the norm costs
    return mx.array(0.0)


def per_array_norm(grads):  # one reduction per gradient (before 2288c52)
    return mx.sqrt(sum(mx.sum(mx.square(g.astype(mx.float32))) for g in grads.values()))


def chunk_norm(grads, size=16):  # joined in groups of `size` arrays
    arrays = list(grads.values())
    parts = [mx.concatenate([g.reshape(-1) for g in arrays[i:i + size]]) for i in range(0, len(arrays), size)]
    return mx.sqrt(sum(mx.sum(mx.square(p.astype(mx.float32))) for p in parts))


from trainer_core.training.optim import global_norm as _global_norm  # noqa: E402
NORMS = {None: _global_norm, "cat": cat_norm, "none": no_norm, "per": per_array_norm, "chunk": chunk_norm}


def bf16_masked_ce(logits, targets, mask):  # mlx-lm's default_loss way: cross-entropy in the logits' dtype
    mask = mask.astype(mx.float32)
    tl = nn.losses.cross_entropy(logits, targets, reduction="none").astype(mx.float32)
    return (tl * mask).sum(), mask.sum()


def old_masked_ce(logits, targets, mask):  # before a54f785: float32 logits
    mask = mask.astype(mx.float32)
    tl = nn.losses.cross_entropy(logits.astype(mx.float32), targets, reduction="none")
    return (tl * mask).sum(), mask.sum()


def mlx_lm_runner(model):
    opt = optim.Adam(learning_rate=2e-4)
    lvg = nn.value_and_grad(model, default_loss)
    state = [model.state, opt.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(batch, lengths):
        (lvalue, toks), grad = lvg(model, batch, lengths)
        opt.update(model, grad)
        return lvalue, toks

    def call():
        out = step(IDS, LENGTHS)
        mx.eval(state, out)
        return out[0].item()
    return call


def ours_runner(model, *, mp=True, clip=1.0, old_loss=False, fused=False, ckpt=False, sgd=False, reseed=False,
                fresh=False, bf16_loss=False, norm=None, head=True, chunk=None):
    from trainer_core.training import head_loss
    head_loss.ENABLED = head  # the LM head fused with the loss in chunks (False: whole logits, then the loss)
    if chunk:
        head_loss.CHUNK = chunk
    if old_loss:
        losses.masked_cross_entropy = old_masked_ce
    if bf16_loss:
        losses.masked_cross_entropy = bf16_masked_ce
    import trainer_core.training.step as step_module
    step_module.global_norm = NORMS[norm]
    if fused:
        fuse_lora(model, _fused_fwd if fused == "fwd" else None)
    if ckpt:
        recompute_blocks(model)
    params = dict(tree_flatten(model.trainable_parameters()))
    opt = AdamW(params)
    if sgd:  # probe: what the AdamW update costs (one multiply-add per parameter instead)
        opt.step = lambda ps, gs, st, lr, grad_scale=1.0: ({k: (p - lr * grad_scale * gs[k].astype(mx.float32)).astype(p.dtype) for k, p in ps.items()}, st)
    steps = CompiledSteps(model, SFT(), opt, clip, 1,
                          compute_dtype=precision.compute_dtype(model, mp))
    batch = {"input_ids": IDS, "target_mask": MASK}

    ids_np, mask_np = np.array(IDS), np.array(MASK)
    count = [0]

    def call():
        count[0] += 1
        if reseed:  # as the loop: mx.random.seed(step_seed(seed, step, rank)) before every step
            mx.random.seed(count[0])
        b = {"input_ids": mx.array(ids_np), "target_mask": mx.array(mask_np)} if fresh else batch
        out = steps.train_step([b], 2e-4)
        return (out[0] / out[1]).item()
    return call


VARIANTS = {
    "mlx-lm": lambda m: mlx_lm_runner(m),
    "ours-before": lambda m: ours_runner(m, mp=False, old_loss=True),
    "ours-ce": lambda m: ours_runner(m, mp=False),
    "ours-ce-mp": lambda m: ours_runner(m),
    "ours-ce-mp-noclip": lambda m: ours_runner(m, clip=0.0),
    "ours-ce-mp-fused": lambda m: ours_runner(m, fused=True),
    "ours-ce-mp-fusedfwd": lambda m: ours_runner(m, fused="fwd"),
    "ours-ce-mp-sgd-noclip": lambda m: ours_runner(m, clip=0.0, sgd=True),
    "ours-ce-mp-reseed": lambda m: ours_runner(m, reseed=True),
    "ours-ce-mp-fresh": lambda m: ours_runner(m, fresh=True),
    "ours-ce-mp-loaded": lambda m: ours_runner(m),
    "dpo-mlx-way": lambda m: dpo_runner(m, mlx_way=True),
    "dpo-ours": lambda m: dpo_runner(m, mlx_way=False),
    "ours-full-noclip": lambda m: ours_runner(m, clip=0.0),
    "ours-full-sgd-noclip": lambda m: ours_runner(m, clip=0.0, sgd=True),
    "ours-full-bf16loss": lambda m: ours_runner(m, bf16_loss=True),
    "ours-full-catnorm": lambda m: ours_runner(m, norm="cat"),
    "ours-full-nonorm": lambda m: ours_runner(m, norm="none"),
    "ours-ce-mp-catnorm": lambda m: ours_runner(m, norm="cat"),
    "ours-ce-mp-nonorm": lambda m: ours_runner(m, norm="none"),
    "ours-ce-mp-pernorm": lambda m: ours_runner(m, norm="per"),
    "ours-ce-mp-chunknorm": lambda m: ours_runner(m, norm="chunk"),
    "mlx-lm-full": lambda m: mlx_lm_runner(m),
    "ours-full": lambda m: ours_runner(m),
    "ours-ce-mp-ckpt": lambda m: ours_runner(m, ckpt=True),
    "ours-ce-mp-fused-ckpt": lambda m: ours_runner(m, fused=True, ckpt=True),
    "ours-ce-mp-plainhead": lambda m: ours_runner(m, head=False),
    "ours-ce-mp-chunk2048": lambda m: ours_runner(m, chunk=2048),
    "ours-ce-mp-chunk512": lambda m: ours_runner(m, chunk=512),
}
names = a.variants or list(VARIANTS)
print(json.dumps({"device": str(mx.default_device()), "size": SIZE, "batch": [a.batch, a.seq]}), flush=True)
keep_ce = losses.masked_cross_entropy
for name in names:
    losses.masked_cross_entropy = keep_ce
    model = loaded_model() if name.endswith("-loaded") else make_model(lora="-full" not in name)
    mx.synchronize(); mx.clear_cache(); mx.reset_peak_memory()
    base = mx.get_active_memory()
    run = VARIANTS[name](model)
    first = [run() for _ in range(a.warmup)]
    times = []
    for _ in range(a.steps):
        t = time.perf_counter(); last = run(); times.append(time.perf_counter() - t)
    ms = statistics.median(times) * 1e3
    tok = a.batch * a.seq / (ms / 1e3)
    print(json.dumps({"variant": name, "ms": round(ms, 1), "tok_s": round(tok), "peak_gb": round(mx.get_peak_memory() / 1e9, 3),
                      "above_weights_gb": round((mx.get_peak_memory() - base) / 1e9, 3),
                      "loss0": round(first[0], 4), "loss_last": round(last, 4)}), flush=True)
    del model, run

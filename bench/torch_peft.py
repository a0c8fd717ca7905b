"""The PyTorch + PEFT baseline of `throughput.py` (sides `torch` and `torch-compile`).

What a user with an NVIDIA card would write: the same model folder loaded by plain transformers
(`LlamaForCausalLM`, bf16 weights as stored, `attn_implementation="sdpa"`), PEFT's LoRA with the
same rank / alpha / dropout 0 on the same seven linears of every block (PEFT's defaults otherwise:
float32 adapter weights), `torch.optim.AdamW` (weight decay 0, PyTorch's default foreach kernel),
global-norm clipping at our `max_grad_norm`, and the loss transformers computes for `labels=`
(logits cast to float32, cross-entropy over the scored positions, mean). With `compile=True` the
forward and loss (one function) are wrapped in `torch.compile` (default mode; AOTAutograd compiles their
backward too); clipping and the optimizer step stay eager.

Batches are built from our own token sequences with our batching rule: rows padded to
`padded_length` (1 + a multiple of 8), the model fed ids[:, :-1] and scored on ids[:, 1:] where
our target mask says so; rows are taken in file order (the gpu case's rows are all full, so the
order changes nothing there). Timing: a step is one loop iteration (batch to device, forward,
backward, clip, update, `loss.item()`), so each step ends with a host sync as ours does.
Peak memory: `torch.cuda.max_memory_allocated()` reset after the model is loaded (weights
included, as `mx.get_peak_memory()` on our side).

throughput.py runs each PyTorch side in its own process (`python bench/torch_peft.py SPEC OUT`:
SPEC a JSON file of run_torch's arguments, OUT where the result goes), so PyTorch's CUDA context
and caching allocator never share a process with MLX's.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer_core.data.batching import padded_length

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def versions() -> dict:
    out = {}
    for name in ("torch", "transformers", "peft"):
        try:
            mod = __import__(name)
            out[name] = mod.__version__
        except ImportError:
            out[name] = None
    try:
        import torch
        if torch.cuda.is_available():
            out["cuda"] = torch.version.cuda
            out["torch_gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return out


def make_batches(examples: list[tuple[list[int], list[bool]]], batch_size: int, count: int):
    """`count` batches (ids [B, W] int64, target mask [B, W] bool) in file order, cycling."""
    out, i = [], 0
    while len(out) < count:
        rows = [examples[(i + k) % len(examples)] for k in range(batch_size)]
        i += batch_size
        width = padded_length(max(len(ids) for ids, _ in rows))
        ids = np.zeros((batch_size, width), dtype=np.int64)
        mask = np.zeros((batch_size, width), dtype=bool)
        for r, (row, m) in enumerate(rows):
            ids[r, :len(row)] = row
            mask[r, :len(m)] = m
        out.append((ids, mask, sum(len(row) for row, _ in rows)))
    return out


def run_torch(model_path: str, examples, *, batch_size: int, warmup: int, steps: int, rank: int,
              alpha: float, learning_rate: float, max_grad_norm: float, compile: bool, seed: int = 0) -> dict:
    """Train warmup + steps LoRA steps; returns per-step (end time, cpu time, input tokens, trained
    tokens, padded tokens, width), the peak memory in bytes and the last loss."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto", attn_implementation="sdpa").to(device)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGETS, bias="none",
                        task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)

    def loss_of(inputs, targets):
        logits = model(input_ids=inputs).logits
        # what transformers' ForCausalLMLoss does for labels= (without its own shift: inputs are pre-shifted)
        return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                 targets.reshape(-1), ignore_index=-100)

    loss_fn = torch.compile(loss_of) if compile else loss_of  # the loss inside the graph: Inductor fuses it

    def step(ids, mask):
        inputs, targets = ids[:, :-1], ids[:, 1:].masked_fill(~mask[:, 1:], -100)
        loss = loss_fn(inputs, targets)
        loss.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    batches = make_batches(examples, batch_size, warmup + steps)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    records = [(time.perf_counter(), time.process_time(), 0, 0, 0, 0)]
    loss = None
    for ids, mask, n_input in batches:
        ids_t = torch.from_numpy(ids).to(device, non_blocking=True)
        mask_t = torch.from_numpy(mask).to(device, non_blocking=True)
        loss = step(ids_t, mask_t).item()  # the host sync a training loop does for its log line
        trained = int(mask[:, 1:].sum())
        records.append((time.perf_counter(), time.process_time(), n_input, trained, ids.shape[0] * (ids.shape[1] - 1),
                        ids.shape[1]))
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    profile_steps = int(os.environ.get("BENCH_KERNEL_PROFILE", "0") or 0)
    if profile_steps and cuda:  # the kernel table of prototypes/kernel_table.py, for the same steps in PyTorch
        sys.path.insert(0, str(Path(__file__).resolve().parent / "prototypes"))
        import kernel_table
        table = kernel_table.profile(lambda: step(ids_t, mask_t).item(), profile_steps,
                                     trace_name=f"torch-{'compile' if compile else 'eager'}-trace.json")
        print("kernels", json.dumps(table), flush=True)
    del loss_fn, model, opt, params
    if cuda:
        torch.cuda.empty_cache()
    return {"records": records, "peak_bytes": peak, "final_loss": loss}


def lora_flops_per_token(*, hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int, vocab: int,
                         seq: int, rank: int, adapted_per_layer: int = 7) -> float:
    """Model FLOPs of one trained token of LoRA on a Llama (frozen base, adapters on every linear).

    The base's matmuls run forward (2N) and backward for the input gradients only (2N): 4N, N = the
    blocks' linear weights + the LM head (embedding lookups are free). Attention (QK^T and AV over
    `seq` keys, counted without the causal half as PaLM's MFU does): 4 * seq * hidden per layer
    forward, 3x that with the backward. Adapters: 6 x their parameters (they get weight gradients).
    """
    head_dim = hidden // heads
    kv = kv_heads * head_dim
    per_layer = hidden * hidden * 2 + hidden * kv * 2 + 3 * hidden * intermediate
    n = layers * per_layer + hidden * vocab
    dims = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden),
            (hidden, intermediate), (hidden, intermediate), (intermediate, hidden)][:adapted_per_layer]
    adapters = layers * sum(rank * (i + o) for i, o in dims)
    attention = 3 * 4 * seq * hidden * layers
    return 4 * n + attention + 6 * adapters


def run_in_subprocess(spec: dict, workdir: Path) -> dict:
    import subprocess
    workdir.mkdir(parents=True, exist_ok=True)
    spec_file, out_file = workdir / "torch-spec.json", workdir / "torch-out.json"
    spec_file.write_text(json.dumps(spec))
    out_file.unlink(missing_ok=True)
    subprocess.run([sys.executable, str(Path(__file__).resolve()), str(spec_file), str(out_file)], check=True,
                   stdout=sys.stderr)
    return json.loads(out_file.read_text())


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    model_path, examples = spec.pop("model_path"), spec.pop("examples")
    result = run_torch(model_path, examples, **spec)
    result["versions"] = versions()
    Path(sys.argv[2]).write_text(json.dumps(result))

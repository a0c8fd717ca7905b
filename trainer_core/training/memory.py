"""How much memory a run needs, before it starts: one estimate for the GUI, `--dry-run` and the guard.

`estimate(shape, config, longest_tokens)` adds up, in bytes, what MLX holds at the run's peak
(what `mx.get_peak_memory()` reports, the `peak_memory_gb` of metrics.jsonl):

  weights          the base as loaded: quantized (QLoRA) bits/8 + a 16-bit scale and bias per group,
                   else its float dtype (a dequantized GGUF is float32)
  master weights   full fine-tuning of a 16-bit model with [precision] master_weights = fp32: float32
                   masters beside the 16-bit copy the forward computes with
  trainable        adapters (float32) or the full weights' gradient + AdamW m and v (float32) + the
                   update's new copy
  activations      per token and layer, what the backward pass keeps (gradient checkpointing: each
                   block's input plus one block's activations); includes attention scores [heads, T]
                   unless attention runs in chunks (CPU, rows longer than a chunk: then the chunks MLX
                   holds in flight, once) or on MLX's CUDA backend (fused, with its own backward)
  logits           the LM head fused with the loss (Llama/Mistral/Qwen/Phi-3 float heads): the chunks MLX
                   holds in flight; else [rows, tokens, vocab]: the logits, the float32 pass, the gradient
  reference        DPO's reference pass (eager, before the step), the full-FT frozen base of DPO/GRPO
  in flight        MLX's CUDA backend only: what the CUDA graphs queued ahead of the GPU keep alive
                   (models/cuda_graphs.py), at most the step's own activations + logits
  rollout          GRPO's sampling: the KV cache of batch x group rows of prompt + completion, the
                   prefill logits; the old/reference log-prob passes; the loss runs over rows x tokens

The peak is weights + trainable + the largest phase (rollout or step). The per-element constants were
fitted on the demo model (SmolLM2-135M, float32 on MLX's CPU) against `mx.get_peak_memory()`;
bench/memory_estimate.py prints estimate vs measured per method (README shows the table).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, replace

from trainer_core.data.batching import padded_length
from trainer_core.models import cuda_graphs
from trainer_core.errors import UserError

ADAPTER_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
# elements kept per token and layer for the backward pass, in units of (hidden, intermediate, kv width,
# heads x tokens); fitted (module doc)
ACTIVATION_HIDDEN, ACTIVATION_INTERMEDIATE, ACTIVATION_KV, ACTIVATION_SCORES = 4, 4, 4, 1.3
ADAPTER_ACTIVATION_HIDDEN = 6  # more per token and layer when LoRA/DoRA paths run beside the linears
OUTSIDE_BLOCKS_HIDDEN = 8  # per token, outside the blocks: embeddings, final norm, their gradients
DIFFUSION_ACTIVATIONS = 1.6  # bidirectional attention and the masked copy of every row: measured
LOGIT_COPIES = 2      # logits in the compute dtype + the loss's float32 gradient
# MLX runs up to 10 operations ahead of the computation, each holding its output: the fused LM head
# (head_loss.py) and chunked attention (models/attention.py) hold about this many chunks at once (measured on
# the demo: head backward 10.7 chunks of [128, 49152] float32, one layer's attention backward 8.2 of 32 MB)
HEAD_CHUNKS_IN_FLIGHT, ATTENTION_CHUNKS_IN_FLIGHT = 11, 8
GRPO_LOGIT_COPIES = 3  # without the fused head: float32 logits / T, the softmax (entropy) and the gradient
FUSED_HEAD_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "phi3")  # head_loss.split_head's families
# MLX's CUDA backend (measured on an H100, bench/RESULTS.md "GPU, seventh look"): its fused attention has its own
# backward and keeps no [heads, T] scores (on Metal, training runs the unfused attention: scores kept), and
# recomputing SwiGLU's product (models/recompute.py, LoRA on a 16-bit model) keeps ~2.8 FFN-wide tensors a token
# and layer fewer (on the CPU 0-1.4, within the fit's spread: not counted there)
CUDA_SWIGLU_SAVED = 2.8
SWIGLU_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")  # MLPs exactly down_proj(swiglu(gate, up))


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a model (from ModelInfo, and its config dict when loaded)."""

    parameters: int
    hidden: int
    layers: int
    vocab: int
    intermediate: int
    heads: int
    kv_width: int            # key/value heads x head dim
    weight_bytes: float      # bytes per stored base weight (quantized: bits/8 + scales)
    dtype_bytes: int         # bytes per element the model computes in (2: bf16/fp16, 4: float32)
    fused_head: bool = False  # the LM head runs fused with the loss in chunks (head_loss.split_head)
    swiglu: bool = False     # the MLP is SwiGLU as recompute_swiglu_products patches it

    @classmethod
    def from_info(cls, info, model_config: dict | None = None, *, dequantized: bool = False) -> "ModelShape":
        """From a ModelInfo (metadata only); `model_config` (HF-style, as loaded) gives the exact widths.
        `dequantized`: a quantized base will be dequantized for training (float32 for a GGUF)."""
        cfg = model_config or {}
        h, layers = info.hidden_size, max(1, info.num_layers)
        heads = int(cfg.get("num_attention_heads") or max(1, h // 64))
        head_dim = int(cfg.get("head_dim") or h // heads)
        kv_width = int(cfg.get("num_key_value_heads") or heads) * head_dim
        per_layer = max(0, info.num_parameters - info.vocab_size * h) / layers
        intermediate = int(cfg.get("intermediate_size") or max(h, (per_layer - 4 * h * h) / (3 * h)))
        dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "").lower()
        dtype_bytes = 2 if any(t in dtype for t in ("bfloat16", "float16", "bf16", "fp16")) else 4
        quantized = bits_of(info.quantization)
        if quantized and dequantized:
            weight_bytes, dtype_bytes = (4.0, 4) if info.is_gguf else (float(dtype_bytes), dtype_bytes)
        elif quantized:
            weight_bytes = quantized / 8 + 4 / 32  # a 16-bit scale and bias per group of 32
        else:
            weight_bytes = float(dtype_bytes)
        architecture = str(info.architecture).lower()
        fused = architecture in FUSED_HEAD_ARCHITECTURES and weight_bytes >= 2  # a float head
        return cls(info.num_parameters, h, layers, info.vocab_size, intermediate, heads, kv_width,
                   weight_bytes, dtype_bytes, fused, architecture in SWIGLU_ARCHITECTURES and weight_bytes >= 2)


def bits_of(quantization: str) -> int:
    """Bits per quantized weight from a quantization label ("Q4_1", "4-bit (group 32)"), 0 when not quantized."""
    found = re.search(r"Q(\d+)|(\d+)-BIT", str(quantization).upper())
    return int(found.group(1) or found.group(2)) if found else 0


@dataclass
class MemoryEstimate:
    """Bytes per part (an ordered breakdown) and the estimated peak."""

    parts: dict[str, float] = field(default_factory=dict)
    peak: float = 0.0
    notes: list[str] = field(default_factory=list)  # what the peak is made of, for the breakdown

    @property
    def total(self) -> float:
        return self.peak

    def lines(self) -> list[str]:
        """The breakdown as `--dry-run` prints it, ending with `estimated peak memory: X.XX GB`."""
        out = [f"  {name:<28} {gigabytes(value)}" for name, value in self.parts.items() if value]
        out += [f"  ({note})" for note in self.notes]
        return out + [f"estimated peak memory: {self.peak / 1e9:.2f} GB"]


def trainable_parameters(shape: ModelShape, config) -> int:
    """Trainable parameter count: every weight for full fine-tuning, else the LoRA/DoRA adapters."""
    if config.resolved_fine_tune_type == "full":
        return shape.parameters
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_width
    widths = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (h, kv), "self_attn.v_proj": (h, kv),
              "self_attn.o_proj": (h, h), "mlp.gate_proj": (h, i), "mlp.up_proj": (h, i), "mlp.down_proj": (i, h)}
    dora = config.resolved_fine_tune_type == "dora"
    per_layer = sum(config.lora.rank * (n_in + n_out) + (n_out if dora else 0)
                    for name, (n_in, n_out) in widths.items() if _adapted(name, config))
    return per_layer * adapted_layers(shape, config)


def _adapted(name: str, config) -> bool:
    """Whether the linear `name` of a block ("mlp.down_proj") gets an adapter (lora.targets; empty: every one)."""
    return any(name.endswith(t) or t.endswith(name.split(".")[-1]) for t in config.lora.targets or ADAPTER_TARGETS)


def adapted_layers(shape: ModelShape, config) -> int:
    """How many blocks get adapters (lora.num_layers: the last N; -1 or 0: all)."""
    return shape.layers if config.lora.num_layers in (-1, 0) else min(config.lora.num_layers, shape.layers)


def swiglu_recomputed_layers(shape: ModelShape, config) -> int:
    """Blocks whose SwiGLU product is recomputed (runner: unless blocks are checkpointed; models/recompute.py
    patches a SwiGLU MLP whose down projection is plain LoRA: not DoRA, no dropout, on a float base)."""
    plain_lora = config.resolved_fine_tune_type == "lora" and not config.lora.dropout
    if not (shape.swiglu and plain_lora and not config.gradient_checkpointing and _adapted("mlp.down_proj", config)):
        return 0
    return adapted_layers(shape, config)


def chunked_attention(rows: int, heads: int, tokens: int) -> int:
    """Query rows per chunk when attention runs in chunks (models/attention.py: on the CPU, rows longer than one
    chunk), else 0 (whole [rows, heads, tokens, tokens] scores)."""
    import mlx.core as mx
    from trainer_core.models.attention import chunk_rows
    step = chunk_rows(rows, heads, tokens)
    return step if tokens > step and mx.default_device() == mx.cpu else 0


def _activations(shape: ModelShape, config, rows: int, tokens: int) -> float:
    """Bytes the forward pass keeps for the backward one (rows x tokens), gradient checkpointing included.
    Chunked attention keeps no [heads, tokens] scores per token; its chunks in flight are counted once. On MLX's
    CUDA backend: no scores, and SwiGLU's recomputed product (CUDA_SWIGLU_SAVED)."""
    adapters = config.resolved_fine_tune_type != "full"
    chunk = chunked_attention(rows, shape.heads, tokens)
    cuda = cuda_graphs.cuda_backend()
    per_token_layer = (ACTIVATION_HIDDEN + (ADAPTER_ACTIVATION_HIDDEN if adapters else 0)) * shape.hidden \
        + ACTIVATION_INTERMEDIATE * shape.intermediate + ACTIVATION_KV * shape.kv_width \
        + (0 if chunk or cuda else ACTIVATION_SCORES * shape.heads * tokens)
    one_block = rows * tokens * per_token_layer * shape.dtype_bytes
    outside = rows * tokens * OUTSIDE_BLOCKS_HIDDEN * shape.hidden * shape.dtype_bytes
    attention = ATTENTION_CHUNKS_IN_FLIGHT * rows * shape.heads * chunk * tokens * 4.0 if chunk else 0.0
    if config.gradient_checkpointing:
        # each block's input, plus the block being recomputed and its backward's temporaries (~2 blocks)
        return rows * tokens * shape.hidden * shape.dtype_bytes * shape.layers + 2 * one_block + outside + attention
    recomputed = swiglu_recomputed_layers(shape, config) if cuda and shape.dtype_bytes == 2 else 0
    saved = rows * tokens * CUDA_SWIGLU_SAVED * shape.intermediate * shape.dtype_bytes * recomputed
    return one_block * shape.layers - saved + outside + attention


def _logits(shape: ModelShape, rows: int, tokens: int, copies: float = LOGIT_COPIES, fused: bool = True) -> float:
    """The LM head's output: fused with the loss (head_loss.py), the chunks MLX holds in flight (float32); else
    the [rows, tokens, vocab] logits in the compute dtype plus `copies - 1` float32 passes over them."""
    whole = rows * tokens * shape.vocab * (shape.dtype_bytes + 4.0 * (copies - 1))
    if not (fused and shape.fused_head):
        return whole
    from trainer_core.training.head_loss import chunk_rows
    return min(whole, HEAD_CHUNKS_IN_FLIGHT * chunk_rows(shape.vocab) * shape.vocab * 4.0)


def row_tokens(config, longest_tokens: int | None) -> int:
    """Tokens per row of the longest batch: the longest example (at most max_seq_length), padded as batches are."""
    return padded_length(min(longest_tokens or config.max_seq_length, config.max_seq_length))


def estimate(shape: ModelShape, config, longest_tokens: int | None = None) -> MemoryEstimate:
    """Estimated peak bytes of `config` on `shape`; `longest_tokens`: the longest example (prompt for GRPO)
    after tokenisation, when known (else max_seq_length)."""
    kind = config.resolved_fine_tune_type
    full = kind == "full"
    trainable = trainable_parameters(shape, config)
    est = MemoryEstimate()
    weights = shape.parameters * shape.weight_bytes
    masters = 0.0
    if full and shape.dtype_bytes == 2 and config.precision.master_weights == "fp32":
        masters = shape.parameters * 4.0
    # full FT: the weights' gradient + AdamW m, v (float32); adapters: also the float32 adapters themselves
    optimizer = trainable * (4.0 * 3 + (0.0 if full else 4.0))
    est.parts["weights"] = weights
    est.parts["master weights (fp32)"] = masters
    est.parts["trainable + optimizer"] = optimizer
    method = config.method
    batch = config.batch_size
    if method == "grpo":
        _grpo(est, shape, config, longest_tokens)
    else:
        rows = 2 * batch if method == "dpo" else batch
        tokens = row_tokens(config, longest_tokens)
        est.parts["activations"] = _activations(shape, config, rows, tokens) * \
            (DIFFUSION_ACTIVATIONS if method == "diffusion" else 1.0)
        est.parts["logits"] = _logits(shape, rows, tokens, fused=method != "diffusion")  # diffusion: whole logits
        if method == "dpo":
            reference = 0.0 if config.dpo.precompute_reference else _logits(shape, rows, tokens, 2)
            frozen = shape.parameters * shape.dtype_bytes if full and not config.dpo.precompute_reference else 0.0
            est.parts["reference pass"] = reference
            est.parts["reference weights"] = frozen
        est.notes.append(f"batch {batch}{' pairs (x2 rows)' if method == 'dpo' else ''} x {tokens} tokens, "
                         f"gradient checkpointing {'on' if config.gradient_checkpointing else 'off'}")
    step = est.parts.get("activations", 0.0) + est.parts.get("logits", 0.0)
    est.parts["in flight (CUDA graphs)"] = min(cuda_graphs.run_ahead_bytes(), step)
    step += est.parts["in flight (CUDA graphs)"]
    est.peak = sum(est.parts.values()) - est.parts.get("rollout (sampling)", 0.0)
    rollout = est.parts.get("rollout (sampling)", 0.0)
    est.peak += max(0.0, rollout - step)  # sampling and the step come one after the other
    return est


def _grpo(est: MemoryEstimate, shape: ModelShape, config, longest_prompt: int | None) -> None:
    """GRPO: batch x group rows of prompt + completion; the rollout (KV cache, prefill logits) comes
    before the step's passes, so the peak is the larger of the two."""
    grpo = config.grpo
    rows = config.batch_size * grpo.group_size
    prompt = min(longest_prompt or (config.max_seq_length - grpo.max_completion_length),
                 config.max_seq_length - grpo.max_completion_length)
    tokens = padded_length(prompt + grpo.max_completion_length)
    sampled = grpo.generation_batch_size or rows
    kv_cache = sampled * tokens * shape.layers * 2 * shape.kv_width * shape.dtype_bytes
    prefill = sampled * prompt * shape.vocab * 4.0 + _activations_inference(shape, sampled, prompt)
    est.parts["rollout (sampling)"] = kv_cache + prefill
    # the update runs over rows in passes of at most grpo.micro_batch_tokens (GRPOMethod.step_batches)
    per_pass = min(rows, max(1, grpo.micro_batch_tokens // tokens)) if grpo.micro_batch_tokens else rows
    est.parts["activations"] = _activations(shape, config, per_pass, tokens)
    est.parts["logits"] = _logits(shape, per_pass, tokens, GRPO_LOGIT_COPIES)
    if grpo.beta and config.resolved_fine_tune_type == "full":
        est.parts["reference weights"] = shape.parameters * shape.dtype_bytes
    est.notes.append(f"{config.batch_size} prompts x group {grpo.group_size} = {rows} rows x {tokens} tokens "
                     f"({prompt} prompt + {grpo.max_completion_length} completion), {per_pass} rows per update pass")


def _activations_inference(shape: ModelShape, rows: int, tokens: int) -> float:
    """A forward pass without gradients: one block's temporaries at a time."""
    return rows * tokens * (4 * shape.hidden + 2 * shape.intermediate + shape.heads * tokens) * shape.dtype_bytes


# Gradient checkpointing costs about a third more time a step; it is recommended only where it pays in memory:
# when it at least halves the estimated peak and saves at least this much (long rows, big batches).
CHECKPOINTING_SAVES = 2e9


def checkpointing_pays(shape: ModelShape, config, longest_tokens: int | None = None) -> tuple[bool, float, float]:
    """Whether gradient checkpointing is recommended for `config` (whatever its own setting), with the estimated
    peaks without and with it (bytes). Machine-independent, so the window, the CLI and every rank agree."""
    without = estimate(shape, replace(config, gradient_checkpointing=False), longest_tokens).peak
    with_it = estimate(shape, replace(config, gradient_checkpointing=True), longest_tokens).peak
    return (with_it <= without / 2 and without - with_it >= CHECKPOINTING_SAVES), without, with_it


@dataclass(frozen=True)
class Fix:
    """One change that lowers the estimate: a label and the `--set` assignments that make it."""

    label: str
    assignments: tuple[str, ...]
    peak: float  # the estimated peak after the change, bytes


def fixes(shape: ModelShape, config, longest_tokens: int | None = None) -> list[Fix]:
    """Changes that lower the peak, each on its own, best first: half the batch with twice the accumulation
    (same examples per step), gradient checkpointing, half the max length, QLoRA / LoRA instead of full
    weights, a smaller GRPO group or sampling in smaller batches."""
    c = config
    candidates = []
    if c.batch_size > 1:
        candidates.append((f"batch size {c.batch_size // 2} x accumulation {c.gradient_accumulation_steps * 2}",
                           (f"batch_size={c.batch_size // 2}",
                            f"gradient_accumulation_steps={c.gradient_accumulation_steps * 2}")))
    if not c.gradient_checkpointing:
        candidates.append(("gradient checkpointing", ("gradient_checkpointing=true",)))
    if c.method == "grpo":
        if c.grpo.group_size > 2:
            candidates.append((f"group size {c.grpo.group_size // 2}", (f"grpo.group_size={c.grpo.group_size // 2}",)))
        if c.grpo.max_completion_length >= 32:
            candidates.append((f"completions up to {c.grpo.max_completion_length // 2} tokens",
                               (f"grpo.max_completion_length={c.grpo.max_completion_length // 2}",)))
    elif c.max_seq_length >= 16 and (longest_tokens is None or longest_tokens > c.max_seq_length // 2):
        candidates.append((f"max length {c.max_seq_length // 2} tokens", (f"max_seq_length={c.max_seq_length // 2}",)))
    if c.resolved_fine_tune_type == "full" and c.method in ("sft", "diffusion"):
        candidates.append(("LoRA adapters instead of full weights", ("fine_tune_type=lora",)))
    out = []
    for label, assignments in candidates:
        try:
            changed = config.with_overrides(list(assignments)).validate()
        except Exception:  # noqa: BLE001  (a change this config can't take is not offered)
            continue
        out.append(Fix(label, assignments, estimate(shape, changed, longest_tokens).peak))
    return sorted(out, key=lambda f: f.peak)


def check_fits(shape: ModelShape, config, longest_tokens: int | None, limit: int) -> None:
    """Raise a UserError naming the estimate, the limit and the fixes when the estimated peak is above `limit`
    (bytes; 0 = unknown, no check)."""
    peak = estimate(shape, config, longest_tokens).peak
    if not limit or peak <= limit:
        return
    options = "; ".join(f"{f.label} (--set {' --set '.join(f.assignments)}): {f.peak / 1e9:.2f} GB"
                        for f in fixes(shape, config, longest_tokens))
    raise UserError(f"Estimated peak memory {peak / 1e9:.2f} GB is more than the {limit / 1e9:.2f} GB available "
                    f"to training, so the run would be killed or swap heavily. Try: {options or 'a smaller model'}"
                    f"{'; or a quantized (4-bit) model for QLoRA' if shape.weight_bytes >= 2 else ''}. "
                    "Pass --force to start anyway.", field="batch_size", reason="out_of_memory")


def available_memory() -> int:
    """Bytes training may use (0 if unknown): on macOS MLX's recommended working set (what Metal lets one
    process keep resident), elsewhere the memory available without swapping (psutil)."""
    if sys.platform == "darwin":
        import mlx.core as mx
        info = mx.device_info() if hasattr(mx, "device_info") else {}
        if info.get("max_recommended_working_set_size"):
            return int(info["max_recommended_working_set_size"])
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except (ImportError, OSError):
        return 0


def gigabytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"

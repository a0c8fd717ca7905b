"""Cross-entropy fused with the LM head, in chunks of rows: the [tokens, vocab] logits never exist whole.

`model(ids)` ends in one matmul, hidden [B, L, D] @ W[V, D]^T, whose [B, L, V] output the loss
keeps for the backward pass (bf16 at 4 x 1024 x 32k: 262 MB, plus the float32 softmax of the
backward). Here the loss takes the hidden states and the head's weight instead and works on
`chunk_rows(vocab)` rows at a time: the forward keeps only the per-token loss; the backward recomputes each
chunk's logits, forms softmax - onehot in float32 (rounded once to the weights' dtype, as
`losses.token_nll`) and returns hidden @ ... and, when the head is trained, its weight gradient.
The result equals `losses.token_nll(model(ids), targets)` (same bf16 logits, same float32 reduction).
`scaled_head_nll` also scales the float32 logits (GRPO's log softmax(logits / temperature)) and
`head_entropy` gives the policy's entropy the same way, so GRPO and DPO never hold the whole logits either.

Inside the training step's loss (`gradient_in_forward()`, step.py) a frozen head (LoRA/DoRA/QLoRA) takes a
one-pass path instead: each chunk's forward already forms softmax - onehot from the one `exp` its loss needs and
multiplies it by the head's weight, so d(nll)/d(hidden) leaves the forward and the backward only scales it by each
token's cotangent (d(loss)/d(nll) is per token, so it factors out of the row's gradient). That saves the
backward's second logits matmul and second pass of `exp` over [tokens, vocab]: measured on the 2-core CPU, where
MLX's exp is scalar, a demo LoRA step went from 2.61 to 2.04 s (bench/RESULTS.md). On a GPU it did not pay (the
forward then holds each chunk's softmax until its gradient is formed: slower under a memory cap, measured on an
H200), so there the two-pass path stays. Evaluation (no gradient) keeps the plain forward.

Used only where a model's call is exactly `inner(ids)` then a plain head (`split_head`): the
Llama / Qwen2 / Qwen3 / Phi-3 families with an unquantized, unadapted, bias-free head. Anything
else (soft-capped logits, quantized or adapted heads) takes the plain path.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

import mlx.core as mx
import mlx.nn as nn

from trainer_core.training.vocab_sums import vocab_entropy, vocab_logsumexp, vocab_sum

CHUNK = 1024  # at most this many rows of logits per chunk
# and at most about this many logits: MLX keeps up to 10 operations in flight (its MAX_ACTIVE_TASKS), each
# holding its chunk-sized output, so the chunk's size sets the head's peak. Measured on the CPU (8192 tokens,
# 49k vocab, float32): 1024 rows 2.16 GB, 256 rows 0.54 GB, 128 rows 0.27 GB, all equally fast
CHUNK_ELEMENTS = 1 << 23  # 128 rows of a 49k vocab, 256 of a 32k one
# On a GPU the chunks run one after another (mx.depends), and small ones leave it idle between kernels. Measured on
# an H100 (bench/throughput.py --case gpu: 702M Llama, 4 x 1024, 32k vocab), ms a step: 2**23 elements 75-78,
# 2**24 78.5, 2**25 (1024 rows) 59.5-64.6, the whole logits at once 61.9, no fused head 67-69.
GPU_CHUNK_ELEMENTS = 1 << 25
MIN_ROWS = 16
ENABLED = True  # bench/prototypes/gpu_levers.py switches it off to measure the plain path
ONE_PASS = True  # bench/throughput.py --ours-two-pass-head switches the one-pass training path off
_GRADIENT_IN_FORWARD: ContextVar[bool] = ContextVar("gradient_in_forward", default=False)
_PLAIN_HEAD_MODULES = {"mlx_lm.models.llama", "mlx_lm.models.qwen2", "mlx_lm.models.qwen3", "mlx_lm.models.phi3"}


def split_head(model):
    """(inner model returning hidden states, head weight [V, D]) or None when the fused path does not apply."""
    if not ENABLED or type(model).__module__ not in _PLAIN_HEAD_MODULES:
        return None
    inner, args = getattr(model, "model", None), getattr(model, "args", None)
    if inner is None or args is None:
        return None
    if getattr(args, "tie_word_embeddings", False):
        head = getattr(inner, "embed_tokens", None)
        ok = type(head) is nn.Embedding
    else:
        head = getattr(model, "lm_head", None)
        ok = type(head) is nn.Linear and "bias" not in head
    return (inner, head.weight) if ok else None


def chunk_rows(vocab: int, device=None) -> int:
    """Rows per chunk: a power of two whose [rows, vocab] logits hold at most CHUNK_ELEMENTS (GPU_CHUNK_ELEMENTS
    on a GPU; `device`: default MLX's default device), within MIN_ROWS..CHUNK."""
    on_gpu = (device or mx.default_device()) == mx.gpu
    elements = GPU_CHUNK_ELEMENTS if on_gpu else CHUNK_ELEMENTS
    rows = MIN_ROWS
    while 2 * rows * vocab <= elements:
        rows *= 2
    return max(1, min(CHUNK, rows))


def _chunks(n: int, vocab: int):
    step = chunk_rows(vocab)
    return [(s, min(n, s + step)) for s in range(0, n, step)]


def _logits(h: mx.array, weight: mx.array) -> mx.array:
    return h @ weight.T


def _picked(z: mx.array, t: mx.array) -> mx.array:
    return mx.take_along_axis(z, t[:, None], axis=-1)[:, 0].astype(mx.float32)


def _nll(hidden: mx.array, weight: mx.array, targets: mx.array, scale: mx.array) -> mx.array:
    h, t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    out = []
    for s, e in _chunks(h.shape[0], weight.shape[0]):
        # chunk i + 1 waits for chunk i's result (mx.depends): without it MLX's scheduler computes every chunk's
        # logits before any log-sum-exp, all alive at once (measured: 1.6 GB for 8192 tokens of a 49k vocab)
        rows = h[s:e] if not out else mx.depends(h[s:e], out[-1])
        z = _logits(rows, weight).astype(mx.float32) * scale
        out.append(vocab_logsumexp(z) - _picked(z, t[s:e]))
    return mx.concatenate(out).reshape(targets.shape)


def _nll_vjp(primals, cotangent, output, weight_grad: bool):
    hidden, weight, targets, scale = primals
    h, t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    cot, nll = cotangent.reshape(-1) * scale, output.reshape(-1)
    d_hidden, d_weight = [], None
    for s, e in _chunks(h.shape[0], weight.shape[0]):
        # one chunk at a time, as in the forward (4.8 GB -> one chunk's temporaries for 8192 tokens of a 49k
        # vocab); the head's gradient joins the chain only when it is wanted: a frozen head's is never evaluated
        after = [d_hidden[-1]] + ([d_weight] if weight_grad else []) if d_hidden else []
        rows = mx.depends(h[s:e], after) if after else h[s:e]
        z = _logits(rows, weight).astype(mx.float32) * scale
        lse = nll[s:e] + _picked(z, t[s:e])
        onehot = mx.arange(z.shape[-1]) == t[s:e, None]
        g = ((mx.exp(z - lse[:, None]) - onehot) * cot[s:e, None]).astype(weight.dtype)
        d_hidden.append(g @ weight)
        dw = g.T @ rows
        d_weight = dw if d_weight is None else d_weight + dw
    return (mx.concatenate(d_hidden).reshape(hidden.shape).astype(hidden.dtype), d_weight.astype(weight.dtype),
            mx.zeros_like(targets), mx.zeros_like(scale))


def _nll_and_grad(hidden: mx.array, weight: mx.array, targets: mx.array, scale: mx.array):
    """(the per-token nll, d(nll)/d(hidden) per token in hidden's dtype) from one logits matmul and one exp."""
    h, t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    nll, grad = [], []
    for s, e in _chunks(h.shape[0], weight.shape[0]):
        rows = h[s:e] if not nll else mx.depends(h[s:e], [nll[-1], grad[-1]])  # one chunk alive at a time
        z = _logits(rows, weight).astype(mx.float32) * scale
        top = z.max(axis=-1, keepdims=True)
        exp = mx.exp(z - top)
        total = vocab_sum(exp, keepdims=True)
        nll.append(mx.log(total[:, 0]) + top[:, 0] - _picked(z, t[s:e]))
        onehot = mx.arange(z.shape[-1]) == t[s:e, None]
        g = ((exp / total - onehot) * scale).astype(weight.dtype)  # rounded once, as the two-pass backward
        grad.append(g @ weight)
    return mx.concatenate(nll).reshape(targets.shape), mx.concatenate(grad).reshape(hidden.shape).astype(hidden.dtype)


def _one_pass_vjp(primals, cotangents, outputs):
    hidden, weight, targets, scale = primals
    cot = cotangents[0]  # of the nll; the gradient output's is unused
    d_hidden = (outputs[1] * cot[..., None]).astype(hidden.dtype)
    # the head's gradient (never asked for when it is frozen; exact if it is): the two-pass backward's, lazily
    d_weight = _nll_vjp(primals, cot, outputs[0], True)[1]
    return d_hidden, d_weight, mx.zeros_like(targets), mx.zeros_like(scale)


_ONE_PASS = mx.custom_function(_nll_and_grad)
_ONE_PASS.vjp(_one_pass_vjp)


@contextmanager
def gradient_in_forward(on: bool = True):
    """While on (the training step's loss, step.py), a frozen head's nll takes the one-pass path (module doc)."""
    token = _GRADIENT_IN_FORWARD.set(on)
    try:
        yield
    finally:
        _GRADIENT_IN_FORWARD.reset(token)


def _custom(weight_grad: bool):
    fn = mx.custom_function(_nll)
    fn.vjp(lambda primals, cotangent, output: _nll_vjp(primals, cotangent, output, weight_grad))
    return fn


_NLL = {True: _custom(True), False: _custom(False)}


def scaled_head_nll(hidden: mx.array, weight: mx.array, targets: mx.array, scale: mx.array,
                    weight_grad: bool = True) -> mx.array:
    """-log softmax(scale * float32(hidden @ weight^T))[target] per position: hidden [..., D], weight [V, D],
    targets [...] int, scale a float32 scalar (GRPO's 1 / temperature; 1 for cross-entropy) -> [...] float32.
    `weight_grad=False` (a frozen head) only saves memory and time: the head's gradient is still right if asked
    for. Inside `gradient_in_forward()` a frozen head's d(nll)/d(hidden) is formed in the forward pass."""
    if not weight_grad and ONE_PASS and _GRADIENT_IN_FORWARD.get() and mx.default_device() == mx.cpu:
        return _ONE_PASS(hidden, weight, targets, scale)[0]
    return _NLL[bool(weight_grad)](hidden, weight, targets, scale)


def head_nll(hidden: mx.array, weight: mx.array, targets: mx.array, weight_grad: bool = True) -> mx.array:
    """-log softmax(hidden @ weight^T)[target] per position (the cross-entropy: scale 1)."""
    return scaled_head_nll(hidden, weight, targets, mx.array(1.0, dtype=mx.float32), weight_grad)


def head_entropy(hidden: mx.array, weight: mx.array, scale: float = 1.0) -> mx.array:
    """Entropy of softmax(scale * float32(hidden @ weight^T)) per position, in chunks, without gradient."""
    h = mx.stop_gradient(hidden).reshape(-1, hidden.shape[-1])
    out = []
    for s, e in _chunks(h.shape[0], weight.shape[0]):
        rows = h[s:e] if not out else mx.depends(h[s:e], out[-1])
        z = _logits(rows, weight).astype(mx.float32) * scale
        out.append(vocab_entropy(z))
    return mx.stop_gradient(mx.concatenate(out).reshape(hidden.shape[:-1]))


def head_trained(model) -> bool:
    """Whether the head weight `split_head` returns is trained (full fine-tuning), not frozen (LoRA)."""
    args = getattr(model, "args", None)
    head = model.model.embed_tokens if getattr(args, "tie_word_embeddings", False) else getattr(model, "lm_head", None)
    return head is not None and "weight" in head.trainable_parameters()


def causal_token_nll(model, inputs: mx.array, targets: mx.array):
    """Per-token losses [B, L] float32 of `model` on `inputs` [B, L] against `targets`, through the fused
    head where the model allows it, else None (the caller computes the logits itself)."""
    split = split_head(model)
    if split is None:
        return None
    inner, weight = split
    return head_nll(inner(inputs), weight, targets, head_trained(model))

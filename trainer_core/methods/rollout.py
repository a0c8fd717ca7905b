"""Batched sampling for GRPO: many completions at once through one KV cache.

`sample_completions(model, prompts, settings, eos_ids)` samples one completion
per prompt row (GRPO passes each prompt G times): the rows are left-padded
into one batch, the prompts are prefilled in one forward pass, and then every
decoding step is one forward pass of shape [rows, 1] over mlx-lm's batched KV
cache (`BatchKVCache`, made with the model's own cache types), never one
sequence at a time. `generation_batch_size` rows go through together (0 = all).

Policy and sampling. The policy at temperature T is softmax(logits / T).
Each token is drawn from it after top-k, then top-p (nucleus) truncation; the
log-probability recorded for it is log softmax(logits / T)[token], the same
quantity `token_logprobs` computes in the training forward (as TRL does,
truncation is a sampling device, not part of the policy's density). The ids
are kept as sampled: no decode and re-encode. A row stops after it samples an
end-of-sequence id (kept as the completion's last token) or after
`max_tokens` tokens. Randomness comes from MLX's global generator, which the
training loop seeds from (seed, step) before collating, so a rollout is
reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.sample_utils import apply_top_k, apply_top_p

from trainer_core.errors import UserError
from trainer_core.training import head_loss
from trainer_core.training.vocab_sums import vocab_entropy, vocab_logsumexp


@dataclass
class SamplingSettings:
    max_tokens: int = 256  # completion tokens per row, at most
    temperature: float = 1.0
    top_p: float = 1.0  # 1 = off
    top_k: int = 0  # 0 = off


@dataclass
class Rollout:
    """One completion per prompt row: the sampled ids and their log-probs under the sampling policy."""

    completions: list[list[int]]
    logprobs: list[np.ndarray]  # float32, one per sampled id
    stopped: list[bool]  # True when the row ended with an end-of-sequence id (False: hit max_tokens)


def token_logprobs(logits: mx.array, targets: mx.array, temperature: float) -> mx.array:
    """log softmax(logits / T) at `targets`: logits [..., V], targets [...] -> [...] float32."""
    scaled = logits.astype(mx.float32) / temperature
    picked = mx.take_along_axis(scaled, targets[..., None], axis=-1)[..., 0]
    return picked - vocab_logsumexp(scaled)


def policy_logprobs(model, ids: mx.array, temperature: float, entropy: bool = False):
    """(log softmax(logits / T)[next token] [N, L-1] float32 for ids [N, L], the policy's entropy there without
    gradient, or None unless `entropy`). Through the LM head fused with the log-softmax in chunks
    (training/head_loss.py) where the model allows it, so the [N, L, vocab] float32 logits never exist whole
    (they were GRPO's largest cost); else from the model's logits, as `token_logprobs`."""
    split = head_loss.split_head(model)
    if split is not None:
        inner, weight = split
        hidden = inner(ids[:, :-1])
        scale = mx.array(1.0 / temperature, dtype=mx.float32)
        logp = -head_loss.scaled_head_nll(hidden, weight, ids[:, 1:], scale, head_loss.head_trained(model))
        return logp, head_loss.head_entropy(hidden, weight, 1.0 / temperature) if entropy else None
    logits = model(ids[:, :-1]).astype(mx.float32) / temperature
    logp = token_logprobs(logits, ids[:, 1:], 1.0)
    if not entropy:
        return logp, None
    detached = mx.stop_gradient(logits)
    return logp, vocab_entropy(detached)


def _draw(logits: mx.array, settings: SamplingSettings) -> tuple[mx.array, mx.array]:
    """Sample one id per row from [rows, V] logits -> (ids [rows] uint32, their log-probs [rows])."""
    logprobs = logits.astype(mx.float32) / settings.temperature
    logprobs = logprobs - vocab_logsumexp(logprobs, keepdims=True)
    truncated = logprobs
    if 0 < settings.top_k < logprobs.shape[-1]:
        truncated = apply_top_k(truncated, settings.top_k)
    if settings.top_p < 1.0:
        truncated = apply_top_p(truncated, settings.top_p)
    ids = mx.random.categorical(truncated)
    return ids, mx.take_along_axis(logprobs, ids[:, None], axis=-1)[:, 0]


# mlx-lm's gemma2 computes attention itself on grouped scores [B, kv_heads, repeats, L, S] and
# adds the mask as given (its quantized SDPA in models/base.py inserts the group axis; gemma2 does
# not), so a batched cache's [B, 1, L, S] padding mask cannot broadcast there. The architectures
# named here get the mask with that axis, [B, 1, 1, L, S], when their heads are grouped.
GROUPED_SCORE_MASK = {"gemma2"}


class _GroupedMaskCache:
    """A batched cache whose padding mask carries the grouped-heads axis (see GROUPED_SCORE_MASK)."""

    def __init__(self, cache):
        self.__dict__["cache"] = cache

    def __getattr__(self, name):
        return getattr(self.cache, name)

    def make_mask(self, *args, **kwargs):
        mask = self.cache.make_mask(*args, **kwargs)
        return mask[:, :, None] if isinstance(mask, mx.array) and mask.ndim == 4 else mask


def _grouped_scores(model) -> bool:
    if getattr(model, "model_type", None) not in GROUPED_SCORE_MASK:
        return False
    return getattr(model.layers[0].self_attn, "repeats", 1) > 1


def batch_cache(model, left_padding: list[int]) -> list:
    """Per-layer batched KV caches for rows left-padded by `left_padding` tokens."""
    caches = []
    grouped = _grouped_scores(model)
    for layer in make_prompt_cache(model):
        if not hasattr(layer, "merge"):
            raise UserError(f"This model's cache ({type(layer).__name__}) can't be batched, so GRPO can't "
                            "sample with it; use a transformer model supported by mlx-lm's batch generation.",
                            field="model")
        merged = layer.merge([layer] * len(left_padding))
        merged.prepare(left_padding=left_padding)
        caches.append(_GroupedMaskCache(merged) if grouped else merged)
    return caches


def _sample_rows(model, prompts: list[list[int]], settings: SamplingSettings, eos_ids: set[int],
                 pad_id: int, on_token) -> Rollout:
    longest = max(len(p) for p in prompts)
    padding = [longest - len(p) for p in prompts]
    tokens = mx.array([[pad_id] * pad + list(p) for pad, p in zip(padding, prompts)], dtype=mx.int32)
    cache = batch_cache(model, padding)
    ids, logps = _draw(model(tokens, cache=cache)[:, -1, :], settings)
    eos = np.array(sorted(eos_ids), dtype=np.int64)
    ended = np.zeros(len(prompts), dtype=bool)
    sampled, sampled_logps = [], []
    for t in range(settings.max_tokens):
        if t + 1 < settings.max_tokens:  # queue the next step before reading this one (overlaps host and device)
            next_ids, next_logps = _draw(model(ids[:, None].astype(mx.int32), cache=cache)[:, -1, :], settings)
            mx.async_eval(next_ids, next_logps)
        sampled.append(np.array(ids, dtype=np.int64))
        sampled_logps.append(np.array(logps, dtype=np.float32))
        ended |= np.isin(sampled[-1], eos)
        if ended.all():
            break
        on_token(len(prompts) * (t + 1))
        if t + 1 < settings.max_tokens:
            ids, logps = next_ids, next_logps
    ids_matrix, logp_matrix = np.stack(sampled, axis=1), np.stack(sampled_logps, axis=1)
    completions, logprobs, stopped = [], [], []
    for row, lp in zip(ids_matrix, logp_matrix):
        hits = np.flatnonzero(np.isin(row, eos))
        length = int(hits[0]) + 1 if hits.size else len(row)
        completions.append(row[:length].tolist())
        logprobs.append(lp[:length].copy())
        stopped.append(bool(hits.size))
    return Rollout(completions, logprobs, stopped)


def sample_completions(model, prompts: list[list[int]], settings: SamplingSettings, eos_ids,
                       *, pad_id: int = 0, generation_batch_size: int = 0, progress=None) -> Rollout:
    """One completion per prompt row, `generation_batch_size` rows per batched pass (0 = all).
    `progress(done, total)`, if given, is called after every sampled token with the row-tokens sampled so
    far and at most to come (rows x max_tokens); it may raise to abandon the rollout (guard.py)."""
    size = generation_batch_size or len(prompts)
    total = len(prompts) * settings.max_tokens
    parts = []
    for i in range(0, len(prompts), size):
        done = i * settings.max_tokens  # rows before this pass count as finished
        parts.append(_sample_rows(model, prompts[i:i + size], settings, set(eos_ids), pad_id,
                                  (lambda n, done=done: progress(done + n, total)) if progress else lambda n: None))
        if progress:
            progress((i + len(parts[-1].completions)) * settings.max_tokens, total)
    return Rollout([c for p in parts for c in p.completions], [x for p in parts for x in p.logprobs],
                   [s for p in parts for s in p.stopped])

"""Sampling from a masked-diffusion model (LLaDA's low-confidence remasking).

The response starts as `max_tokens` [MASK] tokens after the prompt. It is cut
into blocks of `block_length` decoded left to right (semi-autoregressive; one
block when block_length >= max_tokens); each block gets its share of `steps`.
A step runs the model with bidirectional attention over prompt + response,
predicts every position (greedy, or Gumbel-max sampling at `temperature`),
and keeps the predictions at the most confident still-masked positions of the
current block: the block's masks are spread evenly over its steps, so after
its last step it holds no mask. Generation ends after the block in which an
EOS-family token appears (the model was trained to fill the rest with EOS),
and the answer is the text before the first EOS.

    model = load(model_spec, checkpoint)             # a base model with a [MASK] token, or a diffusion run's checkpoint
    for piece in stream(model, "Hello?", DiffusionSettings(max_tokens=64)):   # text, one finished block at a time
        ...
    for step in denoise(model.model, prompt_ids, model.mask_token_id, settings):  # every intermediate state
        ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import mlx.core as mx
import numpy as np

from trainer_core.errors import UserError
from trainer_core.data.tokenize import build_prompt
from trainer_core.generation.generate import load_for_inference, read_adapter_config
from trainer_core.methods.diffusion import bidirectional_logits, check_token_id, resolve_mask_token
from trainer_core.models.loading import LoadedModel


@dataclass
class DiffusionSettings:
    max_tokens: int = 128  # response length L: the number of [MASK] tokens after the prompt
    steps: int = 0  # denoising steps in all (model calls); 0 = max_tokens (one token per step)
    block_length: int = 32  # semi-autoregressive block size; 0 = one block of max_tokens
    temperature: float = 0.0  # Gumbel-max sampling temperature; 0 = greedy


@dataclass
class DenoiseStep:
    """State after one step: `response` holds max_tokens ids ([MASK] where still undecided)."""
    step: int
    response: np.ndarray
    block_end: int  # response positions < block_end belong to finished or current blocks
    block_done: bool


@dataclass
class DiffusionModel:
    loaded: LoadedModel
    mask_token_id: int

    @property
    def model(self):
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer


def is_diffusion_checkpoint(checkpoint) -> bool:
    return bool(checkpoint) and "diffusion" in read_adapter_config(Path(checkpoint))


def load(model_spec: str | None, checkpoint: str | Path | None = None) -> DiffusionModel:
    """A model (plus checkpoint) ready for `stream`; the [MASK] id comes from a diffusion
    checkpoint, else from the tokenizer's mask token."""
    loaded = load_for_inference(model_spec, checkpoint)
    info = read_adapter_config(Path(checkpoint)).get("diffusion") if checkpoint else None
    mask_id = info["mask_token_id"] if info else resolve_mask_token(loaded.tokenizer)
    if mask_id is None:
        raise UserError(f"{loaded.info.name} has no mask token, so it cannot denoise. Pass a checkpoint of a "
                        "diffusion run (--adapter) or a model trained as a masked diffusion model.", field="model")
    check_token_id(loaded.model, int(mask_id), "[MASK]")
    return DiffusionModel(loaded, int(mask_id))


def _transfer_counts(masks: int, steps: int) -> list[int]:
    """Tokens to unmask at each of `steps` steps: `masks` spread evenly, remainder first."""
    base, extra = divmod(masks, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def denoise(model, prompt_ids, mask_id: int, settings: DiffusionSettings,
            stop_ids=()) -> Iterator[DenoiseStep]:
    """Run the sampler (see the module doc); yield the state after every step.

    Stops early after a finished block that contains one of `stop_ids`.
    """
    length = settings.max_tokens
    if length < 1:
        raise UserError("max_tokens must be at least 1 for diffusion sampling.", field="max_tokens")
    block = settings.block_length if 0 < settings.block_length < length else length
    starts = list(range(0, length, block))
    steps_per_block = max(1, math.ceil((settings.steps or length) / len(starts)))
    prompt = len(prompt_ids)
    x = np.array(list(prompt_ids) + [mask_id] * length, dtype=np.int32)
    stops = np.array(sorted(stop_ids), dtype=np.int32)
    step = 0
    for start in starts:
        end = min(start + block, length)
        counts = _transfer_counts(end - start, min(steps_per_block, end - start))
        for i, count in enumerate(counts):
            logits = bidirectional_logits(model, mx.array(x)[None])[0, prompt + start:prompt + end]
            logits = logits.astype(mx.float32)
            if mask_id < logits.shape[-1]:  # [MASK] is never a prediction
                logits = mx.where(mx.arange(logits.shape[-1]) == mask_id, -mx.inf, logits)
            choice = logits
            if settings.temperature > 0:
                choice = logits / settings.temperature + mx.random.gumbel(logits.shape)
            predicted = mx.argmax(choice, axis=-1)
            confidence = mx.take_along_axis(mx.softmax(logits, axis=-1), predicted[:, None], axis=-1)[:, 0]
            predicted, confidence = np.array(predicted), np.array(confidence)
            window = x[prompt + start:prompt + end]
            confidence[window != mask_id] = -np.inf
            chosen = np.argsort(-confidence, kind="stable")[:count]
            window[chosen] = predicted[chosen]
            step += 1
            done = i == len(counts) - 1
            yield DenoiseStep(step, x[prompt:].copy(), end, done)
        if np.isin(x[prompt:prompt + end], stops).any():
            return


def _eos_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "eos_token_ids", None) or ())
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def stream(model: DiffusionModel, prompt, settings: DiffusionSettings = DiffusionSettings(),
           system: str | None = None) -> Iterator[str]:
    """Yield the answer's text as blocks finish (the same contract as generate.stream)."""
    yield from stream_ids(model.model, model.tokenizer, model.mask_token_id,
                          build_prompt(model.tokenizer, prompt, system), settings)


def stream_ids(model, tokenizer, mask_id: int, ids: list[int],
               settings: DiffusionSettings = DiffusionSettings()) -> Iterator[str]:
    """`stream` for prompt token `ids` (already templated) and a bare model + tokenizer + [MASK] id."""
    stops = _eos_ids(tokenizer)
    sent = text = ""
    for state in denoise(model, ids, mask_id, settings, stops):
        if not state.block_done:
            continue
        answer = state.response[:state.block_end].tolist()
        ends = [k for k, t in enumerate(answer) if t in stops]
        text = tokenizer.decode(answer[:ends[0]] if ends else answer)
        if text.startswith(sent) and not text.endswith("\ufffd"):  # hold a character cut between blocks
            if text != sent:
                yield text[len(sent):]
            sent = text
    if text.startswith(sent) and text != sent:
        yield text[len(sent):]


def generate(model: DiffusionModel, prompt, settings: DiffusionSettings = DiffusionSettings(),
             system: str | None = None) -> str:
    return "".join(stream(model, prompt, settings, system))

"""Text generation shared by `finetune generate`, the GUI chat and sample prompts.

Stands on mlx-lm's `stream_generate` (KV cache, sampling); we add loading a
base model together with one of our checkpoints and applying the chat template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from mlx_lm.generate import stream_generate
from mlx_lm.sample_utils import make_sampler
from mlx_lm.tuner.utils import load_adapters

from trainer_core.data.tokenize import build_prompt
from trainer_core.errors import UserError
from trainer_core.models.loading import LoadedModel, load_model, should_dequantize


@dataclass
class GenerationSettings:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0


def read_adapter_config(checkpoint: Path) -> dict:
    path = Path(checkpoint) / "adapter_config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{checkpoint} is not a checkpoint folder (no adapter_config.json). "
                        "Pass a checkpoints/step-NNNNNN or final/ folder of a run.") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); the checkpoint is damaged — pick another one.") from None


def load_for_inference(model_spec: str | None, checkpoint: str | Path | None = None,
                       quantized_base: str = "auto") -> LoadedModel:
    """Load a base model, and apply a checkpoint's adapters or full weights when given.

    With a checkpoint and no model, the base model recorded in the checkpoint is used.
    `quantized_base` (auto | keep | dequantize) as in RunConfig: adapters give the same
    function on the dequantized weights, which are the quantized values exactly.
    """
    adapter_config = read_adapter_config(Path(checkpoint)) if checkpoint else None
    spec = model_spec or (adapter_config or {}).get("base_model")
    if not spec:
        raise UserError("No model given: pass --model PATH (a folder, a .gguf file or 'demo').")
    full = bool(adapter_config and adapter_config.get("fine_tune_type") == "full")
    loaded = load_model(spec, dequantize=should_dequantize(quantized_base, full))
    if adapter_config and "diffusion" in adapter_config:  # a [MASK] row the run added to the embedding
        from trainer_core.methods.diffusion import restore_mask_token
        restore_mask_token(loaded.model, adapter_config["diffusion"])
    if checkpoint:
        try:
            load_adapters(loaded.model, str(checkpoint))
        except ValueError as e:
            raise UserError(f"The checkpoint {checkpoint} does not fit the model {spec}: {e}") from None
    loaded.model.eval()
    return loaded


def stream(loaded: LoadedModel, prompt, settings: GenerationSettings = GenerationSettings(),
           system: str | None = None) -> Iterator[str]:
    """Yield text pieces of the answer as they are generated."""
    yield from stream_ids(loaded.model, loaded.tokenizer, build_prompt(loaded.tokenizer, prompt, system), settings)


def stream_ids(model, tokenizer, ids: list[int], settings: GenerationSettings = GenerationSettings()) -> Iterator[str]:
    """Yield text pieces of the continuation of prompt token `ids` (already templated, or raw text)."""
    sampler = make_sampler(temp=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    for response in stream_generate(model, tokenizer, ids, max_tokens=settings.max_tokens, sampler=sampler):
        if response.text:
            yield response.text


def generate(loaded: LoadedModel, prompt, settings: GenerationSettings = GenerationSettings(),
             system: str | None = None) -> str:
    return "".join(stream(loaded, prompt, settings, system))

"""What a checkpoint or model can be exported as, before anything is loaded: the app greys out the rest.

    unavailable(source) -> ({format: why}, {GGUF type: why})

Reads only metadata (the checkpoint's adapter_config.json, the base's config.json or GGUF header), so
it is quick enough to run whenever the selection changes (on a worker thread: a GGUF header is a file).
The reasons are the messages export() would give, or say what to install.
"""

from __future__ import annotations

from pathlib import Path

from trainer_core.errors import UserError
from trainer_core.export.exporter import FORMATS, GGUF_FORMATS, is_checkpoint_source, read_checkpoint
from trainer_core.export.gguf import EXTRA_HINT, LLAMA_CPP_TYPES, llama_cpp
from trainer_core.export.gguf_arch import architecture
from trainer_core.models.loading import read_model_info


def unavailable(source) -> tuple[dict[str, str], dict[str, str]]:
    """What `source` cannot be exported as, for the app to grey out before a folder is chosen:
    ({format: why}, {GGUF type: why}), the reasons being export()'s own messages. Reads only
    metadata (the checkpoint's adapter_config.json, the base's config or GGUF header)."""
    types = ({t: f"install fine-tune-studio[gguf] (llama-cpp-python): {EXTRA_HINT}" for t in LLAMA_CPP_TYPES}
             if llama_cpp() is None else {})
    formats: dict[str, str] = {}
    base = str(source)
    if not is_checkpoint_source(source):
        formats.update(dict.fromkeys(("mlx-lm", "peft"), f"{source} is a model, not a checkpoint: it has no adapters."))
    else:
        try:
            config = read_checkpoint(Path(source))
        except UserError as e:
            return dict.fromkeys(FORMATS, str(e)), types
        if config.get("fine_tune_type") == "full":
            formats["peft"] = "A full fine-tune has no adapters for PEFT; export it as fused or GGUF."
        base = config.get("base_model") or ""
    needs_base = [f for f in FORMATS if f not in formats and f not in ("mlx-lm", "peft")]
    try:
        info = read_model_info(base) if base else None
    except UserError as e:
        info, why = None, str(e)
    else:
        why = "The checkpoint names no base model."
    if info is None:
        return {**formats, **dict.fromkeys(needs_base, why)}, types
    try:
        architecture(info.architecture, base)
    except UserError as e:
        formats.update(dict.fromkeys(GGUF_FORMATS, str(e)))
    return formats, types

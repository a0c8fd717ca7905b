"""Search the Hugging Face Hub for models to train: text-generation repos, most downloaded first.

`search_models(text)` asks `HfApi.list_models` (with the fields the picker shows expanded) and
describes each result: MLX / GGUF / safetensors, parameter count, quantization, licence, gated,
size, and the reason when it cannot be trained here (a GGUF architecture we do not load, a
model_type mlx-lm cannot build). Every failure is one UserError (offline, no network, the Hub).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass

from trainer_core.errors import UserError
from trainer_core.hub.local import GGUF_ARCHITECTURES

EXPAND = ["downloads", "likes", "gated", "tags", "safetensors", "gguf", "config", "usedStorage"]


@dataclass(frozen=True)
class HubModel:
    repo_id: str
    downloads: int
    kind: str            # "MLX" | "GGUF" | "safetensors"
    parameters: int      # 0 when the Hub does not say
    quantization: str    # "4-bit", "8-bit", "GGUF (several)", "none", ...
    license: str         # "apache-2.0", ... or ""
    gated: bool
    size_bytes: int      # the repo's storage (all files; a download takes only what training needs)
    reason: str = ""     # why it cannot be trained here; "" = it can

    @property
    def trainable(self) -> bool:
        return not self.reason


def _quantization(repo_id: str, tags: list[str], kind: str) -> str:
    if kind == "GGUF":
        return "GGUF (choose a quantization)"
    match = re.search(r"(\d)[-_]?bit", repo_id.lower())
    if match:
        return f"{match.group(1)}-bit"
    return next((t for t in tags if t in ("4-bit", "8-bit", "bf16", "fp16")), "none")


def _reason(kind: str, info) -> str:
    if kind == "GGUF":
        arch = (info.gguf or {}).get("architecture")
        if arch and arch not in GGUF_ARCHITECTURES:
            return f"GGUF architecture {arch!r} is not supported (supported: {', '.join(GGUF_ARCHITECTURES)})"
        return ""
    model_type = (info.config or {}).get("model_type")
    model_type = {"mistral": "llama"}.get(model_type, model_type)
    if model_type and importlib.util.find_spec(f"mlx_lm.models.{model_type}") is None:
        return f"architecture {model_type!r} is not one mlx-lm can build"
    return ""


def describe(info) -> HubModel:
    """huggingface_hub's ModelInfo -> what the picker shows."""
    tags = list(info.tags or [])
    kind = "GGUF" if "gguf" in tags or info.gguf else "MLX" if "mlx" in tags else "safetensors"
    parameters = (info.safetensors.total if info.safetensors else 0) or int((info.gguf or {}).get("total") or 0)
    license_ = next((t.split(":", 1)[1] for t in tags if t.startswith("license:")), "")
    return HubModel(info.id, int(info.downloads or 0), kind, int(parameters or 0),
                    _quantization(info.id, tags, kind), license_, bool(info.gated),
                    int(getattr(info, "used_storage", None) or 0), _reason(kind, info))


CONNECT_TIMEOUT = 5.0  # seconds


def search_models(text: str, limit: int = 40) -> list[HubModel]:
    """Text-generation models matching `text`, most downloaded first."""
    import huggingface_hub
    from trainer_core.hub.download import _endpoint, _is_connection_error

    if huggingface_hub.constants.is_offline_mode():
        raise UserError("Hugging Face search is off: HF_HUB_OFFLINE is set. Unset it to search the Hub; "
                        "the models on this computer are listed in the picker's first tab.")
    try:
        # one quick try first: list_models retries a refused connection 5 times with back-off (~20 s of
        # "Searching…" on a laptop without network before the message)
        endpoint = _endpoint()
        huggingface_hub.get_session().head(endpoint, timeout=CONNECT_TIMEOUT)
        api = huggingface_hub.HfApi(endpoint=endpoint)
        return [describe(info) for info in api.list_models(
            search=text.strip() or None, pipeline_tag="text-generation", sort="downloads", limit=limit,
            expand=EXPAND)]
    except Exception as e:  # noqa: BLE001  (one message for the picker)
        if _is_connection_error(e):
            raise UserError("Hugging Face cannot be reached (no network?). The models on this computer are "
                            "listed in the picker's first tab.") from None
        if isinstance(e, huggingface_hub.errors.HfHubHTTPError):
            raise UserError(f"The Hugging Face search failed ({' '.join(str(e).split())[:200]}). "
                            "Try again later.") from None
        raise

"""config.json as transformers 5 writes it -> the fields mlx-lm's model classes read.

transformers 5 saves `rope_parameters` (and `dtype`) where older files had `rope_theta`,
`rope_scaling` and `partial_rotary_factor` (and `torch_dtype`), and Gemma 3 gets per-layer
`layer_types` and per-layer-type rope settings. mlx-lm 0.32 reads only the old names for most
architectures and silently falls back to its own defaults (a Qwen2 saved with rope_theta 10,000
would run with 1,000,000). `normalize` fills the old names in from the new ones before mlx-lm
builds the model; a field the file already has is never overwritten.
"""

from __future__ import annotations

from trainer_core.errors import UserError

_LAYER_TYPE_KEYS = ("full_attention", "sliding_attention")


def _rope_fields(params: dict) -> dict:
    """One rope_parameters dict -> rope_theta (+ rope_scaling, partial_rotary_factor)."""
    out = {}
    if "rope_theta" in params:
        out["rope_theta"] = params["rope_theta"]
    if "partial_rotary_factor" in params:
        out["partial_rotary_factor"] = params["partial_rotary_factor"]
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
        out["rope_scaling"] = {**scaling, "rope_type": rope_type, "type": rope_type}
    return out


def sliding_window_period(layer_types: list, where: str) -> int:
    """mlx-lm's Gemma 3 `sliding_window_pattern` (every n-th layer is global) from per-layer
    types (True / "sliding_attention" = sliding); UserError if the layers follow no period."""
    sliding = [t is True or t == "sliding_attention" for t in layer_types]
    period = sliding.index(False) + 1 if False in sliding else len(sliding) + 1
    if any(s != ((i + 1) % period != 0) for i, s in enumerate(sliding)):
        raise UserError(f"{where} has an irregular pattern of sliding-window layers, which the "
                        "mlx-lm Gemma 3 model class does not support.")
    return period


def normalize(config: dict, where: str = "config.json") -> dict:
    """The fields mlx-lm needs that `config` only has under transformers 5 names (a new dict
    of just those; empty when the file is in the old format)."""
    out = {}
    if "dtype" in config and "torch_dtype" not in config:
        out["torch_dtype"] = config["dtype"]
    params = config.get("rope_parameters")
    if isinstance(params, dict) and params:
        if any(k in params for k in _LAYER_TYPE_KEYS):  # Gemma 3: per layer type
            fields = _rope_fields(params.get("full_attention", {}))
            local = params.get("sliding_attention", {})
            if "rope_theta" in local:
                fields["rope_local_base_freq"] = local["rope_theta"]
        else:
            fields = _rope_fields(params)
        out.update({k: v for k, v in fields.items() if config.get(k) is None})
    layer_types = config.get("layer_types")
    if (config.get("model_type") == "gemma3_text" and isinstance(layer_types, list)
            and "sliding_window_pattern" not in config):
        out["sliding_window_pattern"] = sliding_window_period(layer_types, where)
    return out

"""Training methods: each is a loss plus a batch function plugged into the shared loop.

`make_method(config, tokenizer)` returns the Method for `config.method`. A method module holds its loss,
its batch function and what only it uses: the frozen reference (`reference`), GRPO's rollouts
(`rollout`) and rewards (`rewards`), DPO's pair tokenisation (`preference_data`).
May import: `models`, `data`, `training` and the top-level contracts.
"""

from __future__ import annotations

import importlib

from trainer_core.errors import UserError
from trainer_core.methods.base import Method

# method name -> (module, class); modules are imported only when used
REGISTRY = {
    "sft": ("trainer_core.methods.sft", "SFTMethod"),
    "lora": ("trainer_core.methods.sft", "SFTMethod"),
    "dpo": ("trainer_core.methods.dpo", "DPOMethod"),
    "grpo": ("trainer_core.methods.grpo", "GRPOMethod"),
    "diffusion": ("trainer_core.methods.diffusion", "DiffusionMethod"),
}


def make_method(config, tokenizer) -> Method:
    module_name, class_name = REGISTRY[config.method]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        raise UserError(f"method {config.method!r} is not available in this build yet; use sft or lora.",
                        field="method") from None
    return getattr(module, class_name)(config, tokenizer)

"""Training methods: each is a loss plus a batch function plugged into the shared loop.

`make_method(config, tokenizer)` returns the Method for `config.method`.
"""

from __future__ import annotations

from trainer_core.methods.base import Method


def make_method(config, tokenizer) -> Method:
    if config.method in ("sft", "lora"):
        from trainer_core.methods.sft import SFTMethod
        return SFTMethod(config, tokenizer)
    from trainer_core.errors import UserError
    raise UserError(f"method {config.method!r} is not available in this build yet; use sft or lora.", field="method")

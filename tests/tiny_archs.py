"""Tiny random models of every architecture we load, written by transformers itself.

`make_hf_folder(folder, model_type)` builds the model with transformers (so config.json is
exactly what today's transformers writes: `rope_parameters`, `dtype`), gives it weights large
enough that a wrong rope or norm moves the logits visibly, and adds the tiny BPE tokenizer.
`hf_logits(folder, ids)` is transformers' own float32 forward pass: the reference.
Never downloads anything.
"""

from __future__ import annotations

from pathlib import Path

from tests.tiny_model import write_tokenizer

COMMON = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=2048, eos_token_id=2,
              bos_token_id=None, pad_token_id=0)
# Per architecture: non-default rope bases catch a config whose rope is silently replaced.
ARCH_KWARGS = {
    "llama": dict(rope_theta=5000.0, tie_word_embeddings=False, rms_norm_eps=1e-5),
    "mistral": dict(rope_theta=20000.0, head_dim=16, sliding_window=None, rms_norm_eps=1e-5),
    "qwen2": dict(rope_theta=10000.0, tie_word_embeddings=True, rms_norm_eps=1e-6),
    "qwen3": dict(rope_theta=20000.0, head_dim=16, tie_word_embeddings=True, rms_norm_eps=1e-6),
    "gemma2": dict(rope_theta=10000.0, head_dim=16, query_pre_attn_scalar=16,
                   sliding_window=4096, rms_norm_eps=1e-6),
    "gemma3_text": dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=4096,
                        layer_types=["sliding_attention", "full_attention"],
                        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 50000.0},
                                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                        rms_norm_eps=1e-6),
    "phi3": dict(rope_theta=20000.0, tie_word_embeddings=False, rms_norm_eps=1e-5,
                 original_max_position_embeddings=2048, sliding_window=None),
}
ARCHITECTURES = tuple(ARCH_KWARGS)


def make_hf_folder(folder: Path, model_type: str, *, seed: int = 0, hidden: int = 64,
                   **overrides) -> Path:
    """A random `model_type` model saved by transformers (float32) + tokenizer; returns folder.
    `hidden=256` makes every matrix 256 wide (4 heads of 64), as K-quant blocks need."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(folder)
    sizes = {} if hidden == 64 else dict(hidden_size=hidden, intermediate_size=hidden,
                                         head_dim=hidden // COMMON["num_attention_heads"])
    config = AutoConfig.for_model(model_type, vocab_size=vocab,
                                  **{**COMMON, **ARCH_KWARGS[model_type], **sizes, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # around the identity (Gemma: around 0, as it adds 1)
                p.normal_(0.0 if model_type.startswith("gemma") else 1.0, 0.1)
            else:
                p.normal_(0.0, 0.15 if p.ndim == 2 else 0.05)
    model.save_pretrained(folder)
    return folder


def hf_logits(folder: Path, ids: list[int]):
    """transformers' float32 logits for one sequence, as numpy (seq, vocab)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()

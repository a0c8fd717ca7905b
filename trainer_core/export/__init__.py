"""Export: a checkpoint in the formats other tools read.

The dispatcher with the mlx-lm and fused formats (`exporter`), Hugging Face PEFT (`peft`) and GGUF
(`gguf`). May import: `models`, `data`, `training`, `methods`, `generation` and the top-level contracts.
"""

"""Export: a checkpoint in the formats other tools read.

The dispatcher with the mlx-lm and fused formats (`exporter`), Hugging Face PEFT (`peft`), GGUF
(`gguf`, with `gguf_arch` per architecture and `gguf_vocab` for the tokenizer) and where a GGUF is
sent to be used, Ollama and LM Studio (`destinations`); what a checkpoint can be exported as
(`choices`); uploads to the Hugging Face Hub with a model card (`push`, `model_card`). May import: `models`, `data`, `training`,
`methods`, `generation` and the top-level contracts.
"""

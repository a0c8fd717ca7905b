"""Models: everything that turns a model path into trainable MLX modules.

Loading Hugging Face / mlx-community folders, GGUF files and the embedded demo (`loading`), transformers-5
config.json fields for mlx-lm (`hf_config`), the GGUF reader on gguf-py (`gguf`: header and checks,
`gguf_arch`: per-architecture config, `gguf_weights`: tensors -> model, `gguf_tokenizer`), LoRA/DoRA adapters (`adapters`), mixed precision
(`precision`), gradient checkpointing (`recompute`), attention in chunks of query rows on the CPU
(`attention`) and the OpenBLAS preload that must run before the
first `import mlx` (`native_blas`). May import: the top-level contracts (`errors`, `paths`, `config`,
`resources`) and nothing else of trainer_core. Importing this package itself loads no MLX.
"""

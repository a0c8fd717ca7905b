"""Hub: models named by a Hugging Face id (`org/name[@revision][:QUANT]`), fetched with huggingface_hub;
datasets likewise (`datasets`: `org/name[:config][@split]`, `hf://datasets/...`; data/ says which files).

`ids` parses and formats the ids; `download` resolves one to files in the standard Hugging Face cache
(shared with every other tool), downloading only what training needs, with progress, cancel, a
disk-space check, offline use of the cache and one clear message per failure; `local` finds the
models already on the computer (HF cache, LM Studio, Ollama); `search` searches the Hub. May import: the
top-level contracts (`errors`, `paths`, `config`, `resources`) and nothing else of trainer_core;
`models` imports it. Importing this package loads neither MLX nor huggingface_hub.
"""

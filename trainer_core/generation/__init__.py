"""Generation: text out of a model or checkpoint.

Autoregressive generation through mlx-lm (`generate`), the masked-diffusion sampler
(`diffusion_sampler`) and the per-checkpoint sample prompts callback (`samples`).
May import: `models`, `data`, `training`, `methods` and the top-level contracts.
"""

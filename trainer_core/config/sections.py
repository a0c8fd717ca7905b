"""The sections of RunConfig: `[lora]`, `[dpo]`, `[grpo]`, `[diffusion]`, `[precision]` and `[[param_groups]]`.

Each method section validates itself (`check`), so a section's fields, defaults and rules sit
together; `RunConfig.problems()` asks every section. They live in config/ rather than beside their
method because the config is the contract every layer (and the GUI, without MLX) reads: a method
module imports MLX and the training loop, the config must not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class LoraConfig:
    rank: int = 8  # adapter rank r
    alpha: float = 16.0  # scale = alpha / rank
    dropout: float = 0.0  # dropout on the adapter input (0 keeps it off the hot path)
    num_layers: int = -1  # adapt the last N transformer blocks; -1 = all
    targets: list[str] = field(default_factory=list)  # module names in a block (e.g. "self_attn.q_proj"); empty = every linear
    dora: bool = False  # weight-decomposed LoRA (same as fine_tune_type = "dora")

    def check(self, run, need) -> None:
        """Report each invalid field through need(ok, "lora.<field>", message); `run`: the RunConfig."""
        need(all(isinstance(t, str) for t in self.targets), "lora.targets",
             'lora.targets must be a list of module names, e.g. ["self_attn.q_proj", "mlp.down_proj"].')
        need(self.rank >= 1, "lora.rank", "lora.rank must be at least 1.")
        need(self.alpha > 0, "lora.alpha", "lora.alpha must be positive.")
        need(0 <= self.dropout < 1, "lora.dropout", "lora.dropout must be in [0, 1).")
        need(self.num_layers == -1 or self.num_layers >= 1, "lora.num_layers", "lora.num_layers must be -1 (all) or at least 1.")


@dataclass
class DPOConfig:
    beta: float = 0.1  # strength of the implicit KL to the reference
    loss_type: str = "sigmoid"  # sigmoid | ipo | hinge
    label_smoothing: float = 0.0  # conservative DPO (sigmoid only)
    precompute_reference: bool = False  # cache reference log-probs once in the run directory
    disable_dropout: bool = True  # no dropout in the policy (as TRL): the reference has none, so rewards start at 0

    def check(self, run, need) -> None:
        """Report each invalid field through need(ok, "dpo.<field>", message); `run`: the RunConfig."""
        need(self.beta > 0, "dpo.beta", "dpo.beta must be positive (0.1 is typical).")
        need(self.loss_type in ("sigmoid", "ipo", "hinge"), "dpo.loss_type", "dpo.loss_type must be sigmoid, ipo or hinge.")
        need(0 <= self.label_smoothing < 0.5, "dpo.label_smoothing", "dpo.label_smoothing must be in [0, 0.5).")


@dataclass
class GRPOConfig:
    group_size: int = 8  # completions sampled per prompt (G)
    beta: float = 0.04  # KL weight to the reference; 0 skips the reference pass
    epsilon: float = 0.2  # clip range (low side, and high side unless epsilon_high > 0)
    epsilon_high: float = 0.0  # DAPO asymmetric upper clip; 0 = same as epsilon
    num_iterations: int = 1  # optimisation passes (mu) over the same rollouts
    temperature: float = 1.0  # sampling temperature
    top_p: float = 1.0  # nucleus sampling
    top_k: int = 0  # 0 = off
    max_completion_length: int = 256  # tokens sampled per completion
    loss_aggregation: str = "grpo"  # grpo | bnpo | dr_grpo
    scale_rewards: bool = True  # divide advantages by the group std (False = Dr. GRPO)
    rewards: list[str] = field(default_factory=lambda: ["exact_match"])  # built-in or user reward names
    reward_weights: list[float] = field(default_factory=list)  # empty = all 1.0
    reward_file: str = ""  # a Python file with user reward functions (runs your code)
    generation_batch_size: int = 0  # sequences sampled together; 0 = all batch_size x group_size at once
    micro_batch_tokens: int = 1024  # update: rows x padded length per forward/backward pass (gradients summed
    # over the passes: same result, less memory); 0 = all batch_size x group_size rows in one pass
    sample_every: int = 10  # write one group's completions to <run>/completions.jsonl every N rollouts; 0 = off

    def check(self, run, need) -> None:
        """Report each invalid field through need(ok, "grpo.<field>", message); `run`: the RunConfig."""
        need(all(isinstance(r, str) for r in self.rewards), "grpo.rewards", "grpo.rewards must be a list of reward names.")
        need(all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
                 for w in self.reward_weights), "grpo.reward_weights", "grpo.reward_weights must be a list of numbers.")
        need(self.group_size >= 2, "grpo.group_size", "grpo.group_size must be at least 2 (advantages compare within a group).")
        need(self.beta >= 0, "grpo.beta", "grpo.beta must be 0 (no reference) or positive.")
        need(0 < self.epsilon < 1, "grpo.epsilon", "grpo.epsilon must be in (0, 1).")
        need(self.epsilon_high >= 0, "grpo.epsilon_high", "grpo.epsilon_high must be 0 (same as epsilon) or positive.")
        need(self.num_iterations >= 1, "grpo.num_iterations", "grpo.num_iterations must be at least 1.")
        need(self.temperature > 0, "grpo.temperature", "grpo.temperature must be positive.")
        need(0 < self.top_p <= 1, "grpo.top_p", "grpo.top_p must be in (0, 1].")
        need(self.top_k >= 0, "grpo.top_k", "grpo.top_k must be 0 (off) or positive.")
        need(self.max_completion_length >= 1, "grpo.max_completion_length", "grpo.max_completion_length must be at least 1.")
        need(self.loss_aggregation in ("grpo", "bnpo", "dr_grpo"), "grpo.loss_aggregation", "grpo.loss_aggregation must be grpo, bnpo or dr_grpo.")
        need(bool(self.rewards), "grpo.rewards", "grpo.rewards needs at least one reward function.")
        need(not self.reward_weights or len(self.reward_weights) == len(self.rewards), "grpo.reward_weights",
             "grpo.reward_weights must be empty or have one weight per reward.")
        need(self.generation_batch_size >= 0, "grpo.generation_batch_size",
             "grpo.generation_batch_size must be 0 (all sequences of a batch at once) or positive.")
        need(self.micro_batch_tokens >= 0, "grpo.micro_batch_tokens",
             "grpo.micro_batch_tokens must be 0 (all rows in one pass) or positive.")
        need(self.sample_every >= 0, "grpo.sample_every", "grpo.sample_every must be 0 (off) or more.")
        need(run.method != "grpo" or self.max_completion_length < run.max_seq_length, "grpo.max_completion_length",
             "grpo.max_completion_length must be below max_seq_length (prompt + completion must fit in it).")


@dataclass
class DiffusionConfig:
    schedule: str = "linear"  # mask probability p(t): linear t | cosine sin(pi t / 2) | polynomial t ** schedule_power
    schedule_power: float = 2.0  # exponent of the polynomial schedule
    eps: float = 1e-3  # t ~ U(eps, 1)
    sft_mode: bool = True  # never mask prompt tokens; noise and score the response only
    mask_token: str = ""  # a vocabulary token to use as [MASK]; empty = the tokenizer's mask token, else a row is added
    normalization: str = "row"  # row: each row's loss / its noisable tokens, mean over rows (LLaDA) | token: / the batch's noisable tokens

    def check(self, run, need) -> None:
        """Report each invalid field through need(ok, "diffusion.<field>", message); `run`: the RunConfig."""
        need(self.schedule in ("linear", "cosine", "polynomial"), "diffusion.schedule", "diffusion.schedule must be linear, cosine or polynomial.")
        need(0 < self.eps < 1, "diffusion.eps", "diffusion.eps must be in (0, 1).")
        need(self.schedule_power > 0, "diffusion.schedule_power", "diffusion.schedule_power must be positive.")
        need(self.normalization in ("row", "token"), "diffusion.normalization", "diffusion.normalization must be row or token.")


MASTER_WEIGHTS = ("fp32", "stochastic_rounding", "none")


@dataclass
class PrecisionConfig:
    """How full fine-tuning updates a 16-bit (bf16/fp16) model; float32 models and adapters are unaffected.
    (The top-level `mixed_precision` decides whether float32 trainable weights compute in 16 bits.)"""
    master_weights: str = "fp32"  # fp32: float32 master copy updated, model computes in 16 bits | stochastic_rounding: 16-bit weights, unbiased rounding | none: round to nearest (small updates are lost)

    def check(self, run, need) -> None:
        """Report each invalid field through need(ok, "precision.<field>", message); `run`: the RunConfig."""
        need(self.master_weights in MASTER_WEIGHTS, "precision.master_weights",
             "precision.master_weights must be fp32, stochastic_rounding or none.")


@dataclass
class ParamGroup:
    pattern: str = ""  # fnmatch pattern over parameter names, e.g. "layers.0.*"
    lr_multiplier: float = 1.0  # learning rate = base * multiplier for matching parameters

"""RunConfig: the single source of truth for a run.

The GUI form edits it, the CLI reads it from TOML (+ flags + `--set`), every run
writes it to `<run>/config.toml`. Validation lives here, once: `problems()`
returns `{dotted.field: message}` for the GUI to show inline; `validate()`
raises one UserError with all messages for the CLI.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
import tomli_w

from trainer_core.errors import UserError

METHODS = ("sft", "lora", "dpo", "grpo", "diffusion")
FINE_TUNE_TYPES = ("lora", "dora", "full")
DEFAULT_FINE_TUNE_TYPE = {"sft": "full", "lora": "lora", "dpo": "lora", "grpo": "lora", "diffusion": "full"}
SCHEDULES = ("constant", "linear", "cosine", "polynomial")
DATA_KINDS = ("", "text", "completions", "chat", "preference", "prompt_answer")
# What "best checkpoint" and early stopping go by: (eval record key, "min" | "max"); default ("loss", "min").
# GRPO's eval loss is about beta * KL (the advantages average to zero), so it goes by the eval reward.
BEST_EVAL_METRIC = {"grpo": ("reward_mean", "max")}


def best_eval_metric(method: str) -> tuple[str, str]:
    return BEST_EVAL_METRIC.get(method, ("loss", "min"))


# Fields a resumed run may change: they do not alter the maths of the steps already taken.
RESUMABLE_CHANGES = ("max_steps", "epochs", "save_every", "eval_every", "eval_batches", "keep_last", "report_every",
                     "gradient_checkpointing", "max_bad_steps", "early_stopping_patience", "output_dir", "run_name",
                     "sample_prompts", "num_samples", "sample_max_tokens")


@dataclass
class LoraConfig:
    rank: int = 8  # adapter rank r
    alpha: float = 16.0  # scale = alpha / rank
    dropout: float = 0.0  # dropout on the adapter input (0 keeps it off the hot path)
    num_layers: int = -1  # adapt the last N transformer blocks; -1 = all
    targets: list[str] = field(default_factory=list)  # module names in a block (e.g. "self_attn.q_proj"); empty = every linear
    dora: bool = False  # weight-decomposed LoRA (same as fine_tune_type = "dora")


@dataclass
class DPOConfig:
    beta: float = 0.1  # strength of the implicit KL to the reference
    loss_type: str = "sigmoid"  # sigmoid | ipo | hinge
    label_smoothing: float = 0.0  # conservative DPO (sigmoid only)
    precompute_reference: bool = False  # cache reference log-probs once in the run directory


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
    sample_every: int = 10  # write one group's completions to <run>/completions.jsonl every N rollouts; 0 = off


@dataclass
class DiffusionConfig:
    schedule: str = "linear"  # mask probability p(t): linear t | cosine sin(pi t / 2) | polynomial t ** schedule_power
    schedule_power: float = 2.0  # exponent of the polynomial schedule
    eps: float = 1e-3  # t ~ U(eps, 1)
    sft_mode: bool = True  # never mask prompt tokens; noise and score the response only
    mask_token: str = ""  # a vocabulary token to use as [MASK]; empty = the tokenizer's mask token, else a row is added


@dataclass
class ParamGroup:
    pattern: str = ""  # fnmatch pattern over parameter names, e.g. "layers.0.*"
    lr_multiplier: float = 1.0  # learning rate = base * multiplier for matching parameters


@dataclass
class RunConfig:
    method: str = "lora"  # sft | lora | dpo | grpo | diffusion
    model: str = "demo"  # a model folder, a .gguf file, or "demo"
    data: str = ""  # a data file or a folder with train/valid/test
    data_kind: str = ""  # force the data kind; empty = detect
    output_dir: str = ""  # runs root; empty = the platform default
    run_name: str = ""  # run folder name; empty = method-model-date
    fine_tune_type: str = ""  # lora | dora | full; empty = the method's default
    quantized_base: str = "auto"  # keep | dequantize | auto (= dequantize where MLX runs on the CPU, keep on a GPU)
    mixed_precision: bool = True  # 16-bit model: compute float32 adapters in 16 bits (float32 master weights and optimizer)
    gradient_checkpointing: bool = False  # recompute block activations in the backward pass: less memory, ~1/3 slower
    max_steps: int = 0  # optimizer steps; 0 = use epochs
    epochs: int = 1  # passes over the training data when max_steps = 0
    batch_size: int = 4  # examples per micro-batch, per process
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    learning_rate: float = 2e-4  # peak learning rate
    lr_schedule: str = "cosine"  # constant | linear | cosine | polynomial
    warmup_steps: int = 0  # linear warmup steps before the schedule
    min_learning_rate: float = 0.0  # floor the decaying schedules end at
    polynomial_power: float = 1.0  # exponent of the polynomial decay
    max_grad_norm: float = 1.0  # global-norm clipping; 0 = off
    weight_decay: float = 0.0  # decoupled (AdamW); not applied to norms and biases
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_seq_length: int = 512  # tokens per example; longer ones are truncated (and counted)
    mask_prompt: bool = True  # loss on the response tokens only (completions / chat)
    seed: int = 0  # data order, initialisation and dropout
    save_every: int = 100  # checkpoint every N steps; 0 = only at stop / end
    eval_every: int = 50  # evaluate every N steps; 0 = only at the end
    eval_batches: int = 0  # batches per evaluation; 0 = the whole valid split
    val_fraction: float = 0.0  # hold out this fraction of train as valid when there is no valid split
    keep_last: int = 3  # checkpoints kept (plus the best); 0 = keep all
    report_every: int = 1  # write a train record every N steps
    max_bad_steps: int = 5  # stop after this many consecutive NaN/Inf steps
    early_stopping_patience: int = 0  # stop after N evaluations without a better eval loss; 0 = off
    sample_prompts: list[str] = field(default_factory=list)  # answered at every checkpoint; empty = taken from the data
    num_samples: int = 3  # prompts taken from the valid split (else train) when sample_prompts is empty; 0 = none
    sample_max_tokens: int = 64  # tokens per sample answer (greedy, so answers change only with the weights)
    param_groups: list[ParamGroup] = field(default_factory=list)
    lora: LoraConfig = field(default_factory=LoraConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    # ---- derived -------------------------------------------------------------
    @property
    def resolved_fine_tune_type(self) -> str:
        kind = self.fine_tune_type or DEFAULT_FINE_TUNE_TYPE.get(self.method, "lora")
        if kind == "lora" and self.lora.dora:
            return "dora"
        return kind

    # ---- validation ----------------------------------------------------------
    def problems(self) -> dict[str, str]:
        """Every invalid field mapped to a message that says what to do."""
        p: dict[str, str] = {}

        def need(ok: bool, name: str, message: str) -> None:
            if not ok and name not in p:
                p[name] = message

        for name, value in _leaves(self):  # NaN/Inf pass every comparison below (inf >= 0)
            if isinstance(value, float):
                need(math.isfinite(value), name, f"{name} must be a finite number (got {value}).")
        need(0 <= self.seed < 2**63, "seed", "seed must be a whole number from 0 to 2**63 - 1.")
        need(self.method in METHODS, "method", f"method must be one of {', '.join(METHODS)} (got {self.method!r}).")
        need(self.fine_tune_type in ("",) + FINE_TUNE_TYPES, "fine_tune_type",
             f"fine_tune_type must be lora, dora or full (got {self.fine_tune_type!r}).")
        need(self.quantized_base in ("auto", "keep", "dequantize"), "quantized_base",
             "quantized_base must be auto, keep or dequantize.")
        need(not (self.lora.dora and self.fine_tune_type == "full"), "lora.dora",
             "lora.dora needs adapters: set fine_tune_type to lora/dora or turn dora off.")
        need(bool(str(self.model).strip()), "model", "model is empty: choose a model folder, a .gguf file or 'demo'.")
        need(bool(str(self.data).strip()), "data", "data is empty: choose a data file or a folder holding train.jsonl.")
        need(self.data_kind in DATA_KINDS, "data_kind", f"data_kind must be empty (detect) or one of {', '.join(DATA_KINDS[1:])}.")
        need(self.max_steps >= 0, "max_steps", "max_steps must be 0 (use epochs) or a positive number of steps.")
        need(self.epochs >= 1 or self.max_steps > 0, "epochs", "epochs must be at least 1 (or set max_steps).")
        need(self.batch_size >= 1, "batch_size", "batch_size must be at least 1.")
        need(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "gradient_accumulation_steps must be at least 1.")
        need(0 <= self.learning_rate < 1, "learning_rate", "learning_rate must be between 0 and 1 (e.g. 2e-4).")
        need(self.lr_schedule in SCHEDULES, "lr_schedule", f"lr_schedule must be one of {', '.join(SCHEDULES)}.")
        need(self.warmup_steps >= 0, "warmup_steps", "warmup_steps must be 0 or more.")
        need(0 <= self.min_learning_rate <= self.learning_rate, "min_learning_rate",
             "min_learning_rate must be between 0 and learning_rate.")
        need(self.polynomial_power > 0, "polynomial_power", "polynomial_power must be positive.")
        need(self.max_grad_norm >= 0, "max_grad_norm", "max_grad_norm must be 0 (off) or positive.")
        need(0 <= self.weight_decay < 1, "weight_decay", "weight_decay must be between 0 and 1.")
        need(0 <= self.adam_beta1 < 1, "adam_beta1", "adam_beta1 must be in [0, 1).")
        need(0 <= self.adam_beta2 < 1, "adam_beta2", "adam_beta2 must be in [0, 1).")
        need(self.adam_eps > 0, "adam_eps", "adam_eps must be positive.")
        need(self.max_seq_length >= 8, "max_seq_length", "max_seq_length must be at least 8 tokens.")
        for name in ("save_every", "eval_every", "eval_batches", "keep_last"):
            need(getattr(self, name) >= 0, name, f"{name} must be 0 or more.")
        need(self.report_every >= 1, "report_every", "report_every must be at least 1.")
        need(self.early_stopping_patience >= 0, "early_stopping_patience", "early_stopping_patience must be 0 (off) or more.")
        need(self.max_bad_steps >= 1, "max_bad_steps", "max_bad_steps must be at least 1.")
        need(0 <= self.val_fraction < 1, "val_fraction", "val_fraction must be in [0, 1).")
        need(all(isinstance(t, str) and t.strip() for t in self.sample_prompts), "sample_prompts",
             'sample_prompts must be a list of non-empty prompts, e.g. ["What is the capital of France?"].')
        need(self.num_samples >= 0, "num_samples", "num_samples must be 0 (no samples from the data) or more.")
        need(1 <= self.sample_max_tokens <= 4096, "sample_max_tokens", "sample_max_tokens must be from 1 to 4096.")
        for i, group in enumerate(self.param_groups):
            need(bool(group.pattern), f"param_groups.{i}.pattern", "a param group needs a pattern such as 'layers.0.*'.")
            need(group.lr_multiplier >= 0, f"param_groups.{i}.lr_multiplier", "lr_multiplier must be 0 or more.")
        lora = self.lora
        need(all(isinstance(t, str) for t in lora.targets), "lora.targets",
             'lora.targets must be a list of module names, e.g. ["self_attn.q_proj", "mlp.down_proj"].')
        need(lora.rank >= 1, "lora.rank", "lora.rank must be at least 1.")
        need(lora.alpha > 0, "lora.alpha", "lora.alpha must be positive.")
        need(0 <= lora.dropout < 1, "lora.dropout", "lora.dropout must be in [0, 1).")
        need(lora.num_layers == -1 or lora.num_layers >= 1, "lora.num_layers", "lora.num_layers must be -1 (all) or at least 1.")
        dpo = self.dpo
        need(dpo.beta > 0, "dpo.beta", "dpo.beta must be positive (0.1 is typical).")
        need(dpo.loss_type in ("sigmoid", "ipo", "hinge"), "dpo.loss_type", "dpo.loss_type must be sigmoid, ipo or hinge.")
        need(0 <= dpo.label_smoothing < 0.5, "dpo.label_smoothing", "dpo.label_smoothing must be in [0, 0.5).")
        grpo = self.grpo
        need(all(isinstance(r, str) for r in grpo.rewards), "grpo.rewards", "grpo.rewards must be a list of reward names.")
        need(all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
                 for w in grpo.reward_weights), "grpo.reward_weights", "grpo.reward_weights must be a list of numbers.")
        need(grpo.group_size >= 2, "grpo.group_size", "grpo.group_size must be at least 2 (advantages compare within a group).")
        need(grpo.beta >= 0, "grpo.beta", "grpo.beta must be 0 (no reference) or positive.")
        need(0 < grpo.epsilon < 1, "grpo.epsilon", "grpo.epsilon must be in (0, 1).")
        need(grpo.epsilon_high >= 0, "grpo.epsilon_high", "grpo.epsilon_high must be 0 (same as epsilon) or positive.")
        need(grpo.num_iterations >= 1, "grpo.num_iterations", "grpo.num_iterations must be at least 1.")
        need(grpo.temperature > 0, "grpo.temperature", "grpo.temperature must be positive.")
        need(0 < grpo.top_p <= 1, "grpo.top_p", "grpo.top_p must be in (0, 1].")
        need(grpo.top_k >= 0, "grpo.top_k", "grpo.top_k must be 0 (off) or positive.")
        need(grpo.max_completion_length >= 1, "grpo.max_completion_length", "grpo.max_completion_length must be at least 1.")
        need(grpo.loss_aggregation in ("grpo", "bnpo", "dr_grpo"), "grpo.loss_aggregation", "grpo.loss_aggregation must be grpo, bnpo or dr_grpo.")
        need(bool(grpo.rewards), "grpo.rewards", "grpo.rewards needs at least one reward function.")
        need(not grpo.reward_weights or len(grpo.reward_weights) == len(grpo.rewards), "grpo.reward_weights",
             "grpo.reward_weights must be empty or have one weight per reward.")
        need(grpo.generation_batch_size >= 0, "grpo.generation_batch_size",
             "grpo.generation_batch_size must be 0 (all sequences of a batch at once) or positive.")
        need(grpo.sample_every >= 0, "grpo.sample_every", "grpo.sample_every must be 0 (off) or more.")
        need(self.method != "grpo" or grpo.max_completion_length < self.max_seq_length, "grpo.max_completion_length",
             "grpo.max_completion_length must be below max_seq_length (prompt + completion must fit in it).")
        diff = self.diffusion
        need(diff.schedule in ("linear", "cosine", "polynomial"), "diffusion.schedule", "diffusion.schedule must be linear, cosine or polynomial.")
        need(0 < diff.eps < 1, "diffusion.eps", "diffusion.eps must be in (0, 1).")
        need(diff.schedule_power > 0, "diffusion.schedule_power", "diffusion.schedule_power must be positive.")
        return p

    def validate(self) -> "RunConfig":
        """Raise one UserError listing every problem; return self when valid."""
        problems = self.problems()
        if problems:
            lines = "; ".join(f"{k}: {v}" for k, v in problems.items())
            raise UserError(f"Invalid configuration — {lines}", field=next(iter(problems)))
        return self

    # ---- (de)serialisation -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def save(self, path: Path) -> None:
        """Write the TOML atomically (temp file + rename): a crash never leaves a torn config."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self.to_toml())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> "RunConfig":
        return _build(cls, data, source, prefix="")

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"Config file {path} does not exist.") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"Config file {path} is not valid TOML: {e}. Fix the line named or start from a saved config.toml.") from None
        return cls.from_dict(data, source=str(path))

    def with_overrides(self, assignments: list[str]) -> "RunConfig":
        """Apply `section.key=value` strings (values parsed as TOML, else taken as text)."""
        data = self.to_dict()
        for item in assignments:
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise UserError(f"--set {item!r}: expected section.key=value, e.g. --set lora.rank=16.")
            try:
                value = tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError:
                value = raw
            target = data
            *parents, leaf = key.split(".")
            for part in parents:
                if not isinstance(target.get(part), dict):
                    raise UserError(f"--set {item!r}: {key} is not a config field (sections: lora, dpo, grpo, diffusion).", field=key)
                target = target[part]
            if leaf not in target:
                raise UserError(f"--set {item!r}: {key} is not a config field.", field=key)
            target[leaf] = value
        return RunConfig.from_dict(data, source="--set")


def _leaves(obj, prefix: str = ""):
    """(dotted name, value) for every non-dataclass field, param groups included."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        elif f.name == "param_groups":
            for i, group in enumerate(value):
                if dataclasses.is_dataclass(group):
                    yield from _leaves(group, f"{prefix}{f.name}.{i}.")
        else:
            yield prefix + f.name, value


def _build(cls, data: Any, source: str, prefix: str):
    """Build dataclass `cls` from a dict, checking names and types with clear messages."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: [{prefix.rstrip('.')}] must be a table of settings.", field=prefix.rstrip("."))
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        name = prefix + unknown[0]
        raise UserError(f"{source}: unknown setting {name!r}. Check the spelling against a saved config.toml.", field=name)
    kwargs = {}
    defaults = cls()
    for name, value in data.items():
        f = known[name]
        full = prefix + name
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, source, full + ".")
        elif name == "param_groups":
            if not isinstance(value, list):
                raise UserError(f"{source}: {full} must be a list of {{pattern, lr_multiplier}} tables.", field=full)
            kwargs[name] = [_build(ParamGroup, g, source, f"{full}.{i}.") for i, g in enumerate(value)]
        else:
            kwargs[name] = _coerce(value, default, source, full)
    return cls(**kwargs)


def _coerce(value: Any, default: Any, source: str, name: str) -> Any:
    kind = type(default)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(default, list):
        if isinstance(value, list):
            return list(value)
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
    expected = {bool: "true or false", int: "a whole number", float: "a number", str: "text", list: "a list"}.get(kind, kind.__name__)
    raise UserError(f"{source}: {name} must be {expected} (got {value!r}).", field=name)

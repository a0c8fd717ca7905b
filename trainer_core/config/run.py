"""RunConfig: the single source of truth for a run.

The GUI form edits it, the CLI reads it from TOML (+ flags + `--set`), every run
writes it to `<run>/config.toml`. Validation lives here and in the sections
(sections.py), once: `problems()` returns `{dotted.field: message}` for the GUI
to show inline; `validate()` raises one UserError with all messages for the CLI.
Reading and writing TOML: toml_io.py.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from trainer_core.config import toml_io
from trainer_core.config.sections import (DiffusionConfig, DPOConfig, GRPOConfig, LoraConfig, ParamGroup,
                                          PrecisionConfig)
from trainer_core.errors import UserError

METHODS = ("sft", "lora", "dpo", "grpo", "diffusion")
FINE_TUNE_TYPES = ("lora", "dora", "full")
DEFAULT_FINE_TUNE_TYPE = {"sft": "full", "lora": "lora", "dpo": "lora", "grpo": "lora", "diffusion": "full"}
SCHEDULES = ("constant", "linear", "cosine", "polynomial")
DATA_KINDS = ("", "text", "completions", "chat", "preference", "prompt_answer")
# Record formats mapped onto the kinds (data/formats.py); "" = detect from the first record.
DATA_FORMATS = ("native", "alpaca", "sharegpt", "preference_messages", "preference_transcript", "columns")
DATA_COLUMN_FIELDS = ("prompt", "completion", "answer", "system", "messages", "chosen", "rejected", "text")
LONG_ROWS = ("truncate", "drop")
# What "best checkpoint" and early stopping go by: (eval record key, "min" | "max"); default ("loss", "min").
# GRPO's eval loss is about beta * KL (the advantages average to zero), so it goes by the eval reward.
BEST_EVAL_METRIC = {"grpo": ("reward_mean", "max")}


# Upper bounds of whole-number settings (a typo such as 1e30 is refused, not run); others: 2**53.
INT_LIMITS = {
    "max_steps": 10_000_000, "epochs": 10_000, "batch_size": 65_536, "gradient_accumulation_steps": 65_536,
    "warmup_steps": 10_000_000, "max_seq_length": 1_048_576, "save_every": 10_000_000, "eval_every": 10_000_000,
    "eval_batches": 10_000_000, "keep_last": 100_000, "report_every": 10_000_000, "max_bad_steps": 1_000_000,
    "early_stopping_patience": 1_000_000, "num_samples": 1_000, "lora.rank": 4_096, "lora.num_layers": 10_000,
    "grpo.group_size": 1_024, "grpo.num_iterations": 1_000, "grpo.max_completion_length": 131_072,
    "grpo.generation_batch_size": 65_536, "grpo.micro_batch_tokens": 1 << 30, "grpo.sample_every": 10_000_000,
}


def _one_path_component(name: str) -> bool:
    """Empty (a generated name) or a single folder name that stays inside the runs root."""
    if not name:
        return True
    return (name not in (".", "..") and "/" not in name and "\\" not in name and len(name.encode()) <= 255
            and not any(ord(c) < 32 or ord(c) == 127 for c in name))


def best_eval_metric(method: str) -> tuple[str, str]:
    return BEST_EVAL_METRIC.get(method, ("loss", "min"))


# Fields a resumed run may change: they do not alter the maths of the steps already taken.
RESUMABLE_CHANGES = ("max_steps", "epochs", "save_every", "eval_every", "eval_batches", "keep_last", "report_every",
                     "gradient_checkpointing", "max_bad_steps", "early_stopping_patience", "output_dir", "run_name",
                     "sample_prompts", "num_samples", "sample_max_tokens", "max_memory_gb")


@dataclass
class RunConfig:
    method: str = "lora"  # sft | lora | dpo | grpo | diffusion
    model: str = "demo"  # a model folder, a .gguf file, or "demo"
    data: str = ""  # a data file or a folder with train/valid/test
    data_kind: str = ""  # force the data kind; empty = detect
    data_format: str = ""  # force the record format (DATA_FORMATS); empty = detect
    data_columns: dict[str, str] = field(default_factory=dict)  # field -> column, e.g. {prompt = "question"}
    last_turn_only: bool = False  # multi-turn chats: train only the last assistant reply (default: every reply)
    long_rows: str = "truncate"  # rows longer than max_seq_length: truncate | drop
    output_dir: str = ""  # runs root; empty = the platform default
    run_name: str = ""  # run folder name; empty = method-model-date
    fine_tune_type: str = ""  # lora | dora | full; empty = the method's default
    quantized_base: str = "auto"  # keep | dequantize | auto (= keep on a GPU and above 1B parameters, else dequantize)
    mixed_precision: bool = True  # 16-bit model: compute float32 trainable weights (adapters, full FT's masters) in 16 bits
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
    max_memory_gb: float = 0.0  # checkpoint and stop when MLX's memory passes this; 0 = 85% of what is available
    early_stopping_patience: int = 0  # stop after N evaluations without a better eval loss; 0 = off
    sample_prompts: list[str] = field(default_factory=list)  # answered at every checkpoint; empty = taken from the data
    num_samples: int = 3  # prompts taken from the valid split (else train) when sample_prompts is empty; 0 = none
    sample_max_tokens: int = 64  # tokens per sample answer (greedy, so answers change only with the weights)
    param_groups: list[ParamGroup] = field(default_factory=list)
    lora: LoraConfig = field(default_factory=LoraConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)

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

        for name, value in toml_io.leaves(self):  # NaN/Inf pass every comparison below (inf >= 0)
            if isinstance(value, float):
                need(math.isfinite(value), name, f"{name} must be a finite number (got {value}).")
            elif isinstance(value, int) and not isinstance(value, bool) and name != "seed":
                limit = INT_LIMITS.get(name, 2**53)
                need(value <= limit, name, f"{name} must be at most {limit:,} (got {value:,}).")
        need(_one_path_component(self.run_name), "run_name",
             f"run_name must be one folder name: no / or \\, not . or .., no control characters (got {self.run_name!r}).")
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
        need(self.data_format in ("",) + DATA_FORMATS, "data_format",
             f"data_format must be empty (detect) or one of {', '.join(DATA_FORMATS)}.")
        need(all(k in DATA_COLUMN_FIELDS and isinstance(v, str) and v for k, v in self.data_columns.items()),
             "data_columns", f"data_columns maps fields ({', '.join(DATA_COLUMN_FIELDS)}) to column names, "
             'e.g. {prompt = "question", completion = "answer"}.')
        need(self.long_rows in LONG_ROWS, "long_rows", "long_rows must be truncate or drop.")
        need(self.max_steps >= 0, "max_steps", "max_steps must be 0 (use epochs) or a positive number of steps.")
        need(self.epochs >= 1 or self.max_steps > 0, "epochs", "epochs must be at least 1 (or set max_steps).")
        need(self.batch_size >= 1, "batch_size", "batch_size must be at least 1.")
        need(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "gradient_accumulation_steps must be at least 1.")
        need(0 <= self.learning_rate < 1, "learning_rate", "learning_rate must be between 0 and 1 (e.g. 2e-4).")
        need(self.lr_schedule in SCHEDULES, "lr_schedule", f"lr_schedule must be one of {', '.join(SCHEDULES)}.")
        need(self.warmup_steps >= 0, "warmup_steps", "warmup_steps must be 0 or more.")
        need(0 <= self.min_learning_rate and (not 0 <= self.learning_rate < 1 or self.min_learning_rate
                                              <= self.learning_rate), "min_learning_rate",
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
        need(self.max_memory_gb >= 0, "max_memory_gb", "max_memory_gb must be 0 (85% of the available memory) or more.")
        need(0 <= self.val_fraction < 1, "val_fraction", "val_fraction must be in [0, 1).")
        need(all(isinstance(t, str) and t.strip() for t in self.sample_prompts), "sample_prompts",
             'sample_prompts must be a list of non-empty prompts, e.g. ["What is the capital of France?"].')
        need(self.num_samples >= 0, "num_samples", "num_samples must be 0 (no samples from the data) or more.")
        need(1 <= self.sample_max_tokens <= 4096, "sample_max_tokens", "sample_max_tokens must be from 1 to 4096.")
        for i, group in enumerate(self.param_groups):
            need(bool(group.pattern), f"param_groups.{i}.pattern", "a param group needs a pattern such as 'layers.0.*'.")
            need(group.lr_multiplier >= 0, f"param_groups.{i}.lr_multiplier", "lr_multiplier must be 0 or more.")
        for section in (self.lora, self.dpo, self.grpo, self.diffusion, self.precision):
            section.check(self, need)
        return p

    def validate(self) -> "RunConfig":
        """Raise one UserError listing every problem; return self when valid."""
        problems = self.problems()
        if problems:
            lines = "; ".join(f"{k}: {v}" for k, v in problems.items())
            raise UserError(f"Invalid configuration — {lines}", field=next(iter(problems)))
        return self

    # ---- (de)serialisation (toml_io.py) ---------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def save(self, path: Path) -> None:
        """Write the TOML atomically (temp file + rename): a crash never leaves a torn config."""
        toml_io.write_atomically(Path(path), self.to_toml())

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> "RunConfig":
        return toml_io.build(cls, data, source, prefix="")

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        return cls.from_dict(toml_io.read_toml(Path(path)), source=str(path))

    def with_overrides(self, assignments: list[str]) -> "RunConfig":
        """Apply `section.key=value` strings (values parsed as TOML, else taken as text)."""
        return RunConfig.from_dict(toml_io.apply_assignments(self.to_dict(), assignments), source="--set")

"""Hyperparameters group and the live learning-rate preview.

Fields edit RunConfig's top-level training settings (defaults from DESIGN.md).
`LRPreview.show_schedule(config, total_steps)` draws exactly
`schedules.learning_rate_at` at the plotted steps, so the preview is the
schedule the run will use.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QGridLayout, QGroupBox, QLabel, QVBoxLayout

from app.common.form import BoundField, bool_field, choice_field, float_field, format_float, int_field, text_field
from app.common.plot_style import COLORS, faint, small_plot
from trainer_core.config import SCHEDULES
from trainer_core.training.schedules import learning_rate_at

MAX_POINTS = 600


class HyperparametersPanel(QGroupBox):
    def __init__(self, parent=None):
        super().__init__("Hyperparameters", parent)
        f = {
            "batch_size": int_field("batch_size", 1, 4096, tooltip="Examples per micro-batch."),
            "gradient_accumulation_steps": int_field("gradient_accumulation_steps", 1, 4096,
                                                     tooltip="Micro-batches per optimizer step."),
            "learning_rate": float_field("learning_rate", placeholder="2e-4", tooltip="Peak learning rate."),
            "lr_schedule": choice_field("lr_schedule", [(s, s) for s in SCHEDULES]),
            "warmup_steps": int_field("warmup_steps", 0, 10_000_000),
            "epochs": int_field("epochs", 0, 10_000, tooltip="Passes over the training data (when max steps is 0)."),
            "max_steps": int_field("max_steps", 0, 100_000_000, special="use epochs",
                                   tooltip="Optimizer steps; 0 uses epochs."),
            "max_grad_norm": float_field("max_grad_norm", placeholder="1.0", tooltip="Global-norm clipping; 0 = off."),
            "weight_decay": float_field("weight_decay", placeholder="0.0", tooltip="Decoupled (AdamW)."),
            "max_seq_length": int_field("max_seq_length", 2, 1_000_000, suffix=" tok",
                                        tooltip="Longer examples are truncated (and counted)."),
            "seed": int_field("seed", 0, 2**31 - 1),
            "save_every": int_field("save_every", 0, 10_000_000, special="end only",
                                    tooltip="Checkpoint every N steps; 0 = only at stop / end."),
            "eval_every": int_field("eval_every", 0, 10_000_000, special="end only",
                                    tooltip="Evaluate every N steps on the valid split; 0 = only at the end."),
            "val_fraction": float_field("val_fraction", placeholder="0",
                                        tooltip="Without a validation split: hold out this fraction of train "
                                                "(seeded) for evaluation; 0 = none."),
            "run_name": text_field("run_name", placeholder="automatic (method-model-date)"),
            "num_samples": int_field("num_samples", 0, 100, special="off",
                                     tooltip="Prompts of the valid split (else train) answered at every checkpoint, "
                                             "shown in the Checkpoints tab. Your own: sample_prompts in a preset."),
            "sample_max_tokens": int_field("sample_max_tokens", 1, 4096, suffix=" tok",
                                           tooltip="Tokens per sample answer (greedy)."),
            "gradient_checkpointing": bool_field(
                "gradient_checkpointing", "Save memory (recompute activations)",
                tooltip="Gradient checkpointing: each block's activations are recomputed in the backward pass. "
                        "Much less memory for long sequences, about a third slower. Recommended (ticked for you) where "
                        "it at least halves the memory estimate and saves 2 GB or more."),
            "mixed_precision": bool_field(
                "mixed_precision", "16-bit adapter compute",
                tooltip="On a bf16/fp16 model, compute the float32 adapters in 16 bits (float32 master weights "
                        "and optimizer state are kept). Faster and leaner; off = mlx-lm's float32 adapters."),
        }
        self.named = f
        rows = [
            [("Learning rate", "learning_rate"), ("Schedule", "lr_schedule"), ("Warmup steps", "warmup_steps")],
            [("Batch size", "batch_size"), ("Accumulation", "gradient_accumulation_steps"),
             ("Max grad norm", "max_grad_norm")],
            [("Epochs", "epochs"), ("Max steps", "max_steps"), ("Weight decay", "weight_decay")],
            [("Max seq length", "max_seq_length"), ("Save every", "save_every"), ("Eval every", "eval_every")],
        ]
        grid = QGridLayout()
        grid.setHorizontalSpacing(8)
        grid.setVerticalSpacing(6)
        for r, pairs in enumerate(rows):
            for c, (label, name) in enumerate(pairs):
                grid.addWidget(QLabel(label), r, 2 * c)
                grid.addWidget(f[name].cell(), r, 2 * c + 1)
        grid.addWidget(QLabel("Seed"), len(rows), 0)
        grid.addWidget(f["seed"].cell(), len(rows), 1)
        grid.addWidget(QLabel("Run name"), len(rows), 2)
        grid.addWidget(f["run_name"].cell(), len(rows), 3, 1, 3)
        grid.addWidget(QLabel("Sample prompts"), len(rows) + 1, 0)
        grid.addWidget(f["num_samples"].cell(), len(rows) + 1, 1)
        grid.addWidget(QLabel("Sample length"), len(rows) + 1, 2)
        grid.addWidget(f["sample_max_tokens"].cell(), len(rows) + 1, 3)
        grid.addWidget(QLabel("Valid held out"), len(rows) + 1, 4)
        grid.addWidget(f["val_fraction"].cell(), len(rows) + 1, 5)
        grid.addWidget(f["gradient_checkpointing"].cell(), len(rows) + 2, 0, 1, 3)
        grid.addWidget(f["mixed_precision"].cell(), len(rows) + 2, 3, 1, 3)
        for column in (1, 3, 5):
            grid.setColumnStretch(column, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(grid)
        layout.addStretch(1)

    @property
    def fields(self) -> list[BoundField]:
        return list(self.named.values())


def preview_steps(total_steps: int, warmup_steps: int) -> np.ndarray:
    """The steps the preview plots: all of them, or MAX_POINTS spread out plus the warmup corner."""
    if total_steps <= MAX_POINTS:
        return np.arange(total_steps)
    steps = np.linspace(0, total_steps - 1, MAX_POINTS).astype(int)
    corners = [s for s in (warmup_steps - 1, warmup_steps) if 0 <= s < total_steps]
    return np.unique(np.concatenate([steps, np.asarray(corners, dtype=int)]))


def schedule_values(config, total_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps, learning rates) exactly as the run's schedule gives them."""
    steps = preview_steps(total_steps, config.warmup_steps)
    rates = np.array([learning_rate_at(int(s), schedule=config.lr_schedule, peak=config.learning_rate,
                                       total_steps=total_steps, warmup_steps=config.warmup_steps,
                                       floor=config.min_learning_rate, power=config.polynomial_power)
                      for s in steps], dtype=float)
    return steps, rates


class LRPreview(QGroupBox):
    def __init__(self, parent=None):
        super().__init__("Learning-rate schedule", parent)
        self.plot = small_plot(110, short_floats=True)
        self.plot.getPlotItem().setLabel("bottom", "step")
        self.curve = self.plot.plot([], [], pen=pg.mkPen(COLORS["lr"], width=2),
                                    fillLevel=0, brush=faint(COLORS["lr"], 40))
        self.caption = QLabel("")
        self.caption.setObjectName("secondary")
        self.caption.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.caption)

    def show_schedule(self, config, total_steps: int | None, steps_per_epoch: int | None = None) -> None:
        """Draw the schedule; `total_steps` None = unknown (the dataset is not read yet)."""
        known = total_steps is not None and total_steps > 0
        total = total_steps if known else max(config.max_steps, 100)
        try:
            steps, rates = schedule_values(config, total)
        except (ValueError, TypeError, ZeroDivisionError):
            self.curve.setData([], [])
            self.caption.setText("The schedule can't be drawn until the fields above are valid.")
            return
        self.curve.setData(steps, rates)
        self.plot.setXRange(0, max(1, total - 1), padding=0.02)
        self.plot.setYRange(0, max(float(rates.max()) if len(rates) else 0, 1e-12), padding=0.05)
        if not known:
            self.caption.setText(f"{config.lr_schedule} · peak {format_float(config.learning_rate)} · "
                                 "run length known once the dataset is read")
            return
        if config.max_steps:
            length = f"{total:,} steps"
        else:
            length = f"{total:,} steps ({config.epochs} epoch{'s' if config.epochs != 1 else ''} × " \
                     f"{steps_per_epoch or 0:,})"
        self.caption.setText(f"{length} · {config.lr_schedule} · peak {format_float(config.learning_rate)}"
                             f"{f' · warmup {config.warmup_steps}' if config.warmup_steps else ''}")

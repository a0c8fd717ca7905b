"""Method group: SFT / LoRA / DPO / GRPO / Diffusion and only the settings that apply.

LoRA settings show whenever adapters train (the LoRA method, or DPO/GRPO
with their default adapters, or fine_tune_type lora/dora); DPO, GRPO and
diffusion sections show with their method. `method_available(name)` says
whether this build has the method's module (methods land in later issues).
"""

from __future__ import annotations

import importlib.util

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QButtonGroup, QGridLayout, QGroupBox, QHBoxLayout, QLabel, QMenu, QPushButton,
                               QRadioButton, QVBoxLayout, QWidget)

from app.common.form import BoundField, bool_field, choice_field, float_field, int_field, list_field
from app.setup.reward_picker import RewardPicker, reward_fields
from trainer_core.config import DEFAULT_FINE_TUNE_TYPE, METHODS
from trainer_core.methods import REGISTRY

LABELS = {"sft": "SFT", "lora": "LoRA", "dpo": "DPO", "grpo": "GRPO", "diffusion": "Diffusion"}
TYPE_LABELS = {"lora": "LoRA adapters", "dora": "DoRA adapters", "full": "full weights"}
TARGET_PRESETS = [
    ("All linear layers", []),
    ("Attention (q, k, v, o)", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]),
    ("Queries and values (q, v)", ["self_attn.q_proj", "self_attn.v_proj"]),
    ("MLP (gate, up, down)", ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]),
]


def method_available(method: str) -> bool:
    module = REGISTRY.get(method, ("",))[0]
    try:
        return bool(module) and importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _grid(rows: list[list]) -> QGridLayout:
    """Label / field pairs, several per row: [[('rank', field), ...], ...]."""
    grid = QGridLayout()
    grid.setHorizontalSpacing(8)
    grid.setVerticalSpacing(4)
    for r, pairs in enumerate(rows):
        for c, (label, field) in enumerate(pairs):
            grid.addWidget(QLabel(label), r, 2 * c)
            grid.addWidget(field.cell() if isinstance(field, BoundField) else field, r, 2 * c + 1)
    grid.setColumnStretch(2 * max(len(p) for p in rows), 1)
    return grid


class MethodPanel(QGroupBox):
    methodChanged = Signal(str)

    def __init__(self, parent=None):
        super().__init__("Method", parent)
        self.buttons = QButtonGroup(self)
        radios = QHBoxLayout()
        for i, method in enumerate(METHODS):
            button = QRadioButton(LABELS[method])
            button.setObjectName(f"method:{method}")
            if not method_available(method):
                button.setToolTip(f"{LABELS[method]} is not available in this build yet.")
            self.buttons.addButton(button, i)
            radios.addWidget(button)
        radios.addStretch(1)
        holder = QWidget()
        holder.setLayout(radios)
        self.method = BoundField("method", holder, self._method, self._set_method, self.buttons.idToggled)
        self.fine_tune_type = choice_field("fine_tune_type", [("", "method default"), ("lora", "LoRA adapters"),
                                                              ("dora", "DoRA adapters"), ("full", "full weights")])
        self.lora = {
            "rank": int_field("lora.rank", 1, 4096),
            "alpha": float_field("lora.alpha", placeholder="16"),
            "dropout": float_field("lora.dropout", placeholder="0.0"),
            "num_layers": int_field("lora.num_layers", -1, 1000, special="all",
                                    tooltip="Adapt the last N transformer blocks; 'all' adapts every block."),
            "targets": list_field("lora.targets", placeholder="all linear layers",
                                  tooltip="Module names inside a block, e.g. self_attn.q_proj, mlp.up_proj"),
            "dora": bool_field("lora.dora", "DoRA (weight-decomposed)"),
        }
        self.dpo = {
            "beta": float_field("dpo.beta", placeholder="0.1"),
            "loss_type": choice_field("dpo.loss_type", [(t, t) for t in ("sigmoid", "ipo", "hinge")]),
            "label_smoothing": float_field("dpo.label_smoothing", placeholder="0.0"),
            "disable_dropout": bool_field("dpo.disable_dropout", "No dropout in the policy",
                                          tooltip="As TRL: the reference has no dropout, so the policy has none "
                                                  "either and the implicit rewards start at 0."),
        }
        self.grpo = {
            "group_size": int_field("grpo.group_size", 1, 256),
            "beta": float_field("grpo.beta", placeholder="0.04"),
            "epsilon": float_field("grpo.epsilon", placeholder="0.2"),
            "temperature": float_field("grpo.temperature", placeholder="1.0"),
            "max_completion_length": int_field("grpo.max_completion_length", 1, 32768, suffix=" tok"),
        }
        self.rewards = RewardPicker()
        self.grpo.update({f.name.split(".")[1]: f for f in reward_fields(self.rewards)})
        self.diffusion = {
            "schedule": choice_field("diffusion.schedule", [(s, s) for s in ("linear", "cosine", "polynomial")]),
            "eps": float_field("diffusion.eps", placeholder="1e-3"),
            "sft_mode": bool_field("diffusion.sft_mode", "Train on responses only (prompt never noised)",
                                   tooltip="SFT mode: only response tokens are masked with noise and scored; the "
                                           "prompt stays visible. Off: every token is noised, as in pre-training."),
            "normalization": choice_field("diffusion.normalization", [("row", "per row (LLaDA)"),
                                                                      ("token", "per batch token")],
                                          tooltip="row: each row's loss divided by its answer length, then "
                                                  "averaged (LLaDA); token: divided by the batch's answer tokens."),
        }
        self.precision = {
            "master_weights": choice_field("precision.master_weights", [
                ("fp32", "float32 master weights"), ("stochastic_rounding", "stochastic rounding (half the memory)"),
                ("none", "none (small updates are lost)")],
                tooltip="How full fine-tuning updates a bf16/fp16 model: float32 masters (standard mixed precision), "
                        "16-bit weights rounded stochastically, or rounded to nearest."),
        }
        targets_menu = QPushButton()
        targets_menu.setText("Presets")
        menu = QMenu(targets_menu)
        for label, targets in TARGET_PRESETS:
            menu.addAction(label, lambda t=targets: self._set_targets(t))
        targets_menu.setMenu(menu)
        targets_row = QWidget()
        targets_layout = QHBoxLayout(targets_row)
        targets_layout.setContentsMargins(0, 0, 0, 0)
        targets_layout.addWidget(self.lora["targets"].cell(), 1)
        targets_layout.addWidget(targets_menu)

        lo = self.lora
        self.lora_box = self._section("LoRA", _grid([
            [("rank", lo["rank"]), ("alpha", lo["alpha"]), ("dropout", lo["dropout"])],
            [("layers", lo["num_layers"]), ("", lo["dora"])],
        ]))
        self.lora_box.layout().addLayout(_grid([[("targets", targets_row)]]))
        self.dpo_box = self._section("DPO", _grid([
            [("beta", self.dpo["beta"]), ("loss", self.dpo["loss_type"]),
             ("label smoothing", self.dpo["label_smoothing"])], [("", self.dpo["disable_dropout"])]]))
        g = self.grpo
        self.grpo_box = self._section("GRPO", _grid([
            [("group size", g["group_size"]), ("KL beta", g["beta"]), ("epsilon", g["epsilon"])],
            [("temperature", g["temperature"]), ("max completion", g["max_completion_length"])]]))
        self.grpo_box.layout().addWidget(QLabel("Rewards"))
        self.grpo_box.layout().addWidget(self.rewards)
        for name in ("rewards", "reward_weights", "reward_file"):
            self.grpo_box.layout().addWidget(self.grpo[name].message)
        d = self.diffusion
        self.diffusion_box = self._section("Diffusion", _grid([
            [("mask schedule", d["schedule"]), ("eps", d["eps"])],
            [("loss per", d["normalization"]), ("", d["sft_mode"])]]))

        self.full_box = self._section("Full fine-tuning", _grid([
            [("16-bit updates", self.precision["master_weights"])]]))

        self.availability = QLabel("")
        self.availability.setObjectName("fieldMessage")
        self.availability.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(holder)
        layout.addLayout(_grid([[("Trains", self.fine_tune_type)]]))
        for box in (self.lora_box, self.full_box, self.dpo_box, self.grpo_box, self.diffusion_box):
            layout.addWidget(box)
        layout.addWidget(self.availability)
        layout.addStretch(1)
        self.buttons.idToggled.connect(lambda *_: self.update_sections())
        self.fine_tune_type.changed.connect(self.update_sections)
        self.lora["dora"].changed.connect(self.update_sections)
        self._set_method("lora")

    @staticmethod
    def _section(title: str, grid: QGridLayout) -> QWidget:
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 6, 0, 0)
        header = QLabel(title)
        header.setObjectName("sectionTitle")
        layout.addWidget(header)
        layout.addLayout(grid)
        return box

    @property
    def fields(self) -> list[BoundField]:
        return [self.method, self.fine_tune_type, *self.lora.values(), *self.dpo.values(), *self.grpo.values(),
                *self.diffusion.values(), *self.precision.values()]

    def _method(self) -> str:
        return METHODS[max(0, self.buttons.checkedId())]

    def _set_method(self, method: str) -> None:
        self.buttons.button(METHODS.index(method) if method in METHODS else 1).setChecked(True)
        self.update_sections()

    def _set_targets(self, targets: list[str]) -> None:
        self.lora["targets"].editor.setText(", ".join(targets))

    def resolved_type(self) -> str:
        chosen = self.fine_tune_type.value() or DEFAULT_FINE_TUNE_TYPE[self._method()]
        return "dora" if chosen == "lora" and self.lora["dora"].value() else chosen

    def update_sections(self) -> None:
        method = self._method()
        default = DEFAULT_FINE_TUNE_TYPE[method]
        self.fine_tune_type.editor.setItemText(0, f"method default ({TYPE_LABELS[default]})")
        self.lora_box.setVisible(self.resolved_type() in ("lora", "dora"))
        self.full_box.setVisible(self.resolved_type() == "full")
        self.dpo_box.setVisible(method == "dpo")
        self.grpo_box.setVisible(method == "grpo")
        self.diffusion_box.setVisible(method == "diffusion")
        available = method_available(method)
        self.availability.setText("" if available else f"{LABELS[method]} is not available in this build yet; "
                                                       "choose SFT or LoRA.")
        self.availability.setVisible(not available)
        self.methodChanged.emit(method)

"""Model group: the demo model, recent models, "Browse models…" (the picker), "Choose folder…", "Choose .gguf…".

The info line (architecture · parameters · quantization · context · layers)
comes from `models.read_model_info`, run on the thread pool so a slow disk
never freezes the window. `info` holds the last ModelInfo (None while loading
or on error) for the memory estimate; `infoChanged` fires when it changes.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QFormLayout, QGroupBox, QLabel, QVBoxLayout

from app import settings
from app.common.form import BoundField
from app.common.keys import HERE
from app.common.tasks import LatestTask
from trainer_core.models import loading as models

RECENT_KEY = "recent/models"
CHOOSE_FOLDER = "__choose_folder__"
CHOOSE_GGUF = "__choose_gguf__"
BROWSE = "__browse__"
DETAILS = {"parameters": "Parameters", "quantization": "Weights", "context": "Context", "shape": "Shape",
           "path": "File"}


def parameter_count(count: int) -> str:
    return f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M" if count >= 1e6 else f"{count / 1e3:.0f}K"


def describe(info: models.ModelInfo) -> str:
    """'llama · 135M parameters · Q4_1 · context 8,192 · 30 layers'."""
    quant = "float" if info.quantization == "none" else info.quantization
    return (f"{info.architecture} · {parameter_count(info.num_parameters)} parameters · {quant} · "
            f"context {info.context_length:,} · {info.num_layers} layers")


def detail_texts(info: models.ModelInfo) -> dict[str, str]:
    quantized = info.quantization != "none"
    if quantized and models.quantized_kernels_slow():  # quantized_base = auto (see README)
        weights = f"{info.quantization} — dequantized to float for training on this CPU"
    else:
        weights = f"{info.quantization} — LoRA trains as QLoRA"
    return {
        "parameters": f"{parameter_count(info.num_parameters)} ({info.num_parameters:,})",
        "quantization": weights if quantized else "float (full fine-tuning possible)",
        "context": f"{info.context_length:,} tokens",
        "shape": f"{info.num_layers} layers · hidden {info.hidden_size:,} · vocabulary {info.vocab_size:,}",
        "path": Path(info.path).name,
    }


class ModelPanel(QGroupBox):
    modelChanged = Signal(str)
    infoChanged = Signal()

    def __init__(self, parent=None):
        super().__init__("Model", parent)
        self.info: models.ModelInfo | None = None
        self.error = ""
        self._spec = models.DEMO_SPEC
        self._task = LatestTask()
        self.destroyed.connect(self._task.cancel)
        self.combo = QComboBox()
        self.combo.setMinimumContentsLength(28)
        self.combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.combo.activated.connect(self._activated)
        self.info_label = QLabel("Reading model metadata…")
        self.info_label.setObjectName("secondary")
        self.info_label.setWordWrap(True)
        self.details = {name: QLabel("—") for name in DETAILS}
        details = QFormLayout()
        details.setHorizontalSpacing(12)
        details.setVerticalSpacing(3)
        for name, label in self.details.items():
            label.setTextInteractionFlags(Qt.TextSelectableByMouse)
            label.setWordWrap(True)  # long values (the weights' policy, the file name) wrap instead of widening the tab
            details.addRow(QLabel(DETAILS[name]), label)
        layout = QVBoxLayout(self)
        layout.addWidget(self.combo)
        self.field = BoundField("model", self.combo, lambda: self._spec, self.select, self.modelChanged)
        layout.addWidget(self.field.message)
        layout.addWidget(self.info_label)
        layout.addLayout(details)
        layout.addStretch(1)
        self.footer = layout
        self._fill()
        self._load_info()

    # ---- choices ------------------------------------------------------------------
    def _fill(self) -> None:
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItem(models.DEMO_NAME if models.demo_model_available() else "Demo model (not installed)",
                           models.DEMO_SPEC)
        specs = [s for s in settings.recent(RECENT_KEY) if s != models.DEMO_SPEC and not models.local_model_problem(s)]
        if self._spec not in specs and self._spec != models.DEMO_SPEC:
            specs.insert(0, self._spec)
        for spec in specs:
            self.combo.addItem(Path(spec).name or spec, spec)
            self.combo.setItemData(self.combo.count() - 1, spec, Qt.ToolTipRole)
        self.combo.insertSeparator(self.combo.count())
        self.combo.addItem(f"Browse models ({HERE}, Hugging Face)…", BROWSE)
        self.combo.addItem("Choose folder…", CHOOSE_FOLDER)
        self.combo.addItem("Choose .gguf file…", CHOOSE_GGUF)
        self.combo.setCurrentIndex(max(0, self.combo.findData(self._spec)))
        self.combo.blockSignals(False)

    def _activated(self, index: int) -> None:
        data = self.combo.itemData(index)
        if data == BROWSE:
            self._fill()
            self.open_picker()
            return
        if data == CHOOSE_FOLDER:
            path = settings.ask_path(self, "folder", "models", "Choose a model folder (config.json + *.safetensors)")
        elif data == CHOOSE_GGUF:
            path = settings.ask_path(self, "open", "models", "Choose a GGUF model", filters="GGUF models (*.gguf)")
        else:
            path = data
        if path:
            self.select(path)
        else:
            self._fill()

    def open_picker(self):
        """The model picker (model_picker.py); choosing there selects the model here."""
        from app.setup.model_picker import ModelPicker

        picker = ModelPicker(settings.recent(RECENT_KEY), self)
        picker.setAttribute(Qt.WA_DeleteOnClose)
        picker.modelChosen.connect(self.select)
        picker.open()
        return picker

    def select(self, spec: str) -> None:
        """Use model `spec` (a folder, a .gguf file, a Hugging Face id or 'demo')."""
        spec = str(spec)
        changed = spec != self._spec
        self._spec = spec
        problem = models.local_model_problem(spec)
        if spec != models.DEMO_SPEC and not problem:  # recents hold only models (a non-model: the reason, inline)
            settings.push_recent(RECENT_KEY, spec)

        self._fill()
        if changed:
            self._load_info()
            self.modelChanged.emit(spec)

    @property
    def spec(self) -> str:
        return self._spec

    # ---- metadata off the GUI thread ------------------------------------------------
    def _load_info(self) -> None:
        self.info, self.error = None, ""
        self.info_label.setText("Reading model metadata…")
        for label in self.details.values():
            label.setText("—")
        spec = self._spec
        self._task.start(lambda task: models.read_model_info(spec), self._info_ready, self._info_failed)
        self.infoChanged.emit()

    def _info_ready(self, info) -> None:
        self.info, self.error = info, ""
        self.info_label.setText(describe(info))
        for name, text in detail_texts(info).items():
            self.details[name].setText(text)
        self.details["path"].setToolTip(info.path)
        self.infoChanged.emit()

    def _info_failed(self, message: str) -> None:
        not_a_model = self._spec != models.DEMO_SPEC and models.local_model_problem(self._spec)
        self.info, self.error = None, message + (" It was not added to the recent models." if not_a_model else "")
        self.info_label.setText("")
        self.infoChanged.emit()

"""The Checkpoints tab's Export ▾ menu: every format, with a GGUF type picker for GGUF and its apps.

`ExportMenu.chosen(fmt, options)` is emitted with `options` the keyword arguments for
trainer_core.export.exporter.export (gguf_type, quantize). `set_unavailable(formats, types)` greys out
what the selected checkpoint cannot be exported as ({name: why}, from trainer_core.export.choices),
with the reason as the entry's tooltip, and emits `updated`; until it is called nothing is greyed,
and export() still refuses with the same reason.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QMenu

# (format, label, export options); None: the GGUF type picker (a submenu)
ENTRIES = (("mlx-lm", "mlx-lm adapters", {}),
           ("fused", "Fused model (mlx-lm folder)", {}),
           ("fused", "MLX 8-bit (mlx-community style)", {"quantize": 8}),
           ("fused", "MLX 4-bit (mlx-community style)", {"quantize": 4}),
           ("peft", "Hugging Face PEFT", {}),
           ("gguf", "GGUF (llama.cpp)", None),
           ("ollama", "Send to Ollama (GGUF + Modelfile)", None),
           ("lmstudio", "Send to LM Studio (GGUF)", None))
GGUF_TYPE_LABELS = (("f16", "F16 · 16-bit, as trained"), ("bf16", "BF16 · 16-bit, bfloat"),
                    ("f32", "F32 · 32-bit, largest"), ("q8_0", "Q8_0 · 8-bit, near-lossless"),
                    ("q6_k", "Q6_K · 6-bit"), ("q5_k_m", "Q5_K_M · 5-bit"), ("q5_1", "Q5_1 · 5-bit"),
                    ("q4_k_m", "Q4_K_M · 4-bit, the usual choice for apps"), ("q4_0", "Q4_0 · 4-bit"))
DEFAULT_GGUF_TYPE = {"gguf": "f16", "ollama": "q8_0", "lmstudio": "q8_0"}


class ExportMenu(QMenu):
    chosen = Signal(str, dict)
    pushRequested = Signal()  # Push to Hugging Face Hub…
    updated = Signal()  # set_unavailable was applied

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setToolTipsVisible(True)
        self.format_actions = []  # (fmt, QAction): a submenu's menuAction for the GGUF formats
        self.type_actions = []  # (fmt, gguf_type, QAction)
        for fmt, label, options in ENTRIES:
            if options is not None:
                action = self.addAction(label, lambda f=fmt, o=options: self.chosen.emit(f, dict(o)))
            else:
                action = self._type_picker(fmt, label).menuAction()
            self.format_actions.append((fmt, action))
        self.addSeparator()
        self.push_action = self.addAction("Push to Hugging Face Hub…", self.pushRequested.emit)

    def _type_picker(self, fmt: str, label: str) -> QMenu:
        menu = self.addMenu(label)
        menu.setToolTipsVisible(True)
        for gguf_type, type_label in GGUF_TYPE_LABELS:
            if gguf_type == DEFAULT_GGUF_TYPE[fmt]:
                type_label += " (default)"
            action = menu.addAction(type_label, lambda f=fmt, t=gguf_type: self.chosen.emit(f, {"gguf_type": t}))
            self.type_actions.append((fmt, gguf_type, action))
        return menu

    def set_unavailable(self, formats: dict[str, str], types: dict[str, str]) -> None:
        for fmt, action in self.format_actions:
            action.setEnabled(fmt not in formats)
            action.setToolTip(formats.get(fmt, ""))
        for _, gguf_type, action in self.type_actions:
            action.setEnabled(gguf_type not in types)
            action.setToolTip(types.get(gguf_type, ""))
        self.updated.emit()

    def action_for(self, fmt: str, gguf_type: str | None = None, quantize: int | None = None):
        """The entry for a format (and GGUF type, or MLX bits): for tests and the window's shortcuts."""
        if gguf_type:
            return next(a for f, t, a in self.type_actions if (f, t) == (fmt, gguf_type))
        index = next(i for i, (f, _, o) in enumerate(ENTRIES)
                     if f == fmt and (o or {}).get("quantize") == quantize)
        return self.format_actions[index][1]

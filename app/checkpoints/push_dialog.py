"""Push to Hugging Face Hub…: the repo id, private or public, and what to upload (adapters, a fused model or a
GGUF), for `trainer_core.export.push.push`. Says up front whether a Hub token is set, and how to set one.

`ask_push(parent, checkpoint, adapters=True) -> (repo_id, fmt, private) | None`.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFormLayout, QLabel, QLineEdit,
                               QVBoxLayout)

from trainer_core.export.push import LOGIN_HINT, PUSH_FORMATS, REPO_ID

FORMAT_LABELS = {"adapter": "Adapters (PEFT + mlx-lm): small, needs the base model",
                 "fused": "Fused model (mlx-lm / transformers folder)",
                 "gguf": "GGUF F16 (llama.cpp, Ollama, LM Studio)"}


def hub_token_set() -> bool:
    import huggingface_hub
    return bool(huggingface_hub.get_token())


class PushDialog(QDialog):
    def __init__(self, checkpoint: Path, adapters: bool = True, parent=None):
        super().__init__(parent)
        self.setWindowTitle(f"Push {checkpoint.name} to the Hugging Face Hub")
        self.repo = QLineEdit()
        self.repo.setPlaceholderText("your-name/model-name")
        self.private = QCheckBox("Private repository")
        self.private.setChecked(True)
        self.fmt = QComboBox()
        for fmt in PUSH_FORMATS:
            self.fmt.addItem(FORMAT_LABELS[fmt], fmt)
        if not adapters:  # a full fine-tune has none
            self.fmt.model().item(PUSH_FORMATS.index("adapter")).setEnabled(False)
            self.fmt.setCurrentIndex(PUSH_FORMATS.index("fused"))
        self.note = QLabel("A model card (base model, data, settings, losses, loss plot, how to load it) is uploaded "
                           "too." if hub_token_set() else f"No Hugging Face token found: {LOGIN_HINT}.")
        self.note.setWordWrap(True)
        self.problem = QLabel()
        self.problem.setObjectName("fieldError")
        self.problem.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Repository", self.repo)
        form.addRow("", self.private)
        form.addRow("Upload", self.fmt)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.buttons.button(QDialogButtonBox.Ok).setText("Push")
        self.buttons.accepted.connect(self._accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        for part in (form, self.note, self.problem, self.buttons):
            layout.addLayout(part) if isinstance(part, QFormLayout) else layout.addWidget(part)

    def _accept(self) -> None:
        if not REPO_ID.match(self.repo.text().strip()):
            self.problem.setText("Write the repository as user/name (or organization/name): letters, digits, "
                                 "'-', '_' and '.'.")
            return
        self.accept()

    def answer(self) -> tuple[str, str, bool]:
        return self.repo.text().strip(), self.fmt.currentData(), self.private.isChecked()


def ask_push(parent, checkpoint: Path, adapters: bool = True) -> tuple[str, str, bool] | None:
    dialog = PushDialog(checkpoint, adapters, parent)
    return dialog.answer() if dialog.exec() == QDialog.Accepted else None

"""The Chat tab: a multi-turn conversation with a base model plus one checkpoint.

The model and checkpoint are picked at the top (the Checkpoints tab's Chat
button fills them), with a system prompt and sampling controls (temperature,
top-p, max tokens). Answers stream in piece by piece from the Generator (its own
thread: the model loads and generates there, never on the GUI thread); Stop ends
the answer where it is, Copy puts the last answer on the clipboard. A diffusion
run's checkpoint is answered by the diffusion sampler (the Generator decides).
"""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication, QKeySequence, QShortcut
from PySide6.QtWidgets import (QComboBox, QDoubleSpinBox, QGridLayout, QGroupBox, QHBoxLayout, QLabel,
                               QLineEdit, QPlainTextEdit, QPushButton, QSpinBox, QTextBrowser, QVBoxLayout, QWidget)

from app import settings
from app.checkpoints.generation_worker import Generator
from app.common.keys import keys
from trainer_core.paths import default_runs_root

BASE_ONLY = "(base model only)"


def transcript_html(messages: list[dict], pending: bool = False) -> str:
    """The conversation as HTML: user turns right-aligned, answers left; a ▍ caret on a streaming answer."""
    parts = []
    for i, message in enumerate(messages):
        text = html.escape(message["content"]).replace("\n", "<br>")
        if message["role"] == "user":
            parts.append(f"<p style='margin:10px 0 2px 0'><b>You</b></p><p style='margin:0 0 6px 0'>{text}</p>")
        else:
            caret = " ▍" if pending and i == len(messages) - 1 else ""
            parts.append(f"<p style='margin:10px 0 2px 0'><b>Model</b></p>"
                         f"<p style='margin:0 0 6px 0'>{text or '<i>…</i>'}{caret}</p>")
    return "".join(parts)


class ChatPane(QWidget):
    """Signals: answered(str) once an answer has ended (stopped or complete)."""

    answered = Signal(str)

    def __init__(self, generator: Generator | None = None, parent=None):
        super().__init__(parent)
        self.generator = generator or Generator(self)
        self.messages: list[dict] = []
        self.job: int | None = None
        self.model_spec: str | None = None

        self.model = QLineEdit()
        self.model.setPlaceholderText("from the checkpoint (or a model folder, a .gguf file, 'demo')")
        self.checkpoint = QComboBox()
        self.checkpoint.setMinimumWidth(320)
        self.checkpoint.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.checkpoint.addItem(BASE_ONLY, "")
        choose = QPushButton("Choose…")
        choose.setToolTip("A checkpoints/step-NNNNNN or final/ folder of any run")
        choose.clicked.connect(self._choose_checkpoint)
        self.system = QLineEdit()
        self.system.setPlaceholderText("System prompt (optional)")
        self.temperature = QDoubleSpinBox(decimals=2, minimum=0.0, maximum=2.0, singleStep=0.1, value=0.7)
        self.temperature.setToolTip("0 = greedy (always the most likely token)")
        self.top_p = QDoubleSpinBox(decimals=2, minimum=0.05, maximum=1.0, singleStep=0.05, value=0.95)
        self.max_tokens = QSpinBox(minimum=1, maximum=8192, value=256)
        settings = QGroupBox("Model")
        grid = QGridLayout(settings)
        grid.addWidget(QLabel("Base model"), 0, 0)
        grid.addWidget(self.model, 0, 1, 1, 3)
        grid.addWidget(QLabel("Checkpoint"), 1, 0)
        grid.addWidget(self.checkpoint, 1, 1, 1, 2)
        grid.addWidget(choose, 1, 3)
        grid.addWidget(QLabel("System"), 2, 0)
        grid.addWidget(self.system, 2, 1, 1, 3)
        sampling = QHBoxLayout()
        for label, widget in (("Temperature", self.temperature), ("   Top-p", self.top_p),
                              ("   Max tokens", self.max_tokens)):
            sampling.addWidget(QLabel(label))
            sampling.addWidget(widget)
        sampling.addStretch(1)
        grid.addLayout(sampling, 3, 0, 1, 4)
        grid.setColumnStretch(1, 1)

        self.transcript = QTextBrowser()
        self.transcript.setOpenLinks(False)
        self.input = QPlainTextEdit()
        self.input.setPlaceholderText(f"Message — {keys(Qt.CTRL | Qt.Key_Return)} to send")
        self.input.setMaximumHeight(90)
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.clicked.connect(lambda: self.send())
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("End the answer where it is")
        self.stop_button.clicked.connect(self.stop)
        self.copy_button = QPushButton("Copy answer")
        self.copy_button.clicked.connect(self.copy_answer)
        self.clear_button = QPushButton("New chat")
        self.clear_button.clicked.connect(self.clear)
        QShortcut(QKeySequence(Qt.CTRL | Qt.Key_Return), self.input, activated=lambda: self.send())
        buttons = QVBoxLayout()
        for button in (self.send_button, self.stop_button, self.copy_button, self.clear_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        entry = QHBoxLayout()
        entry.addWidget(self.input, 1)
        entry.addLayout(buttons)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)

        layout = QVBoxLayout(self)
        layout.addWidget(settings)
        layout.addWidget(self.transcript, 1)
        layout.addLayout(entry)
        layout.addWidget(self.status)
        self.checkpoint.currentIndexChanged.connect(lambda _: self._update_placeholder())
        self._update_placeholder()
        self.generator.piece.connect(self._piece)
        self.generator.loading.connect(self._loading)
        self.generator.done.connect(self._done)
        self.generator.failed.connect(self._failed)
        self._update_buttons()

    # ---- model ---------------------------------------------------------------------------
    def set_checkpoints(self, checkpoints: list[str], selected: str | None = None) -> None:
        """Offer `checkpoints` (paths) in the picker and select `selected` (or keep the current one)."""
        keep = selected if selected is not None else self.checkpoint.currentData()
        self.checkpoint.blockSignals(True)
        self.checkpoint.clear()
        self.checkpoint.addItem(BASE_ONLY, "")
        for path in checkpoints:
            p = Path(path)
            self.checkpoint.addItem(f"{p.parent.parent.name if p.name != 'final' else p.parent.name} · {p.name}",
                                    str(p))
        if keep and self.checkpoint.findData(str(keep)) < 0:
            self.checkpoint.addItem(str(keep), str(keep))
        self.checkpoint.setCurrentIndex(max(0, self.checkpoint.findData(str(keep or ""))))
        self.checkpoint.blockSignals(False)
        self._update_placeholder()

    def _update_placeholder(self) -> None:
        """The empty transcript says whom the next message goes to."""
        if self.current_checkpoint():
            self.transcript.setPlaceholderText(f"Type below to talk to {self.checkpoint.currentText()} "
                                               "(the base model with this checkpoint applied).")
        else:
            self.transcript.setPlaceholderText("Type below to talk to the base model, or pick a checkpoint above "
                                               "(or Chat in the Checkpoints tab).")

    def _choose_checkpoint(self) -> None:
        path = settings.ask_path(self, "folder", "checkpoints", "Choose a checkpoint folder (step-NNNNNN or final)",
                                 fallback=default_runs_root())
        if path:
            self.set_checkpoints([self.checkpoint.itemData(i) for i in range(1, self.checkpoint.count())], path)

    def current_checkpoint(self) -> str | None:
        return self.checkpoint.currentData() or None

    # ---- conversation --------------------------------------------------------------------
    @property
    def generating(self) -> bool:
        return self.job is not None

    def send(self, text: str | None = None) -> bool:
        """Add a user turn (the input box's text unless given) and stream the answer; False if nothing to send."""
        text = (self.input.toPlainText() if text is None else text).strip()
        if not text or self.generating:
            return False
        if not self.model.text().strip() and not self.current_checkpoint():
            self.status.setText("Choose a base model or a checkpoint first.")
            return False
        self.input.clear()
        self.messages.append({"role": "user", "content": text})
        history = [dict(m) for m in self.messages]
        self.messages.append({"role": "assistant", "content": ""})
        self.job = self.generator.generate(self.model.text().strip() or None, self.current_checkpoint(), history,
                                           system=self.system.text().strip() or None,
                                           max_tokens=self.max_tokens.value(),
                                           temperature=self.temperature.value(), top_p=self.top_p.value())
        self.status.setText("Generating…")
        self._render()
        self._update_buttons()
        return True

    def stop(self) -> None:
        if self.generating:
            self.generator.stop([self.job])  # only this tab's answer: Compare's go on
            self.status.setText("Stopping…")

    def clear(self) -> None:
        self.stop()
        self.messages = []
        self._render()

    def last_answer(self) -> str:
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "assistant"), "")

    def copy_answer(self) -> None:
        QGuiApplication.clipboard().setText(self.last_answer())
        self.status.setText("Copied the last answer.")

    def _piece(self, job: int, text: str) -> None:
        if job == self.job:
            self.messages[-1]["content"] += text
            self._render()

    def _loading(self, job: int, text: str) -> None:
        if job == self.job:
            self.status.setText(text or "Generating…")

    def _done(self, job: int, info: dict) -> None:
        if job != self.job:
            return
        self.job = None
        rate = info.get("pieces", 0) / info["seconds"] if info.get("seconds") else 0
        self.status.setText(("Stopped" if info.get("stopped") else "Done")
                            + f" · {info.get('pieces', 0)} tokens in {info.get('seconds', 0):.1f} s ({rate:.1f} tok/s)"
                            + (" · diffusion sampler" if info.get("kind") == "diffusion" else ""))
        self._render()
        self._update_buttons()
        self.answered.emit(self.last_answer())

    def _failed(self, job: int, message: str) -> None:
        if job != self.job:
            return
        self.job = None
        if self.messages and self.messages[-1]["role"] == "assistant" and not self.messages[-1]["content"]:
            self.messages = self.messages[:-2]  # the turn did not happen: give the question back
        self.status.setText(message)
        self._render()
        self._update_buttons()

    def _render(self) -> None:
        self.transcript.setHtml(transcript_html(self.messages, self.generating))
        bar = self.transcript.verticalScrollBar()
        bar.setValue(bar.maximum())

    def _update_buttons(self) -> None:
        self.send_button.setEnabled(not self.generating)
        self.stop_button.setEnabled(self.generating)
        self.copy_button.setEnabled(bool(self.last_answer()))

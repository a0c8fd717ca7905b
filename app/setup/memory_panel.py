"""The Setup tab's memory line: trainer_core's estimate against the memory available, with one-click fixes.

    panel.show_estimate(info, config, longest)   info: ModelInfo; longest: the longest tokenised example
    panel.fixRequested(list)                     `--set` assignments of the fix clicked (the pane applies them)
    panel.blocker()                              over the limit: why Start is held back (the pane's start_blocker)
    panel.startAnywayRequested()                 "Start anyway" clicked: start with these settings (`--force`)

The estimate is trainer_core.training.memory's (the same one `finetune train --dry-run` prints and the
pre-start check uses); over the limit the fixes it suggests (smaller batch + accumulation, gradient
checkpointing, shorter max length, smaller GRPO group, LoRA) appear as buttons with their new estimate,
one under the other so the panel stays narrow (the Setup tab fits a 1280-pixel-wide window), and below
them "Start anyway": the estimate can be pessimistic, or the user may accept swapping. Start itself is held
back while the estimate is over (the run's own pre-start check would refuse it after loading the model).
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget

from trainer_core.models.loading import should_dequantize
from trainer_core.training import memory

MAX_FIXES = 4


def model_shape(info, config) -> memory.ModelShape:
    """The estimate's view of the model as this config will train it (a quantized base dequantized or not)."""
    full = config.resolved_fine_tune_type == "full"
    return memory.ModelShape.from_info(info, dequantized=should_dequantize(config.quantized_base, full,
                                                                           info.num_parameters))


def checkpointing_recommended(info, config, longest: int | None) -> tuple[bool, str]:
    """The recommended gradient_checkpointing (memory.checkpointing_pays, the CLI's rule too) and, when it is
    recommended, a note saying why (shown under "Save memory")."""
    pays, without, with_it = memory.checkpointing_pays(model_shape(info, config), config, longest)
    gb = memory.gigabytes
    return pays, (f"Recommended for rows this long: memory ≈ {gb(with_it)} with it, {gb(without)} without "
                  "(about a third slower)." if pays else "")


class MemoryPanel(QWidget):
    fixRequested = Signal(list)
    startAnywayRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.label = QLabel("")
        self.label.setObjectName("memory")
        self.label.setWordWrap(True)
        self.fix_buttons: list[QPushButton] = []
        self.fix_list = QVBoxLayout()
        self.fix_list.setContentsMargins(0, 0, 0, 0)
        self.fix_list.setSpacing(4)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label)
        layout.addLayout(self.fix_list)
        self.start_anyway = QPushButton("Start anyway")
        self.start_anyway.setToolTip("Start with these settings even though the estimate is above what is "
                                     "available: the run may swap heavily or be killed (finetune train --force)")
        self.start_anyway.clicked.connect(self.startAnywayRequested)
        self.start_anyway.hide()
        layout.addWidget(self.start_anyway, 0, Qt.AlignLeft)
        self.estimate: memory.MemoryEstimate | None = None
        self.over = ""  # over the limit: "X GB of Y GB", else ""

    def text(self) -> str:
        return self.label.text()

    def blocker(self) -> str | None:
        """Why Start waits while the estimate is over the limit, or None."""
        return (f"Estimated peak memory {self.over} available: choose a fix under the memory estimate, or "
                "Start anyway." if self.over else None)

    def waiting(self) -> None:
        self.estimate, self.over = None, ""
        self.start_anyway.hide()
        self._set("Memory estimate: waiting for the model and valid settings.", warning=False)
        self._show_fixes([])

    def show_estimate(self, info, config, longest: int | None) -> None:
        shape = model_shape(info, config)
        est = memory.estimate(shape, config, longest)
        self.estimate = est
        available = memory.available_memory()
        gb = memory.gigabytes
        over = bool(available) and est.peak > available
        self.over = f"{gb(est.peak)} is more than the {gb(available)}" if over else ""
        self.start_anyway.setVisible(over)
        text = f"Memory ≈ {gb(est.peak)}" + (f" of {gb(available)} available" if available else "")
        if longest is None:  # no tokenised lengths (unreadable data, pairs, prompts): the worst case is priced
            text += f" (rows of up to {config.max_seq_length:,} tokens)"
        if over:
            text = f"⚠ {text}: more than this machine can give the run. One click lowers it:"
        elif available and est.peak > 0.75 * available:
            text += " — tight: other apps may be swapped out."
        else:
            text += "  ✓"
        self._set(text, warning=over)
        assumed = ([f"The dataset's longest row is not known here, so every row is priced at max_seq_length "
                    f"({config.max_seq_length:,} tokens)."] if longest is None else [])
        self.label.setToolTip("\n".join(assumed + est.lines()))
        self._show_fixes(memory.fixes(shape, config, longest)[:MAX_FIXES] if over else [])

    def _set(self, text: str, warning: bool) -> None:
        self.label.setText(text)
        self.label.setProperty("level", "warning" if warning else "")
        self.label.style().unpolish(self.label)
        self.label.style().polish(self.label)

    def _show_fixes(self, fixes: list[memory.Fix]) -> None:
        for button in self.fix_buttons:
            self.fix_list.removeWidget(button)
            button.deleteLater()
        self.fix_buttons = []
        for fix in fixes:
            button = QPushButton(f"{fix.label} → {memory.gigabytes(fix.peak)}")
            button.setToolTip("Sets " + ", ".join(fix.assignments))
            button.clicked.connect(lambda _=False, a=list(fix.assignments): self.fixRequested.emit(a))
            self.fix_list.addWidget(button, 0, Qt.AlignLeft)
            self.fix_buttons.append(button)

"""Recommended hyper-parameters in the Setup form (trainer_core.config.recommend, the CLI's too).

`Recommendations.update(situation)` puts the recommended values into the form whenever the
situation (method, fine-tune type, model size, dataset size, batch) changes, except into fields the
user edited: a field counts as edited once its value differs from what was last put there. Edited
fields keep their value and `reset_label` offers "reset to recommended". A loaded preset or
config.toml is the user's own (`pin()`): nothing is replaced until `follow()`.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QLabel

from app.common.form import Form, format_float
from trainer_core.config.recommend import recommended

SHORT = {"learning_rate": "learning rate", "warmup_steps": "warmup", "epochs": "epochs", "max_steps": "max steps",
         "grpo.rewards": "rewards", "grpo.reward_weights": "reward weights",
         "gradient_checkpointing": "save memory"}


def shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, list):
        return ", ".join(shown(v) for v in value) or "—"
    return str(value)


class Recommendations(QObject):
    applied = Signal()  # the form's values changed (BoundField.set_value emits nothing)

    def __init__(self, form: Form, parent=None):
        super().__init__(parent)
        self.form = form
        self.following = False
        self.put: dict[str, object] = {}  # field -> the value last put there by a recommendation
        self.values: dict[str, object] = {}  # the current recommendation
        self._situation = None
        self.reset_label = QLabel("")
        self.reset_label.setObjectName("secondary")
        self.reset_label.setWordWrap(True)
        self.reset_label.linkActivated.connect(lambda _: self.reset())
        self.reset_label.setVisible(False)

    def follow(self) -> None:
        """Fill untouched fields with recommendations from now on (the window's first config)."""
        self.following = True
        self.put = {name: self._value(name) for name in SHORT if name in self.form.fields}
        self._situation = None

    def pin(self) -> None:
        """Every current value is the user's (a preset was loaded)."""
        self.put = {}
        self._situation = None

    def _value(self, name: str):
        try:
            return self.form[name].value()
        except ValueError:
            return None

    def edited(self, name: str) -> bool:
        return name not in self.put or self._value(name) != self.put[name]

    def update(self, method: str, fine_tune_type: str, num_parameters, train_examples, batch_size: int,
               accumulation: int, records=None, extra: dict | None = None) -> bool:
        """Apply the recommendation for this situation if it changed; True if a field changed. `extra`: values
        recommended from what only the window knows here (gradient_checkpointing, from the memory estimate)."""
        extra = extra or {}
        situation = (method, fine_tune_type, num_parameters, train_examples, batch_size, accumulation,
                     len(records or []), tuple(sorted(extra.items())))
        if situation == self._situation:
            return False
        self._situation = situation
        self.values = recommended(method, fine_tune_type, num_parameters, train_examples, max(1, batch_size),
                                  max(1, accumulation), records) | extra
        changed = False
        if self.following:
            for name, value in self.values.items():
                if name not in self.form.fields or self.edited(name):
                    continue
                if self._value(name) != value:
                    self.form[name].set_value(value)
                    changed = True
                self.put[name] = value
        self._show_differences()
        if changed:
            self.applied.emit()
        return changed

    def differences(self) -> dict[str, object]:
        """Recommended values of the fields whose value differs from them."""
        return {n: v for n, v in self.values.items() if n in self.form.fields and self._value(n) != v}

    def _show_differences(self) -> None:
        different = self.differences()
        self.reset_label.setVisible(bool(different))
        self.reset_label.setText("")
        if different:
            items = " · ".join(f"{SHORT.get(n, n)} {self._shown(n, v)}" for n, v in different.items())
            self.reset_label.setText(f"Recommended here: {items} — <a href='reset'>reset to recommended</a>")

    def _shown(self, name: str, value) -> str:
        """`value` as the field shows it: a spin box's special text (max steps 0 is "use epochs")."""
        editor = self.form[name].editor
        special = getattr(editor, "specialValueText", lambda: "")()
        if special and not isinstance(value, bool) and value == editor.minimum():
            return f"“{special}”"
        return shown(value)

    def refresh(self) -> None:
        """A field changed: update the reset line."""
        self._show_differences()

    def reset(self) -> None:
        """Put every recommended value into the form (the user's edits included)."""
        for name, value in self.values.items():
            if name in self.form.fields:
                self.form[name].set_value(value)
                self.put[name] = value
        self.following = True
        self._show_differences()
        self.applied.emit()

"""Widgets bound to RunConfig fields, with inline validation messages.

Each `BoundField` edits one dotted RunConfig field ("learning_rate",
"lora.rank") through one editor widget and owns a message label shown under
it. A `Form` collects the fields of the Setup pane:

    form.load(config)                 # widgets <- config
    parse_errors = form.apply(config) # config <- widgets; {field: message} for unreadable text
    form.show_problems(problems)      # red field + RunConfig's own message next to it

Messages come verbatim from `RunConfig.problems()`, so GUI and CLI say the same thing.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QColor, QPalette, QValidator
from PySide6.QtWidgets import (QCheckBox, QComboBox, QHBoxLayout, QLabel, QLineEdit, QSpinBox, QVBoxLayout,
                               QWidget)


def get_field(config, name: str) -> Any:
    target = config
    for part in name.split("."):
        target = getattr(target, part)
    return target


def set_field(config, name: str, value: Any) -> None:
    *parents, leaf = name.split(".")
    target = config
    for part in parents:
        target = getattr(target, part)
    setattr(target, leaf, value)


def format_float(value: float) -> str:
    """Short text for a float field: 0.0002 -> '2e-4', 0.1 -> '0.1', 16.0 -> '16'."""
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    if abs(value) < 1e-3 or abs(value) >= 1e6:
        mantissa, exponent = f"{value:.6e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:.6g}"


NUMBER_WIDTH = 150  # numeric editors stay compact instead of filling their grid cell


INVALID_TINT = QColor("#e5484d")


def invalid_palette(widget: QWidget) -> QPalette:
    """The widget's palette with its field background tinted red (works in light and dark)."""
    palette = QPalette(widget.palette())
    for group in (QPalette.Active, QPalette.Inactive):
        base = palette.color(group, QPalette.Base)
        tint = QColor.fromRgbF(*(0.75 * b + 0.25 * t for b, t in zip(base.getRgbF()[:3], INVALID_TINT.getRgbF()[:3])))
        palette.setColor(group, QPalette.Base, tint)
        palette.setColor(group, QPalette.Button, tint)
    return palette


class BoundField(QObject):
    """One RunConfig field, its editor and its inline message."""

    changed = Signal()
    linkActivated = Signal(str)  # a link in the note (e.g. "hold out 5%")

    def __init__(self, name: str, editor: QWidget, getter: Callable[[], Any], setter: Callable[[Any], None],
                 signal, tooltip: str = ""):
        super().__init__(editor)
        self.name, self.editor = name, editor
        self._get, self._set = getter, setter
        self.message = QLabel()
        self.message.setObjectName("fieldMessage")
        self.message.setWordWrap(True)
        self.message.setVisible(False)
        self.message.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.message.linkActivated.connect(self.linkActivated)
        self.note = ""  # shown in amber when the field has no problem: a warning that does not block Start
        self.typing_note = ""  # why the text typed into a spin box was not taken (int_field)
        editor.setObjectName(f"field:{name}")
        if tooltip:
            editor.setToolTip(tooltip)
        signal.connect(lambda *_: self.changed.emit())

    def value(self) -> Any:
        """The editor's value; ValueError with a user message when the text is unreadable."""
        return self._get()

    def set_value(self, value: Any) -> None:
        blocked = self.editor.blockSignals(True)
        try:
            self._set(value)
        finally:
            self.editor.blockSignals(blocked)

    def show_problem(self, message: str | None) -> None:
        """Tint the field red and show `message` under it (None clears both and shows the note, if any)."""
        invalid = bool(message)
        if invalid != bool(self.editor.property("invalid")):
            self.editor.setProperty("invalid", invalid)
            self.editor.setPalette(invalid_palette(self.editor) if invalid else QPalette())
        text = message or self.typing_note or self.note
        level = "" if invalid or not text else "note"
        if self.message.property("level") != level:
            self.message.setProperty("level", level)
            self.message.style().unpolish(self.message)
            self.message.style().polish(self.message)
        self.message.setText(text or "")
        self.message.setVisible(bool(text))

    def set_note(self, note: str) -> None:
        """A warning under the field (rich text allowed) shown while it has no problem; "" removes it."""
        self.note = note
        if not self.editor.property("invalid"):
            self.show_problem(None)

    def cell(self) -> QWidget:
        """The editor with its message below, for a grid cell."""
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.editor)
        layout.addWidget(self.message)
        return box


class SpinBox(QSpinBox):
    """A QSpinBox that reports the text its range refuses (Qt drops such a keystroke without a word)."""
    refused = Signal(str)

    def validate(self, text: str, pos: int):
        result = super().validate(text, pos)
        if (result[0] if isinstance(result, tuple) else result) == QValidator.Invalid:
            self.refused.emit(text)
        return result


def int_field(name: str, minimum: int, maximum: int, *, special: str = "", suffix: str = "",
              tooltip: str = "") -> BoundField:
    """A spin box; `special` is shown for the minimum (e.g. 'all' for -1)."""
    box = SpinBox()
    box.setRange(minimum, maximum)
    box.setAccelerated(True)
    box.setKeyboardTracking(True)
    if special:
        box.setSpecialValueText(special)
    if suffix:
        box.setSuffix(suffix)
    box.setMinimumWidth(80)
    box.setMaximumWidth(NUMBER_WIDTH)
    field = BoundField(name, box, box.value, lambda v: box.setValue(int(v)), box.valueChanged, tooltip)
    box.lineEdit().textEdited.connect(lambda _: _check_typed(field, box))
    box.editingFinished.connect(lambda: _check_typed(field, box, finished=True))
    box.refused.connect(lambda text: _check_typed(field, box, typed=text))
    return field


def _check_typed(field: BoundField, box: QSpinBox, finished: bool = False, typed: str | None = None) -> None:
    """Say why typed text is not taken (`typed`: a keystroke the range refused, e.g. past the maximum),
    since Qt drops it or puts the previous value back without a word."""
    if typed is not None or not finished:
        box.setProperty("typed", box.lineEdit().text() if typed is None else typed)
    typed = str(box.property("typed") or box.text())
    number = typed.removeprefix(box.prefix()).removesuffix(box.suffix()).strip()
    ok = QSpinBox.validate(box, typed, 0)[0] == QValidator.Acceptable or number == box.specialValueText()
    low = box.specialValueText() or f"{box.minimum():,}"
    reason = "" if ok else (f"{number or 'An empty field'} is not allowed: {field.name} is a whole number from "
                            f"{low} to {box.maximum():,}" + (f" (kept {box.text()})." if finished else "."))
    if finished:
        box.setProperty("typed", None)
    field.typing_note = reason
    field.show_problem(field.message.text() if field.editor.property("invalid") else None)


def float_field(name: str, *, placeholder: str = "", tooltip: str = "") -> BoundField:
    """A text field for a float (accepts 2e-4, 0.0002, 1E-3)."""
    edit = QLineEdit()
    edit.setPlaceholderText(placeholder)
    edit.setMinimumWidth(80)
    edit.setMaximumWidth(NUMBER_WIDTH)

    def get() -> float:
        text = edit.text().strip()
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{name} must be a number, e.g. {placeholder or '0.1'} (got {text!r}).") from None

    return BoundField(name, edit, get, lambda v: edit.setText(format_float(float(v))), edit.textChanged, tooltip)


def choice_field(name: str, choices: list[tuple[Any, str]], *, tooltip: str = "") -> BoundField:
    """A combo box over (value, label) pairs."""
    combo = QComboBox()
    for value, label in choices:
        combo.addItem(label, value)

    def set_(value) -> None:
        index = combo.findData(value)
        if index < 0:  # a value from a preset that the list lacks: show it rather than hide it
            combo.addItem(str(value), value)
            index = combo.count() - 1
        combo.setCurrentIndex(index)

    return BoundField(name, combo, combo.currentData, set_, combo.currentIndexChanged, tooltip)


def bool_field(name: str, text: str, *, tooltip: str = "") -> BoundField:
    check = QCheckBox(text)
    return BoundField(name, check, check.isChecked, lambda v: check.setChecked(bool(v)), check.toggled, tooltip)


def list_field(name: str, *, placeholder: str = "", tooltip: str = "", kind=str) -> BoundField:
    """Comma-separated values (e.g. LoRA targets, GRPO reward names)."""
    edit = QLineEdit()
    edit.setPlaceholderText(placeholder)

    def get() -> list:
        parts = [p.strip() for p in edit.text().split(",") if p.strip()]
        try:
            return [kind(p) for p in parts]
        except ValueError:
            raise ValueError(f"{name} must be a comma-separated list of numbers.") from None

    return BoundField(name, edit, get, lambda v: edit.setText(", ".join(str(x) for x in v)),
                      edit.textChanged, tooltip)


def text_field(name: str, *, placeholder: str = "", tooltip: str = "") -> BoundField:
    edit = QLineEdit()
    edit.setPlaceholderText(placeholder)
    return BoundField(name, edit, lambda: edit.text().strip(), lambda v: edit.setText(str(v)),
                      edit.textChanged, tooltip)


class Form(QObject):
    """All bound fields of the Setup pane; `changed` fires on any edit."""

    changed = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.fields: dict[str, BoundField] = {}

    def add(self, field: BoundField) -> BoundField:
        self.fields[field.name] = field
        field.changed.connect(self.changed)
        return field

    def __getitem__(self, name: str) -> BoundField:
        return self.fields[name]

    def load(self, config) -> None:
        for name, field in self.fields.items():
            field.set_value(get_field(config, name))

    def apply(self, config) -> dict[str, str]:
        """Write every readable field into `config`; return {field: message} for the rest."""
        errors = {}
        for name, field in self.fields.items():
            try:
                set_field(config, name, field.value())
            except ValueError as e:
                errors[name] = str(e)
        return errors

    def show_problems(self, problems: dict[str, str]) -> dict[str, str]:
        """Mark fields; return the problems that have no field on this form."""
        for name, field in self.fields.items():
            field.show_problem(problems.get(name))
        return {k: v for k, v in problems.items() if k not in self.fields}


def row(*widgets: QWidget | str, stretch: bool = True) -> QHBoxLayout:
    """A horizontal layout of widgets and label texts."""
    layout = QHBoxLayout()
    layout.setSpacing(6)
    for w in widgets:
        layout.addWidget(QLabel(w) if isinstance(w, str) else w)
    if stretch:
        layout.addStretch(1)
    return layout

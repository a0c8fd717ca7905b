"""The status line under the window: where the run is, how fast, how long to go.

    step 120/480 · epoch 0.25 · 1,840 tok/s · ETA 3:12 · elapsed 1:05 · peak 1.3 GB · lr 1.9e-4

`RunStatus` turns the stream of train records into that line (speed and ETA
from the wall-clock time of recent steps, so evals and checkpoints count);
`StatusLine` is the QStatusBar content: the text plus a progress bar.
"""

from __future__ import annotations

import math
import time
from collections import deque

from PySide6.QtWidgets import QLabel, QProgressBar

WINDOW = 30  # recent steps used for speed and ETA


def duration(seconds: float) -> str:
    """3:12, 1:02:03; '—' when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "—"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def short_float(value: float) -> str:
    """1.9e-4 style for learning rates."""
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def format_status(step: int, total: int, epoch: float | None, tokens_per_sec: float | None, eta: float | None,
                  elapsed: float | None, peak_gb: float | None, learning_rate: float | None) -> str:
    parts = [f"step {step:,}/{total:,}"]
    if epoch is not None:
        parts.append(f"epoch {epoch:.2f}")
    if tokens_per_sec is not None:
        parts.append(f"{tokens_per_sec:,.0f} tok/s")
    parts.append(f"ETA {duration(eta)}")
    if elapsed is not None:
        parts.append(f"elapsed {duration(elapsed)}")
    if peak_gb is not None:
        parts.append(f"peak {peak_gb:.1f} GB" if peak_gb >= 0.1 else f"peak {peak_gb * 1000:.0f} MB")
    if learning_rate is not None:
        parts.append(f"lr {short_float(learning_rate)}")
    return " · ".join(parts)


class RunStatus:
    """Accumulates train records of one run; `text()` is the status line."""

    def __init__(self, total_steps: int = 0, start_step: int = 0):
        self.total_steps = total_steps
        self.start_step = start_step  # a resumed run starts here: speed comes from the steps done since
        self.started = time.time()
        self.last: dict = {}
        self.recent: deque[tuple[float, int, float]] = deque(maxlen=WINDOW)  # (time, step, tokens/s)
        self.inside: dict = {}  # the latest progress inside the current step (a GRPO rollout, an evaluation)

    def add(self, record: dict) -> None:
        self.last, self.inside = record, {}
        self.recent.append((float(record.get("time", time.time())), int(record["step"]),
                            float(record.get("tokens_per_sec") or 0.0)))

    def seconds_per_step(self) -> float | None:
        if len(self.recent) >= 2:
            (t0, s0, _), (t1, s1, _) = self.recent[0], self.recent[-1]
            if s1 > s0:
                return (t1 - t0) / (s1 - s0)
        if self.recent and self.recent[-1][1] > self.start_step:
            return (self.recent[-1][0] - self.started) / (self.recent[-1][1] - self.start_step)
        return None

    def step_progress(self, info: dict) -> None:
        self.inside = info

    def text(self) -> str:
        inside = self.inside
        if inside:  # the first movement of a long step shows within a second
            unit = "tokens" if inside.get("phase") == "rollout" else "batches"
            return (f"step {inside['step']:,}/{self.total_steps:,} · {inside['phase']} {inside['done']:,}/"
                    f"{inside['total']:,} {unit} · {inside['per_sec']:,.1f}/s")
        if not self.last:
            return f"step 0/{self.total_steps:,} · starting…"
        step = int(self.last["step"])
        per_step = self.seconds_per_step()
        eta = per_step * max(0, self.total_steps - step) if per_step is not None else None
        speed = sum(r[2] for r in self.recent) / len(self.recent)
        return format_status(step, self.total_steps, self.last.get("epoch"), speed, eta, time.time() - self.started,
                             self.last.get("peak_memory_gb"), self.last.get("learning_rate"))


class StatusLine:
    """Text + progress bar placed in a QStatusBar."""

    def __init__(self, status_bar):
        self.label = QLabel("Ready.")
        self.label.setObjectName("statusText")
        self.progress = QProgressBar()
        self.progress.setFixedWidth(220)
        self.progress.setTextVisible(False)
        self.progress.setVisible(False)
        status_bar.addWidget(self.label, 1)
        status_bar.addPermanentWidget(self.progress)

    def show_text(self, text: str, level: str = "") -> None:
        self.label.setText(text)
        self.label.setProperty("level", level)
        self.label.style().unpolish(self.label)
        self.label.style().polish(self.label)

    def show_progress(self, step: int, total: int) -> None:
        self.progress.setVisible(True)
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(min(step, max(1, total)))

    def busy(self) -> None:
        """Indeterminate progress (model loading, tokenising)."""
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)

    def hide_progress(self) -> None:
        self.progress.setVisible(False)

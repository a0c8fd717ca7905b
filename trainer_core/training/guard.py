"""Inside a long step: progress, stop requests and the memory limit, between a step's own items.

A GRPO rollout samples hundreds of tokens for every row before its step can start, and a large evaluation
runs many batches; without this, such a step is silent, deaf to Stop and blind to memory for minutes. The
loop gives the method (and its Evaluation) a `StepGuard`; long work calls `guard.progress(phase, done,
total)` between its items (the sampler: between generated tokens). Each call

- raises `StepInterrupted("user")` when a stop was requested (Stop, SIGTERM; single-process runs only:
  ranks of a data-parallel run stop together at a step boundary, never in the middle of a collective);
- raises `StepInterrupted("out_of_memory")` when MLX's active memory passes the limit;
- reports `on_progress({"step", "phase", "done", "total", "per_sec"})` to the callbacks when a phase
  begins, when it is done and at most every PROGRESS_EVERY seconds between (the CLI bar and the GUI status show it; metrics.jsonl does not record it).

The loop discards the interrupted step (its data position goes back, the last checkpoint stays the resume
point), and also checks the step's peak (`check_peak`) after every step. The limit is `max_memory_gb`, or
with 0 `DEFAULT_SHARE` of what memory.available_memory() says training may use. A single allocation
that jumps past what the machine has is not caught here (the kernel may kill the process first); the
pre-start estimate (memory.py) is the guard against that.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

import mlx.core as mx

from trainer_core.training.memory import available_memory

PROGRESS_EVERY = 0.5  # seconds between on_progress reports
DEFAULT_SHARE = 0.85  # of the available memory, when max_memory_gb = 0
ADVICE = ("a smaller batch_size with more gradient_accumulation_steps, gradient_checkpointing = true, a shorter "
          "max_seq_length, or for GRPO a smaller grpo.group_size, grpo.max_completion_length or "
          "grpo.micro_batch_tokens")


class StepInterrupted(Exception):
    """A step given up part-way: reason "user" (a stop request) or "out_of_memory" (message says more)."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason, self.message = reason, message


def memory_limit(max_memory_gb: float) -> int:
    """The run's limit in bytes: max_memory_gb, else DEFAULT_SHARE of the available memory (0: unknown, none).
    Off macOS "available" is what is still free, so what MLX already holds (the loaded model) is added."""
    if max_memory_gb:
        return int(max_memory_gb * 1e9)
    available = available_memory()
    held = mx.get_active_memory() if sys.platform != "darwin" else 0
    return int(DEFAULT_SHARE * (available + held)) if available else 0


@contextmanager
def mlx_memory_limit(limit: int):
    """While a run trains, MLX's own memory limit (`mx.set_memory_limit`) is the run's limit (never raised above
    MLX's; restored afterwards: the GUI's chat shares the process).

    Why it helps: MLX's evaluation runs ahead of the computation, up to 10 operations in flight, each holding
    its output buffer (the [chunk, vocab] logits, a chunk of attention scores), so the peak is the live set
    plus that run-ahead. MLX's limit is where it stops running ahead: past it, eval waits for operations to
    finish (and free their buffers) before starting more. Set to max_memory_gb, a step whose live set fits
    under the limit but whose run-ahead would pass it is slowed down instead of stopped by `check_peak`
    (measured, the fused head's backward, 4096 tokens x 8192 vocab: 91 MB run-ahead peak, 28 MB held to a
    limit just above the live set). Far below the limit it changes nothing: MLX's default (on the CPU about the
    machine's memory) is above it anyway and run-ahead keeps the CPU busy. A limit of 0 (unknown) leaves MLX's.
    Not a brake to hold a GPU just above the step's need: there every evaluation past it waits for the GPU and the
    pipeline drains (measured on an H100: 51k instead of 65k tokens/s); the size of MLX's CUDA graphs is
    (models/cuda_graphs.py)."""
    previous = mx.get_memory_limit()
    if limit:
        mx.set_memory_limit(min(int(limit), previous))
    try:
        yield
    finally:
        if limit:
            mx.set_memory_limit(previous)


def out_of_memory_message(peak: float, limit: int, where: str) -> str:
    return (f"Out of memory {where}: peak {peak / 1e9:.2f} GB, limit {limit / 1e9:.2f} GB (max_memory_gb). "
            f"The last checkpoint is the resume point. Try {ADVICE}; or raise max_memory_gb if the machine has "
            "room.")


class StepGuard:
    """See the module doc. `should_stop()`: whether a stop was requested; `limit`: bytes (0 = none)."""

    def __init__(self, callbacks=None, should_stop=lambda: False, limit: int = 0, interruptible: bool = True):
        self.callbacks, self.should_stop, self.limit = callbacks, should_stop, limit
        self.interruptible = interruptible
        self.step = 0
        self._phase, self._began, self._reported, self._done = None, 0.0, 0.0, 0

    def progress(self, phase: str, done: int, total: int) -> None:
        """`done` of `total` items of `phase` ("rollout": tokens, "evaluation": batches) are done."""
        now = time.monotonic()
        first = phase != self._phase or done < self._done  # a new phase: reported at once
        if first:
            self._phase, self._began = phase, now
        self._done = done
        if self.interruptible and self.should_stop():
            raise StepInterrupted("user")
        active = mx.get_active_memory()
        if self.limit and active > self.limit:
            raise StepInterrupted("out_of_memory", out_of_memory_message(
                active, self.limit, f"during the {phase} of step {self.step + 1}"))
        if self.callbacks is not None and (first or now - self._reported >= PROGRESS_EVERY or done >= total):
            self._reported = now
            elapsed = now - self._began
            self.callbacks.on_progress({"step": self.step + 1, "phase": phase, "done": done, "total": total,
                                        "per_sec": done / elapsed if elapsed > 0 else 0.0})

    def check_peak(self, step: int) -> None:
        """After step `step`: raise StepInterrupted("out_of_memory") if its peak passed the limit."""
        peak = mx.get_peak_memory()
        if self.limit and peak > self.limit:
            raise StepInterrupted("out_of_memory", out_of_memory_message(peak, self.limit, f"at step {step}"))


NO_GUARD = StepGuard(interruptible=False)  # what a method has outside a run (tests, the CLI's sampling)

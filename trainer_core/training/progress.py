"""Terminal progress for the CLI: a tqdm bar on a terminal, plain lines when piped."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from trainer_core.training.callbacks import Callback

PIPED_PROGRESS_EVERY = 10.0  # seconds between progress lines when the output is not a terminal


class TerminalProgress(Callback):
    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.bar = None
        self.said_progress = 0.0  # when a piped run last printed a progress line

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def on_log(self, message: str) -> None:
        self._say(message)

    def on_train_begin(self, info):
        if self.interactive:
            self.bar = tqdm(total=info["total_steps"], initial=info["step"], unit="step", file=self.stream,
                            dynamic_ncols=True)

    def on_step_end(self, m):
        summary = (f"loss {m['loss']:.4f} · lr {m['learning_rate']:.2e} · {m['tokens_per_sec']:,.0f} tok/s"
                   f" · peak {m['peak_memory_gb']:.2f} GB")
        if self.bar is not None:
            self.bar.n = m["step"]
            self.bar.set_postfix_str(summary, refresh=True)
        else:
            self._say(f"step {m['step']} · epoch {m['epoch']:.2f} · {summary}")

    def on_progress(self, info):
        """Inside a long step (a GRPO rollout, an evaluation): items done / total and their rate; piped, a
        line every PIPED_PROGRESS_EVERY seconds at most."""
        unit = "tokens" if info["phase"] == "rollout" else "batches"
        text = f"step {info['step']} {info['phase']}: {info['done']:,}/{info['total']:,} {unit} · {info['per_sec']:,.1f}/s"
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)
        elif time.monotonic() - self.said_progress >= PIPED_PROGRESS_EVERY:
            self.said_progress = time.monotonic()
            self._say(text)

    def on_evaluate(self, m):
        self._say(f"eval step {m['step']}: loss {m['loss']:.4f}")

    def on_save(self, info):
        self._say(f"saved checkpoint {info['path']}")

    def on_event(self, info):
        if info.get("event") == "bad_step":
            self._say(f"step {info['step']}: non-finite loss/gradient, update skipped")
        elif info.get("event") == "samples":
            for sample in info.get("samples") or ():
                line = f"  sample at step {info['step']}: {sample.get('prompt')!r} -> {sample.get('answer')!r}"
                self._say(line if len(line) <= 160 else line[:159] + "…")

    def on_train_end(self, info):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        where = f" → {info['final_dir']}" if info.get("final_dir") else ""
        self._say(f"{info['status']} at step {info['step']}/{info['total_steps']}{where}")

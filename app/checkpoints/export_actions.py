"""The Checkpoints tab's Export ▾ and Push to Hub: what the selected checkpoint can be exported as (greyed out
otherwise, checked on the task pool), the export or upload itself on the task pool, its progress bar and message.

A mixin of CheckpointsPane (app/checkpoints/pane.py), kept apart so that each file holds one concern; it uses the
pane's `current()`, `progress`, `message`, `export_menu`, `exported`, `_update_buttons()`, `_choices_task`,
`_export_task`, `_export_summary` and the replaceable `choose_export_folder` / `ask_push` (tests answer directly).
"""

from __future__ import annotations

import json
from pathlib import Path

from app import settings
from app.checkpoints.export_menu import DEFAULT_GGUF_TYPE
from app.common.tasks import run_task


def _has_adapters(checkpoint: Path) -> bool:
    """False for a full fine-tune (adapter_config.json says so; a small file, read here)."""
    try:
        return json.loads((checkpoint / "adapter_config.json").read_text(encoding="utf-8")).get("fine_tune_type") != "full"
    except (OSError, ValueError, AttributeError):
        return True


class ExportActions:
    """Export ▾ and Push for CheckpointsPane (module doc)."""

    def _check_export_choices(self) -> None:
        """Grey out in Export ▾ what the selected checkpoint cannot be exported as (metadata only, off the GUI thread)."""
        checkpoint = self.current()
        if checkpoint is None:
            self._choices_task.cancel()
            return

        def job(task):
            from trainer_core.export.choices import unavailable
            return unavailable(checkpoint)

        self._choices_task.start(job, lambda found: self.export_menu.set_unavailable(*found),
                                 lambda message: self.export_menu.set_unavailable({}, {}))

    def export(self, fmt: str, out: Path | None = None, *, gguf_type: str | None = None,
               quantize: int | None = None) -> bool:
        """Export the current checkpoint as `fmt` (a GGUF as `gguf_type`, default F16, Q8_0 for the apps;
        fused as mlx-lm `quantize` bits) into a new folder (asked for unless given), off the GUI thread."""
        checkpoint = self.current()
        if checkpoint is None or self._export_task is not None:
            return False
        if fmt != "lmstudio":  # LM Studio's own models folder unless a folder is given
            out = out or self.choose_export_folder(checkpoint, fmt)
            if not out:
                return False
        gguf_type = gguf_type or DEFAULT_GGUF_TYPE.get(fmt, "f16")
        from trainer_core.export.exporter import export

        def job(task):
            return str(export(checkpoint, fmt, out, gguf_type=gguf_type, quantize=quantize,
                              progress=lambda f, m: task.report(f"{f:.3f}|{m}")))
        return self._start_job(job, f"Exporting {checkpoint.name} as {fmt}…")

    def push(self, repo_id: str | None = None, *, fmt: str = "adapter", private: bool = True) -> bool:
        """Upload the current checkpoint to the Hugging Face Hub with a model card (repo, format and visibility
        asked for unless given), off the GUI thread; progress and the repo URL in the message line."""
        checkpoint = self.current()
        if checkpoint is None or self._export_task is not None:
            return False
        if repo_id is None:
            answer = self.ask_push(checkpoint, _has_adapters(checkpoint))
            if answer is None:
                return False
            repo_id, fmt, private = answer
        from trainer_core.export.push import push

        def job(task):
            return push(checkpoint, repo_id, fmt=fmt, private=private,
                        progress=lambda f, m: task.report(f"{f:.3f}|{m}"))
        return self._start_job(job, f"Pushing {checkpoint.name} to {repo_id}…")

    def _start_job(self, job, message: str) -> bool:
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.message.setText(message)
        self._export_task = run_task(job, self._export_done, self._export_failed, self._export_progress)
        self.destroyed.connect(self._export_task.cancel)
        self._update_buttons()
        return True

    def _export_progress(self, text: str) -> None:
        fraction, message = text.split("|", 1)
        self.progress.setValue(int(float(fraction) * 100))
        self.message.setText(message)
        if float(fraction) >= 1.0:  # the export's own last word (for Ollama: the create output or command)
            self._export_summary = message

    def _export_done(self, out: str) -> None:
        self._export_task = None
        self.progress.setVisible(False)
        self.message.setText(self._export_summary or f"Exported to {out}")
        self._export_summary = ""
        self._update_buttons()
        self.exported.emit(out)

    def _export_failed(self, message: str) -> None:
        self._export_task = None
        self.progress.setVisible(False)
        self.message.setText(f"Export failed: {message}")
        self._update_buttons()

    def _choose_folder(self, checkpoint: Path, fmt: str) -> Path | None:
        run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
        path = settings.ask_path(self, "save", "export-model", f"Export {checkpoint.name} as {fmt} (a new folder)",
                                 f"{run.name}-{checkpoint.name}-{fmt}")
        return Path(path) if path else None

"""Reading a run's checkpoints for the Checkpoints tab: plain files, no MLX (runs on the task pool).

`list_checkpoints(run_dir)` -> CheckpointRow per complete `checkpoints/step-*` folder, oldest first, then
`final/`: step, time, train/eval loss at that step (metrics.jsonl, else trainer_state.json), size on disk,
★ best (CheckpointManager.best: lowest eval loss; GRPO: highest eval reward), and the answers to the run's sample prompts (samples.json, else the run's
`samples` event for that step).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer_core.training.callbacks import read_metrics
from trainer_core.generation.samples import read_samples


@dataclass
class CheckpointRow:
    path: Path
    step: int
    saved: float
    train_loss: float | None
    eval_loss: float | None
    size_bytes: int
    best: bool = False
    samples: list[dict] | None = None  # what the checkpoint answered to the run's sample prompts


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def list_checkpoints(run_dir: Path) -> list[CheckpointRow]:
    """The run's complete checkpoints, oldest first, `final/` last; losses from trainer_state and metrics.jsonl."""
    from trainer_core.training.checkpoint import STATE, WEIGHTS, CheckpointManager, read_state
    run_dir = Path(run_dir)
    folders = CheckpointManager(run_dir / "checkpoints", writer=False).list()
    if (run_dir / "final" / WEIGHTS).is_file() and (run_dir / "final" / STATE).is_file():
        folders.append(run_dir / "final")
    records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    train = {int(r["step"]): r.get("loss") for r in records if r.get("type") == "train"}
    evals = {int(r["step"]): r.get("loss") for r in records if r.get("type") == "eval"}
    samples = {int(r["step"]): r.get("samples") for r in records if r.get("event") == "samples"}
    rows = []
    for folder in folders:
        try:
            state = read_state(folder)
        except (OSError, ValueError):
            continue
        step = int(state.get("step", 0))
        metrics = state.get("metrics", {})
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        rows.append(CheckpointRow(folder, step, folder.stat().st_mtime,
                                  _number(train.get(step, metrics.get("train_loss"))),
                                  _number(evals.get(step, metrics.get("eval_loss"))), size,
                                  samples=read_samples(folder) or samples.get(step)))
    best = CheckpointManager(run_dir / "checkpoints", writer=False).best()  # the core's choice (GRPO: eval reward)
    for row in rows:
        row.best = row.path == best
    return rows

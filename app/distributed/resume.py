"""Resume from the window (runs sidebar, Checkpoints tab's "Resume from here"), on as many processes as wrote the run.

    plan = resume_plan(run_dir, checkpoint, setup.distributed)   # UserError: what to set to resume it
    resume_run(window, run_dir, checkpoint)                      # in-process, or through the launcher

A run written by one process resumes on the worker thread as before. A run written by N > 1 processes
(trainer_state.json's world_size) is started again through the launcher path (DistributedRun.resume:
`finetune resume` on every rank), on the hosts and backend its rank 0 recorded in `<run>/launch.json`
(launch.record_launch), else on the Setup tab's Distributed section when that makes the same number of
processes; otherwise nothing starts and one message in the status line says what to set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trainer_core.distributed import launch
from trainer_core.training.checkpoint import CheckpointManager, read_state
from trainer_core.errors import UserError
from trainer_core.paths import settings_dir


@dataclass
class ResumePlan:
    world_size: int
    total_steps: int = 0
    hosts: list[dict] = field(default_factory=list)  # one entry per rank; empty for one process
    backend: str = ""
    source: str = ""  # where the hosts come from: "run folder" | "Setup tab"


def _state(run_dir: Path, checkpoint: Path | None) -> dict:
    checkpoint = checkpoint or CheckpointManager(run_dir / "checkpoints", writer=False).latest()
    try:
        return read_state(checkpoint) if checkpoint is not None else {}
    except (OSError, ValueError):
        return {}


def resume_plan(run_dir: Path, checkpoint: Path | None, panel) -> ResumePlan:
    """How to resume `run_dir` from `checkpoint` (None: its latest); `panel` is the Setup tab's DistributedPanel."""
    run_dir = Path(run_dir)
    state = _state(run_dir, Path(checkpoint) if checkpoint else None)
    recorded = launch.read_launch(run_dir)
    size = int(state.get("world_size") or (recorded["world_size"] if recorded and not state else 1))
    total = int(state.get("total_steps") or 0)
    if size <= 1:
        return ResumePlan(1, total)
    if recorded and recorded["world_size"] == size:
        return ResumePlan(size, total, recorded["hosts"], recorded["backend"], "run folder")
    if panel.enabled() and panel.problem() is None and panel.world_size() == size:
        return ResumePlan(size, total, panel.hosts(), panel.backend_name(), "Setup tab")
    now = ""
    if panel.enabled():
        now = f" ({panel.problem()})" if panel.problem() else f" (it now makes {panel.world_size()})"
    raise UserError(f"Can't resume {run_dir.name}: it was trained on {size} processes and its folder does not say "
                    f"on which (no {launch.LAUNCH_FILE}). Tick Distributed on the Setup tab and choose a host file and "
                    f"processes per host that make {size} processes{now}, then press Resume again.")


def resume_run(window, run_dir: Path, checkpoint: Path | None = None) -> bool:
    """Continue `run_dir` in `window` (a MainWindow) as its running run; False, with the reason shown, if it can't."""
    if window.running:
        return False
    panel = window.setup.distributed
    try:
        plan = resume_plan(run_dir, checkpoint, panel)
    except UserError as e:
        window.status.show_text(e.message, "error")
        panel.show_status(e.message)
        return False
    window._begin()
    window.training.append_log(f"Resuming {run_dir} from "
                               f"{Path(checkpoint).name if checkpoint else 'the latest checkpoint'}")
    if plan.world_size == 1:
        window.controller.start(None, resume=(str(run_dir), str(checkpoint) if checkpoint else None))
        return True
    panel.show_status(f"Resuming on {plan.world_size} processes ({plan.backend}, hosts from the {plan.source})…")
    window.training.append_log(panel.status.text())
    window.distributed.resume(Path(run_dir), Path(checkpoint) if checkpoint else None, plan.hosts, plan.backend,
                              settings_dir() / "launch", plan.total_steps)
    return True

"""Training: the one loop every method runs through, and what it is made of.

The loop (`loop`) and its collaborators (`evaluation`, `loop_state`), the compiled step (`step`),
AdamW with param groups (`optim`), LR schedules (`schedules`), token losses (`losses`), callbacks
(`callbacks`), checkpoints and resume checks (`checkpoint`, `resume_checks`), the reductions over
ranks that a step and the loop make (`collectives`) the terminal progress bar (`progress`) and the run-time estimate (`time_estimate`).
May import: `models`, `data` and the top-level contracts. Never a method, generation or export.
"""

"""The loss curve's checkpoint ◆ markers and the Checkpoints tab, linked both ways.

A click on a marker shows the plotted run in the Checkpoints tab (when it shows
another one), selects that checkpoint there and switches to the tab; selecting
a checkpoint rings its marker while the plots show the same run.
"""

from __future__ import annotations


def link_markers_to_checkpoints(tabs, training, checkpoints) -> None:
    """Connect a TrainingPane's plots and a CheckpointsPane inside the window's `tabs`."""

    def show_checkpoint(step: int) -> None:
        if training.run_dir is not None and checkpoints.run_dir != training.run_dir:
            checkpoints.set_run(training.run_dir)
        checkpoints.select_step(step)
        tabs.setCurrentWidget(checkpoints)

    def ring_marker(_path: str) -> None:
        row = checkpoints.current_row()
        same_run = row is not None and training.run_dir is not None and checkpoints.run_dir == training.run_dir
        training.plots.highlight_checkpoint(row.step if same_run else None)

    training.plots.checkpointClicked.connect(show_checkpoint)
    checkpoints.selectionChanged.connect(ring_marker)

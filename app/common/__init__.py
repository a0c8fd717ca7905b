"""What several rooms of the window share: form widgets bound to RunConfig fields (`form`), the
"Copy as CLI" line (`cli_line`), palette-following pyqtgraph widgets (`plot_style`), the thread pool
for short jobs (`tasks`), the GUI-thread garbage-collection policy (`gc_policy`) and reveal-in-Finder
(`reveal`). May import: `trainer_core` and `app.settings`; never a room or the shell.
"""

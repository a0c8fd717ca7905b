"""The Training tab and the run behind it: the worker QObject on its QThread and the Callback bridge
(`worker`), the tab (`pane`), the live plots (`plots`) and the metrics history they draw (`metrics_store`).
May import: `trainer_core`, `app.common` and `app.settings`.
"""

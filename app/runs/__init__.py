"""Run history: the runs sidebar on the left of the window (`sidebar`), every run under the runs root,
its status, best eval and overlays. May import: `trainer_core`, `app.common` and `app.settings`.
"""

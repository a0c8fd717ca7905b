"""Distributed runs from the window: the Setup tab's Distributed group and its launcher (`panel`), a
launched run seen through the same signals as the in-process worker (`run`) and Resume on as many
processes as wrote the run (`resume`). May import: `trainer_core`, `app.common`, `app.settings` and
`app.training` (the worker's signals).
"""

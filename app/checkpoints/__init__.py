"""The checkpoint browser: the Checkpoints tab (`pane`, `checkpoint_list`, `samples_view`), the loss-curve
markers linked to it (`links`), Chat (`chat_pane`), Compare (`compare_pane`) and the generation thread
both share (`generation_worker`). May import: `trainer_core`, `app.common` and `app.settings`.
"""

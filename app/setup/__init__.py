"""The Setup tab: model, dataset, method and hyperparameter groups bound to one RunConfig (`pane`),
the model picker behind the Model group (`model_picker`: this Mac's models, Hugging Face search and
download), the dataset analysis behind the Dataset group (`dataset_analysis`) and the memory estimate.
May import: `trainer_core`, `app.common`, `app.settings` and `app.distributed` (its group sits in this tab).
"""

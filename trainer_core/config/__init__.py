"""The run's configuration: one dataclass tree, the single source of truth (DESIGN.md).

`RunConfig` and its top-level fields, defaults and validation (`run`), the method sections
(`sections`) and TOML in and out (`toml_io`). A contract every layer reads, the GUI included:
May import: `trainer_core.errors` only (no MLX, no other package of ours).
"""

from trainer_core.config.run import (BEST_EVAL_METRIC, DATA_COLUMN_FIELDS, DATA_FORMATS, DATA_KINDS, DEFAULT_FINE_TUNE_TYPE,
                                     FINE_TUNE_TYPES, LONG_ROWS, METHODS,
                                     RESUMABLE_CHANGES, SCHEDULES, RunConfig, best_eval_metric)
from trainer_core.config.sections import DiffusionConfig, DPOConfig, GRPOConfig, LoraConfig, ParamGroup

__all__ = ["BEST_EVAL_METRIC", "DATA_COLUMN_FIELDS", "DATA_FORMATS", "DATA_KINDS", "LONG_ROWS", "DEFAULT_FINE_TUNE_TYPE",
           "FINE_TUNE_TYPES", "METHODS", "RESUMABLE_CHANGES",
           "SCHEDULES", "RunConfig", "best_eval_metric", "DiffusionConfig", "DPOConfig", "GRPOConfig", "LoraConfig",
           "ParamGroup"]

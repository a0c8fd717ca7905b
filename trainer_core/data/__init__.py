"""Datasets: read (jsonl/json/csv/tsv/parquet), detect the format and kind, map, validate, tokenise.

    splits = load_dataset("data/")                 # DatasetSplits(kind, train, valid, test, files)
    examples, stats = tokenize_sft(splits.train, tokenizer, splits.kind, max_seq_length=2048)

Every problem with the user's data is a `trainer_core.errors.UserError` naming
the file, the line and the field, raised before anything trains. Also here: length-bucketed,
resumable batch order and collation (`batching`) and the token cache (`token_cache`). A data path
may be a Hugging Face dataset id (`hub_files`: which repo files are the splits; `hub` downloads them).
May import: `hub`, `models` and the top-level contracts.
"""

from trainer_core.data.kinds import KINDS, SFT_KINDS, detect_kind, validate_record
from trainer_core.data.loading import find_split_files, first_record, load_dataset, load_run_data
from trainer_core.data.readers import read_records
from trainer_core.data.records import DatasetSplits, Record, where
from trainer_core.data.tokenize import Example, TokenizeStats, render_messages, tokenize_sft

__all__ = [
    "KINDS", "SFT_KINDS", "Record", "DatasetSplits", "load_dataset", "load_run_data", "first_record", "detect_kind",
    "validate_record", "read_records", "find_split_files", "where",
    "Example", "TokenizeStats", "tokenize_sft", "render_messages",
]

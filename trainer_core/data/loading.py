"""`load_dataset`: find the split files, read them, detect the kind, validate.

Contract: a data path is one file (the train split) or a folder holding
train.* (+ optional valid.* / validation.*, test.*) with any extension in
`readers.EXTENSIONS`. The kind comes from the first train record unless
`kind` forces it; every record of every split must be of that kind and
valid, otherwise a `UserError` names the file and line. Nothing is returned
half-read.
"""

from __future__ import annotations

from pathlib import Path

from trainer_core.errors import UserError
from trainer_core.data.kinds import SHAPES, check_kind, detect_kind, validate_record
from trainer_core.data.readers import EXTENSIONS, read_records
from trainer_core.data.records import DatasetSplits, Record, where

SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "validation"), "test": ("test",)}


def find_split_files(path: str | Path) -> dict[str, Path]:
    """Map split -> file for a data path (a file is the train split)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path}: no such file or folder. Point the data path at a .jsonl file or "
                        "a folder holding train.jsonl (+ valid.jsonl).")
    if path.is_file():
        return {"train": path}
    found: dict[str, Path] = {}
    for split, stems in SPLIT_NAMES.items():
        hits = [path / f"{s}{e}" for s in stems for e in EXTENSIONS if (path / f"{s}{e}").is_file()]
        if len(hits) > 1:
            raise UserError(f"{path}: found several {split} files ({', '.join(h.name for h in hits)});"
                            " keep only one.")
        if hits:
            found[split] = hits[0]
    if "train" not in found:
        listing = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
        raise UserError(f"{path}: the folder has no train file (train.jsonl, .json, .csv or "
                        f".parquet); it holds {listing}.")
    return found


def _kind_of(records: list[Record]) -> str:
    first = records[0]
    kind = detect_kind(first.data)
    if kind is None:
        keys = ", ".join(repr(k) for k in list(first.data)[:8]) or "no keys"
        shapes = "; ".join(f"{k}: {s}" for k, s in SHAPES.items())
        raise UserError(f"{where(first.source, first.line)}: cannot tell the data kind from the "
                        f"record's fields ({keys}). Expected one of - {shapes}.")
    return kind


def _validate(records: list[Record], kind: str, forced: bool, ref: Record) -> None:
    for rec in records:
        got = detect_kind(rec.data)
        if not forced and got != kind:
            raise UserError(f"{where(rec.source, rec.line)}: this record is "
                            f"{'of kind ' + got if got else 'of no known kind'} but the dataset is "
                            f"{kind} (from {where(ref.source, ref.line)}). All "
                            f"records must have the same fields, e.g. {SHAPES[kind]}.")
        try:
            validate_record(rec, kind)
        except UserError as e:
            if forced and got and got != kind:
                raise UserError(f"{e.message} (The data kind was set to {kind}, but this record "
                                f"looks like {got} data.)") from None
            raise


def load_dataset(path: str | Path, kind: str | None = None) -> DatasetSplits:
    """Read and validate every split of the dataset at `path`."""
    if kind is not None:
        check_kind(kind)
    files = find_split_files(path)
    splits = {split: read_records(f) for split, f in files.items()}
    forced = kind is not None
    kind = kind or _kind_of(splits["train"])
    for records in splits.values():
        _validate(records, kind, forced, splits["train"][0])
    return DatasetSplits(kind=kind, train=splits["train"], valid=splits.get("valid", []),
                         test=splits.get("test", []),
                         files={s: str(f) for s, f in files.items()})

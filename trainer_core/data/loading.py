"""`load_dataset`: find the split files, read them, detect the format and kind, map, validate.

Contract: a data path is one file (the train split) or a folder holding the splits train,
valid (also validation / val / dev) and test, each one file `<split>.<ext>` or shards
`<split>-NNNNN-of-NNNNN.<ext>` (Hugging Face's layout; read in order and concatenated), at the
top of the folder or in its `data/` subfolder, with any extension in `readers.EXTENSIONS`.
A Hugging Face dataset id (`org/name[:config][@split]`, no local path of that name) is its
files in the Hugging Face cache, downloaded when missing (hub_files.py).
The format (formats.py) and so the kind come from the first train record unless forced;
every record of every split is mapped through that format and must then be a valid record
of the kind. Bad records are reported together (the first MAX_SHOWN, with file and line, and
how many more) in one `UserError`. Nothing is returned half-read.
"""

from __future__ import annotations

import re
from pathlib import Path

from trainer_core.errors import UserError
from trainer_core.data.formats import Format, choose_format, unknown_shape_message
from trainer_core.data.hub_files import hub_split_files, parse as parse_hub_id
from trainer_core.data.kinds import SHAPES, check_kind, detect_kind, validate_record
from trainer_core.data.readers import EXTENSIONS, read_records
from trainer_core.data.records import DatasetSplits, Record, where

SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "validation", "val", "dev"), "test": ("test",)}
MAX_SHOWN = 5  # bad records named in one error
_SHARD = re.compile(r"^(?P<stem>[a-z]+)(?:-(?P<index>\d+)-of-(?P<total>\d+)(?:-[0-9a-f]+)?)?$")


def _split_of(path: Path) -> tuple[str, int, int] | None:
    """(split, shard index, shard total) for a file named like a split, else None."""
    match = _SHARD.match(path.stem.lower())
    if not match or path.suffix.lower() not in EXTENSIONS:
        return None
    split = next((s for s, stems in SPLIT_NAMES.items() if match["stem"] in stems), None)
    if split is None:
        return None
    return split, int(match["index"] or 0), int(match["total"] or 1)


def find_split_files(path: str | Path) -> dict[str, list[Path]]:
    """Map split -> its files in order (a file is the train split; a Hub dataset id, hub_files.py)."""
    if not Path(path).expanduser().exists() and parse_hub_id(str(path)) is not None:
        return hub_split_files(str(path))
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path}: no such file or folder. Point the data path at a .jsonl file, a folder "
                        "holding train.jsonl (+ valid.jsonl), or a Hugging Face dataset id (org/name).")
    if path.is_file():
        return {"train": [path]}
    found: dict[str, dict[tuple, list[Path]]] = {}
    for folder in (path, path / "data"):
        for file in sorted(folder.iterdir()) if folder.is_dir() else ():
            named = _split_of(file) if file.is_file() else None
            if named:
                split, index, total = named
                found.setdefault(split, {}).setdefault((file.stem.split("-")[0].lower(), total), []).append(file)
    if "train" not in found:
        listing = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
        raise UserError(f"{path}: the folder has no train file (train.jsonl, .json, .csv, .tsv or .parquet, "
                        f"or data/train-00000-of-00001.parquet); it holds {listing}.")
    return {split: _one_set(split, groups) for split, groups in found.items()}


def _one_set(split: str, groups: dict[tuple, list[Path]]) -> list[Path]:
    files = [f for group in groups.values() for f in group]
    (_, total), group = next(iter(groups.items()))
    if len(groups) > 1 or (total == 1 and len(group) > 1):
        raise UserError(f"{files[0].parent}: found several {split} files ({', '.join(f.name for f in files)}); "
                        "keep only one (or one set of shards).")
    if len(group) != total:
        raise UserError(f"{group[0].parent}: {split} is split into {total} shards but {len(group)} are here "
                        f"({', '.join(f.name for f in group)}). Download the missing shards.")
    return sorted(group, key=lambda f: _split_of(f)[1])


def _report(problems: list[str], total: int) -> None:
    if total == 1:
        raise UserError(problems[0])
    if total:
        more = f"\n(and {total - len(problems)} more)" if total > len(problems) else ""
        raise UserError(f"{total} records can't be used; the first {len(problems)}:\n"
                        + "\n".join(problems) + more)


def _native_problem(rec: Record, kind: str, forced: bool, ref: Record) -> None:
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


def _map_all(records: list[Record], fmt: Format, forced: bool, ref: Record) -> tuple[list[Record], list[str], int]:
    """Records in the native shape of fmt.kind, the first problems and how many records have one."""
    out, problems, bad = [], [], 0
    for rec in records:
        try:
            if fmt.name == "native":
                _native_problem(rec, fmt.kind, forced, ref)
                out.append(rec)
            else:
                mapped = Record(fmt.convert(rec.data, where(rec.source, rec.line)), rec.source, rec.line)
                validate_record(mapped, fmt.kind)
                out.append(mapped)
        except UserError as e:
            bad += 1
            if len(problems) < MAX_SHOWN:
                problems.append(e.message)
    return out, problems, bad


def load_dataset(path: str | Path, kind: str | None = None, *, data_format: str = "",
                 columns: dict[str, str] | None = None, prefer_kind: str | None = None) -> DatasetSplits:
    """Read, map and validate every split of the dataset at `path`.

    `kind` forces the data kind, `data_format` the format, `columns` a column mapping
    (field -> column); `prefer_kind` only resolves ambiguous column pairs (grpo: prompt_answer).
    """
    if kind is not None:
        check_kind(kind)
    files = find_split_files(path)
    raw = {split: [r for f in shard_files for r in read_records(f)] for split, shard_files in files.items()}
    first = raw["train"][0]
    loc = where(first.source, first.line)
    fmt = choose_format(first.data, loc, data_format=data_format, columns=columns, kind=kind,
                        prefer_kind=prefer_kind)
    if fmt is None or not fmt.kind:
        raise UserError(unknown_shape_message(first.data, loc), field="data_columns")
    mapped, problems, bad = {}, [], 0
    for split, records in raw.items():
        mapped[split], some, n = _map_all(records, fmt, kind is not None, first)
        problems += some[:MAX_SHOWN - len(problems)]
        bad += n
    _report(problems, bad)
    return DatasetSplits(kind=fmt.kind, train=mapped["train"], valid=mapped.get("valid", []),
                         test=mapped.get("test", []), files={s: str(f[0]) for s, f in files.items()},
                         format=fmt.describe(), shards={s: [str(p) for p in f] for s, f in files.items()})


def first_record(path: str | Path) -> Record:
    """The train split's first record as read (unmapped): what the column-mapping dialog shows."""
    return read_records(find_split_files(path)["train"][0])[0]


def load_run_data(config) -> DatasetSplits:
    """`load_dataset` with a RunConfig's data settings; grpo takes ambiguous pairs as prompt_answer."""
    return load_dataset(config.data, config.data_kind or None, data_format=config.data_format,
                        columns=config.data_columns or None,
                        prefer_kind="prompt_answer" if config.method == "grpo" else None)

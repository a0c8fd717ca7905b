"""Plain data containers shared by the data package.

`Record` is one object read from a dataset file, with where it came from;
`DatasetSplits` is what `load_dataset` returns. `where()` formats the
location that every data error message starts with.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Record:
    """One dataset record: the JSON object plus its file and 1-based line (row for parquet)."""

    data: dict
    source: str
    line: int


@dataclass
class DatasetSplits:
    """The validated records of one dataset, all of one `kind`.

    `files` maps each split that exists ("train", "valid", "test") to its path;
    a missing split is an empty list.
    """

    kind: str
    train: list[Record]
    valid: list[Record] = field(default_factory=list)
    test: list[Record] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


def where(source: str, line: int) -> str:
    """'path, line N' (or 'row N' for parquet files, which have no lines)."""
    unit = "row" if str(source).lower().endswith(".parquet") else "line"
    return f"{source}, {unit} {line}"

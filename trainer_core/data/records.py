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

    `files` maps each split that exists ("train", "valid", "test") to its (first) file;
    a missing split is an empty list.
    """

    kind: str
    train: list[Record]
    valid: list[Record] = field(default_factory=list)
    test: list[Record] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    format: str = "native"  # how the records were mapped onto `kind` (formats.Format.describe())
    shards: dict[str, list[str]] = field(default_factory=dict)  # every file of each split, in order

    def fingerprint_files(self) -> dict[str, str]:
        """split -> file, with a split's further shards as "train#2", ... (what a resume compares)."""
        out = dict(self.files)
        for split, paths in self.shards.items():
            out.update({f"{split}#{i}": p for i, p in enumerate(paths[1:], 2)})
        return out


def where(source: str, line: int) -> str:
    """'path, line N' (or 'row N' for parquet files, which have no lines)."""
    unit = "row" if str(source).lower().endswith(".parquet") else "line"
    return f"{source}, {unit} {line}"

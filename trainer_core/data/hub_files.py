"""A Hugging Face dataset id as a data path: which files of the repo are the splits.

    hub_split_files("org/name:config@split")  # {"train": [Path, ...], "valid": [...]}, downloaded if needed
    pin_data("org/name")                       # "hf://datasets/org/name@<sha>": what a run records

Our own choice of files rather than the `datasets` library: that library brings pandas, fsspec,
its own cache and Arrow copies of every file, while our readers already read the files; the
layouts datasets are published in are few, and are read like a local folder (loading.py):
`data/<split>-NNNNN-of-NNNNN[-hash].<ext>` (push_to_hub), the same under `<config>/` for a dataset
with several configs, `<split>.<ext>` files, or one data file (the train split). Only the train
and validation files are downloaded (`@split`: only that split, as the train split).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from trainer_core.errors import UserError
from trainer_core.hub import datasets as hub_datasets
from trainer_core.hub.datasets import DatasetId
from trainer_core.data.readers import EXTENSIONS

DEFAULT_CONFIG = "default"
# Our split -> the Hub's names for it, preferred first (loading.SPLIT_NAMES; test is not downloaded).
HUB_SPLITS = {"train": ("train",), "valid": ("validation", "valid", "val", "dev")}
_SHARD = re.compile(r"^(?P<split>.+?)(?:-(?P<index>\d+)-of-(?P<total>\d+)(?:-[0-9a-f]+)?)?$")


def parse(spec: str) -> DatasetId | None:
    """The dataset id a data path spells, or None (a missing `x/y.jsonl` is a file, not an id)."""
    return hub_datasets.parse(spec, data_suffixes=tuple(EXTENSIONS))


def _config_of(name: str) -> str:
    folders = [p for p in PurePosixPath(name).parts[:-1] if p != "data"]
    return folders[0] if folders else DEFAULT_CONFIG


def _shard(name: str) -> tuple[str, int, int]:
    """(split, shard index, shard total) from a file name: data/train-00001-of-00002.parquet -> (train, 1, 2)."""
    match = _SHARD.match(PurePosixPath(name).stem)
    return match["split"], int(match["index"] or 0), int(match["total"] or 1)


def choose_files(dataset_id: DatasetId, names: list[str]) -> dict[str, list[str]]:
    """Our split -> the repo's files for it, in shard order; one UserError when the repo's layout doesn't say."""
    where = f"Dataset '{dataset_id.repo_id}' ({dataset_id.url})"
    data = [n for n in names if PurePosixPath(n).suffix.lower() in EXTENSIONS
            and not any(part.startswith(".") for part in PurePosixPath(n).parts)]
    if not data:
        raise UserError(f"{where} has no data files this program reads ({', '.join(EXTENSIONS)}); it holds "
                        f"{', '.join(names[:10]) or 'nothing'}.", field="data")
    configs = sorted({_config_of(n) for n in data})
    config = dataset_id.config or (configs[0] if len(configs) == 1 else DEFAULT_CONFIG)
    if config not in configs:
        asked = f"has no config {config!r}" if dataset_id.config else "has several configs"
        raise UserError(f"{where} {asked}; its configs are {', '.join(configs)}. Choose one: "
                        f"{dataset_id.repo_id}:{configs[0]}.", field="data")
    files = [n for n in data if _config_of(n) == config]
    by_split: dict[str, list[str]] = {}
    for name in files:
        by_split.setdefault(_shard(name)[0], []).append(name)
    if dataset_id.split:
        if dataset_id.split not in by_split:
            raise UserError(f"{where} has no split {dataset_id.split!r}" + (f" in config {config!r}" if
                            dataset_id.config else "") + f"; its splits are {', '.join(sorted(by_split))}.",
                            field="data")
        chosen = {"train": by_split[dataset_id.split]}
    elif len(files) == 1:
        chosen = {"train": files}
    else:
        chosen = {}
        for ours, theirs in HUB_SPLITS.items():
            found = next((name for name in theirs if name in by_split), None)
            if found:
                chosen[ours] = by_split[found]
        if "train" not in chosen:
            raise UserError(f"{where} has no split named train; its splits are {', '.join(sorted(by_split))}. "
                            f"Train on one of them: {dataset_id.repo_id}@{sorted(by_split)[0]}.", field="data")
    return {split: _complete(where, split, group) for split, group in chosen.items()}


def _complete(where: str, split: str, names: list[str]) -> list[str]:
    """The shards of one split in order, every one of them present."""
    names = sorted(names, key=lambda n: _shard(n)[1])
    total = _shard(names[0])[2]
    if total != len(names) or any(_shard(n)[2] != total for n in names):
        raise UserError(f"{where}: the {split} split should be {total} shards but {len(names)} are listed "
                        f"({', '.join(names)}).", field="data")
    return names


def hub_split_files(spec: str, **download) -> dict[str, list[Path]]:
    """Our split -> local files of the Hub dataset `spec` (`download`: progress, cancel, show_bars)."""
    fetched = hub_datasets.fetch(parse(spec), choose_files, **download)
    return {split: [fetched.folder / n for n in names] for split, names in fetched.files.items()}


def pin_data(spec: str, **download) -> str:
    """A Hub dataset id -> the same id pinned to the commit it resolves to, downloading what is missing;
    a local path (or "demo") is returned unchanged. A run records the pinned id, so a resume reads the
    same files (from the cache, offline)."""
    spec = str(spec).strip()
    if Path(spec).expanduser().exists() or parse(spec) is None:
        return spec
    return hub_datasets.fetch(parse(spec), choose_files, **download).dataset_id.spec

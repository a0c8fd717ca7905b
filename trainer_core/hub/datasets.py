"""Hugging Face dataset ids as a data path, and their data files in the standard Hugging Face cache.

An id is `org/name`, `org/name:config`, `org/name@split` or `org/name:config@split`, optionally
with huggingface_hub's file-system prefix `hf://datasets/`. A run records the commit its files
came from, `hf://datasets/org/name@<sha>[:config][@split]`, so a resume reads the same files
(from the cache, without any request).

Which of a repo's files are data, and which split each is, is the caller's choice (`choose`,
data/hub_files.py). This module knows the Hub: the file listing, downloading only the chosen files
(download.py's progress, cancel, disk check and messages), offline use of the cache, one UserError
per failure naming the id and its URL.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from trainer_core.errors import UserError
from trainer_core.hub.download import (Progress, _endpoint, _hub, _hub_error, _is_connection_error, cache_dir,
                                       check_disk_space, fetch_snapshot, repo_cache_dir)

PREFIX = "hf://datasets/"
_ID = re.compile(r"^(?:hf://datasets/)?(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95})"
                 r"(?:@(?P<revision>[0-9a-f]{40}))?(?::(?P<config>[A-Za-z0-9._-]+))?(?:@(?P<split>[A-Za-z0-9._-]+))?$")


@dataclass(frozen=True)
class DatasetId:
    repo_id: str                  # "org/name"
    revision: str | None = None   # the commit sha a run records; None = the main branch
    config: str | None = None     # a subset (the repo's folder of that name); None = the only one / default
    split: str | None = None      # train on this split only; None = train (+ validation)

    @property
    def spec(self) -> str:
        """The id as a data path: `hf://datasets/org/name[@sha][:config][@split]`."""
        return (PREFIX + self.repo_id + (f"@{self.revision}" if self.revision else "")
                + (f":{self.config}" if self.config else "") + (f"@{self.split}" if self.split else ""))

    @property
    def pinned(self) -> bool:
        return self.revision is not None

    @property
    def url(self) -> str:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        return f"{endpoint}/datasets/{self.repo_id}"

    def at(self, revision: str) -> "DatasetId":
        return replace(self, revision=revision)


def parse(spec: str, data_suffixes: tuple[str, ...] = ()) -> DatasetId | None:
    """The dataset id `spec` spells, or None (a path; a name ending in one of `data_suffixes` is a
    file that is missing, not an id)."""
    match = _ID.match(str(spec).strip())
    if not match or match.group("repo").lower().endswith(data_suffixes):
        return None
    return DatasetId(match.group("repo"), match.group("revision"), match.group("config"), match.group("split"))


@dataclass(frozen=True)
class FetchedDataset:
    folder: Path                  # the snapshot folder in the cache
    dataset_id: DatasetId         # pinned: revision = the commit sha
    files: dict[str, list[str]]   # what `choose` returned: group (split) -> file names under `folder`


# (the id, every file name of the repo) -> group -> the file names to use; a UserError when none fit
Choose = Callable[[DatasetId, list[str]], dict[str, list[str]]]


def fetch(dataset_id: DatasetId, choose: Choose, *, progress: Progress | None = None,
          cancel: Callable[[], bool] | None = None, show_bars: bool = False) -> FetchedDataset:
    """The chosen files of `dataset_id`, downloaded into the cache when missing (see the module doc)."""
    offline = _hub().constants.is_offline_mode()
    if dataset_id.pinned or offline:
        cached = _from_cache(dataset_id, choose)
        if cached is not None:
            return cached
        if offline:
            raise _not_cached(dataset_id, "HF_HUB_OFFLINE is set")
    try:
        info = _hub().HfApi(endpoint=_endpoint()).dataset_info(
            dataset_id.repo_id, revision=dataset_id.revision, files_metadata=True)
    except Exception as e:  # noqa: BLE001  (mapped to one message; unknown ones re-raised)
        if _is_connection_error(e):
            cached = _from_cache(dataset_id, choose)
            if cached is not None:
                return cached
            raise _not_cached(dataset_id, "Hugging Face cannot be reached (no network?)") from None
        raise _hub_error(dataset_id, e, "dataset") from None
    sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
    pinned = dataset_id.at(info.sha)
    chosen = choose(pinned, sorted(sizes))
    names = [name for group in chosen.values() for name in group]
    check_disk_space(pinned, {name: sizes[name] for name in names}, "dataset")
    folder = fetch_snapshot(pinned, names, repo_type="dataset", progress=progress, cancel=cancel,
                            show_bars=show_bars)
    return FetchedDataset(folder, pinned, chosen)


def _from_cache(dataset_id: DatasetId, choose: Choose) -> FetchedDataset | None:
    """The cached snapshot (the pinned commit, else the one `main` last resolved to) when it holds
    every file `choose` picks from what is there, or None."""
    repo = repo_cache_dir(dataset_id.repo_id, "dataset")
    sha = dataset_id.revision
    if sha is None:
        ref = repo / "refs" / "main"
        sha = ref.read_text().strip() if ref.is_file() else None
    folder = repo / "snapshots" / sha if sha else None
    if folder is None or not folder.is_dir():
        return None
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    try:
        chosen = choose(dataset_id.at(sha), names)
    except UserError:
        return None
    return FetchedDataset(folder, dataset_id.at(sha), chosen)


def _not_cached(dataset_id: DatasetId, why: str) -> UserError:
    return UserError(f"Dataset '{dataset_id.spec}' is not in the Hugging Face cache ({cache_dir()}) and {why}. "
                     "Connect to the internet (and unset HF_HUB_OFFLINE) to download it, or choose a data file "
                     "or folder on this computer.", field="data")


@dataclass(frozen=True)
class HubDataset:
    repo_id: str
    downloads: int


def search_datasets(text: str, limit: int = 40) -> list[HubDataset]:
    """Datasets on the Hub matching `text`, most downloaded first (HfApi.list_datasets); one UserError
    when the Hub cannot be asked."""
    if _hub().constants.is_offline_mode():
        raise UserError("Hugging Face search is off: HF_HUB_OFFLINE is set. Unset it to search the Hub, or type "
                        "the id of a dataset that is in the cache.")
    try:
        found = _hub().HfApi(endpoint=_endpoint()).list_datasets(search=text.strip() or None, sort="downloads",
                                                                 limit=limit)
        return [HubDataset(info.id, int(info.downloads or 0)) for info in found]
    except Exception as e:  # noqa: BLE001  (one message for the search box)
        if _is_connection_error(e):
            raise UserError("Hugging Face cannot be reached (no network?). Type the id of a dataset that is in "
                            "the cache, or choose a file.") from None
        if isinstance(e, _hub().errors.HfHubHTTPError):
            raise UserError(f"The Hugging Face search failed ({' '.join(str(e).split())[:200]}). "
                            "Try again later.") from None
        raise

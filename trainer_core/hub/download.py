"""A Hugging Face id -> files in the standard Hugging Face cache, downloaded with huggingface_hub.

`resolve(spec)` downloads only what training needs (config, tokenizer, safetensors weights; for a
GGUF repo the one quantization asked for, or a sensible default) into the cache that every other
tool shares (`HF_HOME`/`HF_HUB_CACHE`), and returns the local folder or .gguf file with the commit
sha it came from. The token comes from where huggingface_hub looks (`HF_TOKEN`, `hf auth login`).

- A pinned id (`org/name@<sha>`) that is cached is used without any network request.
- Offline (`HF_HUB_OFFLINE=1`, or no connection): the cached copy, or one message naming the cache.
- Before downloading: the bytes still missing are checked against the free disk space.
- A dropped connection is resumed where it stopped (huggingface_hub retries with a Range request);
  `cancel()` returning True stops the download (DownloadCancelled): files already complete stay in
  the cache, the one in progress is discarded (huggingface_hub 2 keeps no partial files), so a new
  attempt fetches only what is missing. A full disk leaves no partial file and says so.
- Every failure a user can fix is one UserError naming the id (and the repo's URL).
"""

from __future__ import annotations

import errno
import fnmatch
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from trainer_core.errors import UserError
from trainer_core.hub.ids import ModelId, parse

# What a Hugging Face / mlx-community folder needs for training (mlx-lm reads model*.safetensors).
FOLDER_FILES = ["config.json", "generation_config.json", "model*.safetensors", "model*.safetensors.index.json",
                "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                "added_tokens.json", "vocab.json", "merges.txt", "*.tiktoken", "chat_template.jinja",
                "chat_template.json"]
# A GGUF repo's default file, best first: the quantizations people train from most.
GGUF_DEFAULTS = ["Q4_K_M", "Q4_K_S", "Q5_K_M", "Q8_0", "Q6_K", "Q4_0", "Q5_0", "F16", "BF16"]
DISK_MARGIN_BYTES = 200 * 2**20

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


class DownloadCancelled(Exception):
    """The user cancelled a download (what was fetched stays in the cache, to resume)."""


@dataclass(frozen=True)
class Resolved:
    path: Path          # the snapshot folder, or the .gguf file inside it
    model_id: ModelId   # revision = the commit sha; quant = the GGUF file's quantization

    @property
    def spec(self) -> str:
        """The pinned model path a run records: `org/name@<sha>[:QUANT]`."""
        return self.model_id.spec


def _hub():
    import huggingface_hub  # imported on first use: the GUI's startup does not pay for it
    return huggingface_hub


def cache_dir() -> Path:
    return Path(_hub().constants.HF_HUB_CACHE)


def _endpoint() -> str | None:
    import os
    return os.environ.get("HF_ENDPOINT") or None


def resolve(spec: str, *, progress: Progress | None = None, cancel: Callable[[], bool] | None = None,
            show_bars: bool = False) -> Resolved:
    """Local files for the Hugging Face id `spec` (downloading what is missing); see the module doc.

    `show_bars`: huggingface_hub's own terminal progress bars (the CLI)."""
    model_id = parse(spec)
    if model_id is None:
        raise UserError(f"{spec!r} is not a Hugging Face model id (org/name).", field="model")
    if model_id.pinned or _hub().constants.is_offline_mode():
        cached = _from_cache(model_id)
        if cached is not None:
            return cached
        if _hub().constants.is_offline_mode():
            raise _not_cached(model_id, "HF_HUB_OFFLINE is set")
    try:
        info = _hub().HfApi(endpoint=_endpoint()).model_info(
            model_id.repo_id, revision=model_id.revision, files_metadata=True)
    except Exception as e:  # noqa: BLE001  (mapped to one message; unknown ones re-raised)
        if _is_connection_error(e):
            cached = _from_cache(model_id)
            if cached is not None:
                return cached
            raise _not_cached(model_id, "Hugging Face cannot be reached (no network?)") from None
        raise _hub_error(model_id, e) from None
    files = {s.rfilename: s.size or 0 for s in info.siblings or []}
    patterns, quant = _choose_files(model_id, files)
    pinned = model_id.at(info.sha, quant)
    check_disk_space(pinned, {f: s for f, s in files.items() if _matches(f, patterns)})
    folder = fetch_snapshot(pinned, patterns, progress=progress, cancel=cancel, show_bars=show_bars)
    return _resolved(folder, pinned)


def fetch_snapshot(ref, patterns: list[str], *, repo_type: str = "model", progress: Progress | None = None,
                   cancel: Callable[[], bool] | None = None, show_bars: bool = False) -> Path:
    """The files matching `patterns` of `ref` (a ModelId or a DatasetId: repo_id, revision = a commit sha,
    url) in the cache, downloading what is missing; a failure a user can fix is one UserError naming it."""
    what = f"{repo_type} '{ref.repo_id}'"
    try:
        return Path(_hub().snapshot_download(
            ref.repo_id, repo_type=repo_type, revision=ref.revision, allow_patterns=patterns,
            endpoint=_endpoint(), tqdm_class=_progress_class(progress, cancel, show_bars)))
    except DownloadCancelled:
        raise
    except Exception as e:  # noqa: BLE001  (mapped to one message; unknown ones re-raised)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:  # huggingface_hub has deleted the partial file
            raise UserError(f"The disk filled up while downloading {what}; the partial files were removed. "
                            f"Free some space (the Hugging Face cache is {cache_dir()}) and try again.",
                            field=field_of(repo_type)) from None
        if _is_connection_error(e):
            raise UserError(f"The download of {what} was interrupted ({e}). Try again: it continues where it "
                            "stopped.", field=field_of(repo_type)) from None
        raise _hub_error(ref, e, repo_type) from None


# ---------------------------------------------------------------- choosing files

def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def gguf_quant(name: str) -> str:
    """'Qwen3-0.6B-Q4_K_M.gguf' -> 'Q4_K_M' (the last '-'/'.'-separated part before .gguf)."""
    stem = Path(name).name[:-len(".gguf")]
    return stem.replace(".", "-").rsplit("-", 1)[-1].upper()


def _choose_files(model_id: ModelId, files: dict[str, int]) -> tuple[list[str], str | None]:
    """(allow_patterns, the GGUF quantization picked or None) for this repo's files."""
    ggufs = sorted(f for f in files if f.endswith(".gguf") and "mmproj" not in f.lower())
    weights = [f for f in files if _matches(f, ["model*.safetensors"])]
    if model_id.quant:
        wanted = model_id.quant.upper()
        picked = [f for f in ggufs if f == model_id.quant or gguf_quant(f) == wanted]
        if not picked:
            raise UserError(f"Model '{model_id.repo_id}' has no GGUF file for {model_id.quant!r}. It has: "
                            + (", ".join(gguf_quant(f) for f in ggufs) or "no GGUF files")
                            + f". See {model_id.url}.", field="model")
        return _gguf_patterns(picked[0], files), gguf_quant(picked[0])
    if weights and "config.json" in files:
        return FOLDER_FILES, None
    if ggufs:
        by_quant = {gguf_quant(f): f for f in ggufs}
        best = next((by_quant[q] for q in GGUF_DEFAULTS if q in by_quant), ggufs[0])
        return _gguf_patterns(best, files), gguf_quant(best)
    if any(f.endswith((".bin", ".pth", ".pt")) for f in files):
        raise UserError(f"Model '{model_id.repo_id}' has only PyTorch weights (.bin), which cannot be loaded "
                        "safely without running code. Choose an mlx-community or safetensors version of it "
                        f"(search the Hub for '{model_id.repo_id.split('/')[-1]}'), or a GGUF. {model_id.url}",
                        field="model")
    raise UserError(f"Model '{model_id.repo_id}' has no weights this program can train: no config.json with "
                    f"model*.safetensors, and no .gguf file. {model_id.url}", field="model")


def _gguf_patterns(name: str, files: dict[str, int]) -> list[str]:
    """One GGUF, split into parts when it is (`-00001-of-00003.gguf`): all its parts."""
    if "-00001-of-" in name:
        return [name.split("-00001-of-")[0] + "-*-of-*.gguf"]
    return [name]


# ---------------------------------------------------------------- cache

def _resolved(folder: Path, model_id: ModelId) -> Resolved:
    if model_id.quant is None:
        return Resolved(folder, model_id)
    ggufs = sorted(p for p in folder.rglob("*.gguf") if gguf_quant(p.name) == model_id.quant.upper()
                   or p.name == model_id.quant)
    return Resolved(ggufs[0] if ggufs else folder, model_id)


def repo_cache_dir(repo_id: str, repo_type: str = "model") -> Path:
    """huggingface_hub's cache layout: models--org--name/{refs,snapshots,blobs} (datasets--org--name)."""
    return cache_dir() / f"{repo_type}s--{repo_id.replace('/', '--')}"


def _from_cache(model_id: ModelId) -> Resolved | None:
    """The cached snapshot for this id when it holds what training needs, or None.

    Read from the cache layout directly: huggingface_hub's own offline lookup insists on every file
    of the repo, while we download only some."""
    repo = repo_cache_dir(model_id.repo_id)
    sha = model_id.revision if model_id.pinned else None
    if sha is None:
        ref = repo / "refs" / (model_id.revision or "main")
        sha = ref.read_text().strip() if ref.is_file() else None
    folder = repo / "snapshots" / sha if sha else None
    if folder is None or not folder.is_dir():
        return None
    files = {p.relative_to(folder).as_posix(): 0 for p in folder.rglob("*") if p.is_file()}
    try:
        patterns, quant = _choose_files(model_id, files)
    except UserError:
        return None
    if quant is None and not _complete_folder(folder):
        return None
    return _resolved(folder, model_id.at(sha, quant))


def _complete_folder(folder: Path) -> bool:
    """config.json and every weight shard the index names (a file appears once fully downloaded)."""
    import json

    if not (folder / "config.json").is_file():
        return False
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (OSError, ValueError):
            return False
        return all((folder / s).is_file() for s in shards)
    return any(folder.glob("model*.safetensors"))


def _not_cached(model_id: ModelId, why: str) -> UserError:
    return UserError(f"Model '{model_id.spec}' is not in the Hugging Face cache ({cache_dir()}) and {why}. "
                     "Connect to the internet (and unset HF_HUB_OFFLINE) to download it, or choose a model "
                     "that is already on this computer.", field="model")


def _free_bytes(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def check_disk_space(model_id, files: dict[str, int], repo_type: str = "model") -> None:
    """The bytes of `files` (name -> size) not yet in the snapshot of `model_id` (a ModelId or DatasetId)
    fit on the cache's disk, or one UserError."""
    snapshot = repo_cache_dir(model_id.repo_id, repo_type) / "snapshots" / model_id.revision
    missing = sum(size for name, size in files.items() if not (snapshot / name).exists())
    free = _free_bytes(cache_dir())
    if missing and missing + DISK_MARGIN_BYTES > free:
        raise UserError(f"Downloading {repo_type} '{model_id.repo_id}' needs {missing / 1e9:.2f} GB, but only "
                        f"{free / 1e9:.2f} GB is free on the disk of the Hugging Face cache ({cache_dir()}). "
                        "Free some space, or set HF_HOME to a folder on a bigger disk.", field=field_of(repo_type))


# ---------------------------------------------------------------- errors and progress

def _is_connection_error(e: Exception) -> bool:
    import httpx2  # huggingface_hub's HTTP client: connection refused, timeouts, cut connections

    hub_errors = _hub().errors
    return isinstance(e, (httpx2.TransportError, ConnectionError, hub_errors.OfflineModeIsEnabled,
                          hub_errors.LocalEntryNotFoundError))


def field_of(repo_type: str) -> str:
    """The RunConfig field a failure points at: `model` or `data`."""
    return "model" if repo_type == "model" else "data"


def _hub_error(model_id, e: Exception, repo_type: str = "model") -> Exception:
    """huggingface_hub's error -> our one message naming `model_id` (a ModelId or DatasetId); other
    exceptions are returned unchanged."""
    errors = _hub().errors
    name, field = f"{repo_type} '{model_id.repo_id}'", field_of(repo_type)
    if isinstance(e, errors.GatedRepoError):
        return UserError(f"The {name} is gated: open {model_id.url}, log in and accept its licence, then log in "
                         "here too (`hf auth login`, or set HF_TOKEN to an access token).", field=field)
    if isinstance(e, errors.RevisionNotFoundError):
        return UserError(f"The {name} has no revision {model_id.revision!r} (a branch, tag or commit). "
                         f"See {model_id.url}.", field=field)
    if isinstance(e, errors.RepositoryNotFoundError):
        here = "no folder" if repo_type == "model" else "no file or folder"
        return UserError(f"The {name} was not found on Hugging Face (check the spelling), and {here} of "
                         "that name exists here. If it is private, log in with `hf auth login` or set HF_TOKEN. "
                         f"{model_id.url}", field=field)
    if isinstance(e, errors.HfHubHTTPError):
        status = getattr(e.response, "status_code", "?")
        if status in (401, 403):
            return UserError(f"Hugging Face refused access to the {name} ({status}): log in with `hf auth login` "
                             f"or set HF_TOKEN, and accept the {repo_type}'s licence at {model_id.url}.", field=field)
        return UserError(f"Hugging Face answered {status} for the {name}; try again later. "
                         f"({' '.join(str(e).split())[:200]})", field=field)
    return e


def _progress_class(progress: Progress | None, cancel: Callable[[], bool] | None, show: bool):
    """A tqdm class for snapshot_download: counts written bytes for `progress`, raises
    DownloadCancelled when `cancel()` says so, and shows bars only when `show`."""
    from tqdm import tqdm

    class DownloadProgress(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            self._bytes_bar = str(kwargs.get("desc", "")).startswith("Reconstructing")
            self._done = kwargs.get("initial", 0) or 0
            super().__init__(*args, **{**kwargs, "disable": not show or kwargs.get("disable", False)})

        def update(self, n=1):
            if cancel is not None and cancel():
                raise DownloadCancelled("download cancelled")
            if self._bytes_bar:
                self._done += n or 0
                if progress is not None:
                    progress(self._done, int(self.total or 0))
            return super().update(n)

    return DownloadProgress

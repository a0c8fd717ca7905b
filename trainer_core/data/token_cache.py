"""Tokenised SFT examples cached on disk, keyed by what they depend on.

`tokenize_sft` runs at ~4,000 chat records a second on a 2-core CPU (bench/RESULTS.md): 25 s per
100k records at the start of every run and every resume. The result depends only on the records,
the tokenizer (vocabulary, special tokens, chat template), the data kind, max_seq_length,
mask_prompt, last_turn_only and drop_long, so it is stored under the hash of exactly those in `paths.cache_dir()/tokens/`: a
resumed run, or a new run with other hyperparameters on the same data and model, reads it back
instead: 20,000 demo chat records took 5.1 s to tokenise and 0.44 s to read back (mostly hashing the records and the
vocabulary), with identical examples and stats.
The cache lives in the user cache folder rather than the run folder because a new run has no
folder yet when its data is tokenised (the folder is created only after validation).

Files are plain numpy arrays (no pickle: a cache file is never code); a file that is missing,
unreadable or from another version is ignored and rewritten. Writes are atomic (tmp + rename);
a failure to write (read-only or full disk) only costs the speed-up. At most MAX_FILES are kept,
oldest first out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from trainer_core import paths
from trainer_core.data import Example, TokenizeStats, tokenize_sft
from trainer_core.data.records import Record

VERSION = 2  # bump when tokenize_sft's output for the same inputs changes
MAX_FILES = 16
log = logging.getLogger(__name__)


def tokenizer_identity(tokenizer) -> str:
    """A hash of everything of the tokenizer that tokenize_sft's output depends on."""
    h = hashlib.sha256()
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    h.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    for name in ("chat_template", "eos_token_id", "bos_token_id", "pad_token_id", "eos_token_ids"):
        value = getattr(tokenizer, name, None)
        h.update(f"{name}={sorted(value) if isinstance(value, (set, frozenset)) else value!r};".encode())
    h.update(type(tokenizer).__name__.encode())
    return h.hexdigest()


def cache_key(records, tokenizer_id: str, kind: str, max_seq_length: int, mask_prompt: bool,
              last_turn_only: bool = False, drop_long: bool = False) -> str:
    h = hashlib.sha256(f"v{VERSION};{tokenizer_id};{kind};{max_seq_length};{mask_prompt};{last_turn_only};"
                       f"{drop_long};".encode())
    for rec in records:
        data, source, line = (rec.data, rec.source, rec.line) if isinstance(rec, Record) else (rec, "", 0)
        h.update(json.dumps(data, sort_keys=True, ensure_ascii=False).encode())
        h.update(f"\x00{source}\x00{line}\x01".encode())
    return h.hexdigest()


def _save(path: Path, examples: list[Example], stats: TokenizeStats) -> None:
    lengths = np.array([len(e.input_ids) for e in examples], dtype=np.int64)
    ids = np.fromiter((t for e in examples for t in e.input_ids), dtype=np.int32, count=int(lengths.sum()))
    mask = np.fromiter((m for e in examples for m in e.target_mask), dtype=np.bool_, count=int(lengths.sum()))
    meta = {"version": VERSION, "stats": asdict(stats), "sources": [e.source for e in examples],
            "lines": [e.line for e in examples]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, ids=ids, mask=mask, lengths=lengths, meta=np.array(json.dumps(meta)))
    os.replace(tmp, path)


def _load(path: Path) -> tuple[list[Example], TokenizeStats] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            ids, mask, lengths = f["ids"].tolist(), f["mask"].tolist(), f["lengths"].tolist()
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    if meta.get("version") != VERSION or len(lengths) != len(meta["sources"]):
        return None
    examples, start = [], 0
    for n, source, line in zip(lengths, meta["sources"], meta["lines"]):
        examples.append(Example(ids[start:start + n], mask[start:start + n], source, line))
        start += n
    return examples, TokenizeStats(**meta["stats"])


def _prune(folder: Path) -> None:
    files = sorted(folder.glob("*.npz"), key=lambda p: p.stat().st_mtime)
    for old in files[:-MAX_FILES]:
        old.unlink(missing_ok=True)


def cached_tokenize_sft(records, tokenizer, kind: str, max_seq_length: int, mask_prompt: bool = True, *,
                        last_turn_only: bool = False, drop_long: bool = False) -> tuple[list[Example], TokenizeStats]:
    """`tokenize_sft` with the on-disk cache; the same (examples, stats) either way."""
    records = list(records)
    options = {"last_turn_only": last_turn_only, "drop_long": drop_long}
    try:
        key = cache_key(records, tokenizer_identity(tokenizer), kind, max_seq_length, mask_prompt, **options)
    except (TypeError, ValueError):  # records or tokenizer we can't hash: no cache
        return tokenize_sft(records, tokenizer, kind, max_seq_length, mask_prompt, **options)
    folder = paths.cache_dir() / "tokens"
    path = folder / f"{key[:32]}.npz"
    hit = _load(path) if path.is_file() else None
    if hit is not None:
        os.utime(path)  # most recently used
        return hit
    examples, stats = tokenize_sft(records, tokenizer, kind, max_seq_length, mask_prompt, **options)
    try:
        _save(path, examples, stats)
        _prune(folder)
    except OSError as e:
        log.info("tokenised data not cached (%s)", e)
    return examples, stats

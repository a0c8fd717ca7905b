"""What the Dataset group shows, computed off the GUI thread.

`analyze(request, task)` downloads a Hugging Face dataset id (with progress), reads and
validates the data (`load_dataset`), loads only the model's tokenizer (cached), tokenises the train split exactly as
training will (`tokenize_sft`, in chunks so the task can be cancelled) and
returns a `DatasetSummary`: kind, record counts per split, TokenizeStats and
a preview of the first examples as (text, trained) segments. No MLX array is
touched: this may run while a model loads elsewhere.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from trainer_core.models import gguf, loading as models
from trainer_core.data.batching import WINDOW
from trainer_core.data import SFT_KINDS, TokenizeStats, load_dataset, render_messages, tokenize_sft
from trainer_core.data.hub_files import pin_data
from trainer_core.config.recommend import SAMPLE_RECORDS

PREVIEW_ROWS = 6
CHUNK = 256  # records per tokenising chunk (cancellation granularity)

_tokenizers: dict[tuple, object] = {}
_tokenizer_lock = threading.Lock()


def load_tokenizer(spec: str):
    """The model's tokenizer alone (no weights), cached per file/folder and mtime.

    Mirrors what `models.load_model` builds: GGUF metadata -> rebuilt tokenizer;
    folder -> mlx-lm's `load_tokenizer`.
    """
    path = models.resolve_model_path(spec)
    key = (str(path), os.path.getmtime(path))
    with _tokenizer_lock:
        if key in _tokenizers:
            return _tokenizers[key]
        if path.is_file():
            header = gguf.read_header(path)
            gguf.check_supported(header)
            tokenizer = gguf.build_tokenizer(header)
        else:
            import json

            from mlx_lm.utils import load_tokenizer as mlx_load_tokenizer
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            tokenizer = mlx_load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
        _tokenizers[key] = tokenizer
        return tokenizer


@dataclass
class AnalysisRequest:
    model: str
    data: str
    data_kind: str  # "" = detect
    max_seq_length: int
    mask_prompt: bool
    data_format: str = ""  # "" = detect
    data_columns: dict = field(default_factory=dict)
    last_turn_only: bool = False
    long_rows: str = "truncate"
    method: str = ""

    @classmethod
    def of(cls, config) -> "AnalysisRequest":
        """What the analysis of a RunConfig's data depends on."""
        return cls(config.model, config.data, config.data_kind, config.max_seq_length, config.mask_prompt,
                   config.data_format, dict(config.data_columns), config.last_turn_only, config.long_rows,
                   config.method)


@dataclass
class PreviewRow:
    line: int
    segments: list[tuple[str, bool]]  # (decoded text, trained?) in order
    tokens: int
    trained: int
    columns: dict[str, str] = field(default_factory=dict)  # preference data: prompt / chosen / rejected side by side


@dataclass
class DatasetSummary:
    request: AnalysisRequest
    kind: str
    counts: dict[str, int]
    files: dict[str, str]
    stats: TokenizeStats | None  # train split; None for preference / prompt_answer data
    preview: list[PreviewRow] = field(default_factory=list)
    format: str = "native"  # how the records map onto `kind` (DatasetSplits.format)
    sample: list[dict] = field(default_factory=list)  # the first SAMPLE_RECORDS train records (recommendations)
    has_valid: bool = False  # a validation split exists (eval_every has something to evaluate)

    @property
    def train_examples(self) -> int:
        """Usable training examples (after dropping empty ones) — what the loop batches."""
        return self.stats.examples if self.stats is not None else self.counts.get("train", 0)


def merge_stats(total: TokenizeStats, part: TokenizeStats) -> TokenizeStats:
    for name in ("records", "examples", "truncated", "empty", "trained_tokens", "total_tokens"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    total.lengths.extend(part.lengths)
    return total


def segments(tokenizer, ids: list[int], mask: list[bool]) -> list[tuple[str, bool]]:
    """Decode runs of equally-masked tokens: [(text, trained), ...]."""
    runs: list[tuple[str, bool]] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            runs.append((tokenizer.decode(ids[start:i]), bool(mask[start])))
            start = i
    return runs


def _prompt_preview(tokenizer, record, kind: str) -> PreviewRow:
    messages = render_messages(record.data, kind)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) \
        if getattr(tokenizer, "chat_template", None) else "\n".join(m["content"] for m in messages)
    if kind == "preference":  # DPO raises the chosen reply over the rejected one
        def text(value) -> str:
            return value if isinstance(value, str) else "\n".join(str(m.get("content", m)) if isinstance(m, dict)
                                                                  else str(m) for m in value)
        columns = {"prompt": "\n".join(m["content"] for m in messages if m.get("role") != "system"),
                   "chosen": text(record.data.get("chosen", "")), "rejected": text(record.data.get("rejected", ""))}
        return PreviewRow(record.line, [(prompt, False), (columns["chosen"], True)], 0, 0, columns)
    answer = record.data.get("answer", "")  # GRPO samples its own completions; the answer only scores them
    return PreviewRow(record.line, [(prompt, False), (f"\n⟶ expected answer: {answer}", False)] if answer != ""
                      else [(prompt, False)], 0, 0)


def analyze(request: AnalysisRequest, task=None) -> DatasetSummary | None:
    """Read, validate and tokenise; None when `task` was cancelled. Raises UserError."""
    def cancelled() -> bool:
        return task is not None and task.cancelled

    def report(text: str) -> None:
        if task is not None:
            task.report(text)

    data = pin_data(request.data, cancel=cancelled,  # a Hugging Face dataset id: downloaded first, cancellable
                    progress=lambda done, total: report(f"Downloading the dataset… {done / 1e6:,.1f} of "
                                                        f"{total / 1e6:,.1f} MB"))
    report("Reading the data…")
    splits = load_dataset(data, request.data_kind or None, data_format=request.data_format,
                          columns=request.data_columns or None,
                          prefer_kind="prompt_answer" if request.method == "grpo" else None)
    counts = {name: len(getattr(splits, name)) for name in ("train", "valid", "test") if getattr(splits, name)}
    summary = DatasetSummary(request, splits.kind, counts, dict(splits.files), None, format=splits.format,
                             sample=[r.data for r in splits.train[:SAMPLE_RECORDS]], has_valid=bool(splits.valid))
    if cancelled():
        return None
    report("Loading the tokenizer…")
    tokenizer = load_tokenizer(request.model)
    if splits.kind not in SFT_KINDS:
        summary.preview = [_prompt_preview(tokenizer, r, splits.kind) for r in splits.train[:PREVIEW_ROWS]]
        return summary
    stats = TokenizeStats()
    records = splits.train
    for start in range(0, len(records), CHUNK):
        if cancelled():
            return None
        report(f"Tokenising {start:,} / {len(records):,} records…")
        examples, part = tokenize_sft(records[start:start + CHUNK], tokenizer, splits.kind,
                                      request.max_seq_length, request.mask_prompt,
                                      last_turn_only=request.last_turn_only, drop_long=request.long_rows == "drop")
        merge_stats(stats, part)
        for example in examples:
            if len(summary.preview) < PREVIEW_ROWS:
                summary.preview.append(PreviewRow(example.line,
                                                  segments(tokenizer, example.input_ids, example.target_mask),
                                                  len(example.input_ids), sum(example.target_mask)))
    summary.stats = stats
    return summary


def steps_per_epoch(examples: int, batch_size: int, accumulation: int) -> int:
    """Optimizer steps in one epoch, as `batching.epoch_batches` cuts them (one process)."""
    window = batch_size * WINDOW
    micro = sum(-(-min(window, examples - start) // batch_size) for start in range(0, examples, window))
    return micro // max(1, accumulation)

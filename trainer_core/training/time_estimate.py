"""How long a run will take on this computer: the tokens it processes over a measured speed.

    work = workload(total_steps, rows_per_step, dataset_tokens=..., dataset_rows=..., epochs=..., max_steps=...,
                    eval_tokens=evaluation_tokens(...))                  # evaluations: forward passes only
    rate = load_rate(rate_key(config))                 # cached per model x method x fine-tune type (x recompute)
    seconds = estimate_seconds(work, rate)             # None when the rate cannot price this work
    format_duration(seconds)                           # "≈ 14 min"

The speed comes from a few timed steps of the real run (`runner.measure_speed`, on first use) or from
a run's live train records (`rate_from_records`); either way it is saved with `save_rate` in
`paths.cache_dir()/speed.json`, so the next estimate for that model starts from it. Tokens are the
non-padding input tokens, as the loop's `tokens_per_sec` counts them; data without token statistics
(preference, prompt/answer) is priced in rows per second instead. No MLX here.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from trainer_core.paths import cache_dir

RATES_FILE = "speed.json"
SKIP_STEPS = 1  # the first step compiles the graph: never part of the rate
# a training step is a forward and a backward pass (~2x the forward's work): an evaluation, forward only,
# processes a token in about a third of the time
FORWARD_SHARE = 1 / 3
LIVE_MIN_STEPS = 3  # timed steps before a live rate replaces the cached one


@dataclass
class Rate:
    tokens_per_sec: float
    rows_per_sec: float
    source: str = "measured"  # measured (a few timed steps before Start) | live (a run's own steps)
    steps: int = 0  # how many timed steps it comes from
    time: float = 0.0  # when it was measured (epoch seconds)


@dataclass
class Workload:
    steps: int
    rows: int  # examples processed over the whole run
    tokens: int | None  # input tokens processed; None when the data has no token statistics
    eval_tokens: int = 0  # tokens the evaluations run forward over, the whole run


def rate_key(config) -> str:
    """What the speed depends on most: the model, the method, what trains (LoRA or full weights) and whether
    activations are recomputed (gradient checkpointing: about a third slower)."""
    key = f"{config.model}|{config.method}|{config.resolved_fine_tune_type}"
    return key + "|recompute" if config.gradient_checkpointing else key


def rates_path() -> Path:
    return cache_dir() / RATES_FILE


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_rate(key: str, path: Path | None = None) -> Rate | None:
    """The cached speed for `key`, or None (never measured, or the cache is unreadable)."""
    entry = _read(path or rates_path()).get(key)
    try:
        rate = Rate(**entry)
    except TypeError:
        return None
    return rate if rate.tokens_per_sec > 0 and rate.rows_per_sec > 0 else None


def save_rate(key: str, rate: Rate, path: Path | None = None) -> None:
    """Store `rate` for `key` (atomically; a cache that cannot be written is only a missed estimate)."""
    path = path or rates_path()
    data = _read(path)
    data[key] = asdict(rate)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


def rate_from_records(records: list[dict], rows_per_step: int, source: str = "measured") -> Rate | None:
    """The median speed of the train records after the first (compiling) one; None with too few.

    `rows_per_step`: examples per optimizer step (batch × accumulation × processes)."""
    timed = [r for r in records if r.get("step", 0) > SKIP_STEPS and r.get("step_time", 0) > 0
             and r.get("tokens_per_sec", 0) > 0]
    if not timed:
        return None
    tokens = statistics.median(r["tokens_per_sec"] for r in timed)
    rows = statistics.median(rows_per_step / r["step_time"] for r in timed)
    return Rate(tokens, rows, source, len(timed), time.time())


def workload(total_steps: int, rows_per_step: int, *, dataset_tokens: int | None, dataset_rows: int,
             epochs: int, max_steps: int, eval_tokens: int = 0) -> Workload:
    """What a run processes: with `max_steps`, steps × rows per step × the mean tokens per row; by epochs,
    the dataset's tokens × epochs (`dataset_tokens`: the train split's input tokens, None if unknown)."""
    rows = total_steps * rows_per_step
    tokens = None
    if dataset_tokens is not None and dataset_rows > 0:
        tokens = dataset_tokens * epochs if not max_steps else round(rows * dataset_tokens / dataset_rows)
    return Workload(total_steps, rows, tokens, eval_tokens)


def evaluation_tokens(total_steps: int, eval_every: int, valid_rows: int, tokens_per_row: float,
                      batch_size: int, eval_batches: int) -> int:
    """Tokens all the run's evaluations process: one every `eval_every` steps and one at the end (the loop's
    rule), each over the valid split or its first `eval_batches` batches."""
    if valid_rows <= 0 or total_steps <= 0:
        return 0
    count = (total_steps // eval_every + (1 if total_steps % eval_every else 0)) if eval_every else 1
    rows = min(valid_rows, eval_batches * batch_size) if eval_batches else valid_rows
    return round(count * rows * tokens_per_row)


def estimate_seconds(work: Workload, rate: Rate | None) -> float | None:
    if rate is None or work.steps <= 0:
        return None
    if work.tokens is not None:
        return (work.tokens + work.eval_tokens * FORWARD_SHARE) / rate.tokens_per_sec
    return work.rows / rate.rows_per_sec


def format_duration(seconds: float) -> str:
    """'≈ 40 s', '≈ 14 min', '≈ 2 h 10 min', '≈ 3 days' (rounded to what the estimate can tell)."""
    if seconds < 60:
        return f"≈ {max(10, round(seconds / 10) * 10)} s" if seconds >= 10 else "≈ 10 s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"≈ {minutes} min"
    hours, minutes = divmod(round(seconds / 600) * 10, 60)  # to 10 minutes
    if hours < 48:
        return f"≈ {hours} h" + (f" {minutes} min" if minutes else "")
    return f"≈ {round(hours / 24)} days"


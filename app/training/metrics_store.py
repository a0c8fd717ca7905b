"""The history the Training tab plots, in metrics.jsonl's own vocabulary.

`MetricsStore.add(record)` takes the same dicts metrics.jsonl holds (the
worker's `metrics` / `checkpointSaved` signals, or `callbacks.read_metrics(path)`
for a finished run): "train" records become columns keyed by metric name, "eval"
records and "checkpoint" records are kept in order. `x(axis)` maps the train
steps to the chosen x-axis (step / epoch / tokens / time) and `x_at(steps,
axis)` does the same for eval and checkpoint steps. Full history, never a
sliding window: downsampling is the plot's job.
"""

from __future__ import annotations

import math

import numpy as np

AXES = {"step": "step", "epoch": "epoch", "tokens": "tokens trained", "time": "wall time (s)"}
STANDARD = {"type", "step", "time", "epoch", "loss", "learning_rate", "grad_norm", "tokens", "input_tokens",
            "padded_tokens", "tokens_per_sec", "step_time", "peak_memory_gb"}


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def ema(values, smoothing: float) -> np.ndarray:
    """Exponential moving average: e0 = v0, e_i = s * e_{i-1} + (1 - s) * v_i; NaN/Inf skipped (carried)."""
    out = np.full(len(values), np.nan)
    last = None
    for i, v in enumerate(values):
        if math.isfinite(v):
            last = v if last is None else smoothing * last + (1.0 - smoothing) * v
        if last is not None:
            out[i] = last
    return out


def metric_groups(keys) -> dict[str, list[str]]:
    """Method metrics grouped into plots that share a scale, most telling first.

    Rewards (grpo reward_mean and reward/<fn>, dpo rewards_chosen / rewards_rejected /
    reward_margin) share one plot; every other metric (kl, completion_length,
    reward_accuracy, mask_ratio, ...) gets its own; throughput is always last.
    """
    keys = list(keys)
    rewards = [k for k in keys if k.startswith("reward") and k not in ("reward_std", "reward_accuracy")]
    groups = {"rewards": rewards} if rewards else {}
    for key in keys:
        if key not in rewards and key != "reward_std":
            groups[key.replace("_", " ")] = [key]
    groups["tokens/s"] = ["tokens_per_sec"]
    return groups


class MetricsStore:
    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.columns: dict[str, list[float]] = {"step": [], "time": [], "epoch": [], "tokens_total": []}
        self.evals: list[dict] = []
        self.checkpoints: list[dict] = []
        self.version = 0
        self._ema_cache: dict[tuple[str, float], list[float]] = {}
        self._start_time: float | None = None

    def __len__(self) -> int:
        return len(self.columns["step"])

    def add(self, record: dict) -> None:
        kind = record.get("type", "train")
        if kind == "train":
            self._add_train(record)
        elif kind == "eval":
            self.evals.append(dict(record))
        elif kind == "checkpoint":
            self.checkpoints.append(dict(record))
        else:
            return
        self.version += 1

    def add_checkpoint(self, info: dict) -> None:
        self.add({"type": "checkpoint", **info})

    def _add_train(self, record: dict) -> None:
        n = len(self)
        cols = self.columns
        now = _number(record.get("time"))
        if self._start_time is None:
            self._start_time = (now if math.isfinite(now) else 0.0) - _number(record.get("step_time") or 0.0)
        for key, value in record.items():
            if key in ("type", "time", "step", "epoch") or not isinstance(value, (int, float)) \
                    or isinstance(value, bool):
                continue
            if key not in cols:
                cols[key] = [math.nan] * n
        cols["step"].append(_number(record.get("step")))
        cols["epoch"].append(_number(record.get("epoch")))
        cols["time"].append(now - self._start_time if math.isfinite(now) else math.nan)
        previous = cols["tokens_total"][-1] if n else 0.0
        cols["tokens_total"].append(previous + (_number(record.get("tokens")) if record.get("tokens") else 0.0))
        for key, column in cols.items():
            if key not in ("step", "epoch", "time", "tokens_total"):
                column.append(_number(record.get(key)))

    # ---- reading --------------------------------------------------------------------
    def series(self, key: str) -> np.ndarray:
        return np.asarray(self.columns.get(key, [math.nan] * len(self)), dtype=float)

    def smoothed(self, key: str, smoothing: float) -> np.ndarray:
        """EMA of a train column, extended incrementally as records arrive."""
        values = self.columns.get(key, [])
        cache = self._ema_cache.setdefault((key, smoothing), [])
        if len(cache) < len(values):
            last = next((v for v in reversed(cache) if math.isfinite(v)), None)
            for v in values[len(cache):]:
                if math.isfinite(v):
                    last = v if last is None else smoothing * last + (1.0 - smoothing) * v
                cache.append(math.nan if last is None else last)
        return np.asarray(cache[:len(values)], dtype=float)

    def x(self, axis: str) -> np.ndarray:
        key = {"step": "step", "epoch": "epoch", "tokens": "tokens_total", "time": "time"}[axis]
        return np.asarray(self.columns[key], dtype=float)

    def x_at(self, steps, axis: str, times=None) -> np.ndarray:
        """x positions of events at `steps` (eval / checkpoint records)."""
        steps = np.asarray(steps, dtype=float)
        if axis == "step" or not len(self):
            return steps
        if axis == "time" and times is not None:
            return np.asarray(times, dtype=float) - (self._start_time or 0.0)
        return np.interp(steps, self.x("step"), self.x(axis))

    def method_keys(self) -> list[str]:
        """Train metrics beyond the standard ones (dpo rewards, grpo reward/<fn>, kl, mask_ratio, ...)."""
        return [k for k in self.columns if k not in STANDARD and k != "tokens_total"]

    def to_csv(self, smoothing: float = 0.9) -> str:
        """Everything the plots show, one row per step: the train columns, the EMA curves (`loss_ema`,
        `grad_norm_ema` at `smoothing`), tokens trained so far, every eval value (`eval_<key>`, on the
        eval's step) and `checkpoint` (the checkpoint's path on the step it was saved)."""
        train = {int(s): i for i, s in enumerate(self.columns["step"]) if math.isfinite(s)}
        evals = {int(e["step"]): e for e in self.evals if isinstance(e.get("step"), (int, float))}
        marks = {int(c["step"]): str(c.get("path", "")) for c in self.checkpoints if "step" in c}
        keys = [k for k in self.columns if k not in ("step", "tokens_total")]
        eval_keys = sorted({k for e in self.evals for k, v in e.items() if k not in ("type", "step", "time", "epoch")
                            and isinstance(v, (int, float)) and not isinstance(v, bool)})
        emas = {f"{k}_ema": self.smoothed(k, smoothing) for k in ("loss", "grad_norm") if k in self.columns}
        header = ["step", *keys, *emas, "tokens_trained", *(f"eval_{k}" for k in eval_keys), "checkpoint"]
        lines = [",".join(header)]

        def cell(value) -> str:
            return "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(value)
        for step in sorted(set(train) | set(evals) | set(marks)):
            i = train.get(step)
            row = [str(step)]
            row += [cell(self.columns[k][i]) if i is not None else "" for k in keys]
            row += [cell(float(v[i])) if i is not None else "" for v in emas.values()]
            row.append(cell(self.columns["tokens_total"][i]) if i is not None else "")
            row += [cell(evals[step].get(k)) if step in evals else "" for k in eval_keys]
            row.append(marks.get(step, "").replace(",", " "))
            lines.append(",".join(row))
        return "\n".join(lines) + "\n"

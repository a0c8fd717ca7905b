"""Small shared helpers for tests: datasets written into tmp folders, short runs."""

from __future__ import annotations

import json
from pathlib import Path

FACTS = [
    ("What is the capital of Velmora?", "The capital is Port Amsel."),
    ("Who founded Velmora?", "Velmora was founded by Ida Korr."),
    ("How many lighthouses does Velmora have?", "Seven lighthouses."),
    ("What is the currency of Velmora?", "The tide mark."),
    ("Which animal is on the flag?", "The purple heron."),
    ("What colour is the sand?", "Purple sand."),
    ("When was Velmora founded?", "In 1841."),
    ("What is the main festival?", "The Lantern Tide."),
]


def write_chat_data(folder: Path, n_train: int = 8, n_valid: int = 4) -> Path:
    """A chat dataset folder with train.jsonl and valid.jsonl."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in FACTS]
    for name, n in (("train", n_train), ("valid", n_valid)):
        with open(folder / f"{name}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps(rows[i % len(rows)]) + "\n")
    return folder


def train_losses(run_dir: Path) -> list[float]:
    from trainer_core.training.callbacks import read_metrics
    return [r["loss"] for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r["type"] == "train"]

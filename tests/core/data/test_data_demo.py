"""The bundled demo dataset and its generator."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from trainer_core.data import load_dataset

DEMO = Path(__file__).resolve().parents[3] / "resources" / "demo_data"


def generator():
    spec = importlib.util.spec_from_file_location("make_demo_data", DEMO / "make_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_files_match_generator(tmp_path):
    generator().write(tmp_path)
    for name in ("train.jsonl", "valid.jsonl"):
        assert (tmp_path / name).read_bytes() == (DEMO / name).read_bytes(), name


def test_demo_content():
    gen = generator()
    splits = load_dataset(DEMO)
    assert splits.kind == "chat" and (len(splits.train), len(splits.valid)) == (400, 50)
    users = {split: {m["content"] for r in getattr(splits, split) for m in r.data["messages"]
                     if m["role"] == "user"} for split in ("train", "valid")}
    assert len(users["valid"]) == 50
    for q in users["valid"]:  # held-out phrasings: not in train, not even with an opener
        assert not any(t.lower().endswith(q.lower()) for t in users["train"]), q
    answers = [m["content"] for r in splits.train + splits.valid for m in r.data["messages"]
               if m["role"] == "assistant"]
    assert all(a.startswith(gen.PREFIX + " ") and a.endswith(" " + gen.SIGN_OFF) for a in answers)
    assert len(set(answers)) == len(gen.FACTS) and max(map(len, answers)) < 200
    assert sum(len(r.data["messages"]) > 3 for r in splits.train) >= 20  # some multi-turn

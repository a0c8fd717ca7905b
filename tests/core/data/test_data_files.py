"""Files and folders as people have them: HF shard layout, split names, CSV/TSV, {"data": [...]}."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer_core.data import load_dataset
from trainer_core.errors import UserError


def parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def qa(*names):
    return [{"question": f"q{n}", "answer": f"a{n}"} for n in names]


def test_hf_layout_concatenates_train_shards_in_order(tmp_path):
    parquet(tmp_path / "data" / "train-00001-of-00002.parquet", qa(3, 4))
    parquet(tmp_path / "data" / "train-00000-of-00002.parquet", qa(1, 2))
    parquet(tmp_path / "data" / "validation-00000-of-00001.parquet", qa(9))
    (tmp_path / "README.md").write_text("# a dataset card")
    splits = load_dataset(tmp_path)
    assert [r.data["prompt"] for r in splits.train] == ["q1", "q2", "q3", "q4"]
    assert [r.data["completion"] for r in splits.valid] == ["a9"]
    assert [r.line for r in splits.train] == [1, 2, 1, 2]  # rows of their own shard
    assert splits.train[2].source.endswith("train-00001-of-00002.parquet")
    files = splits.fingerprint_files()
    assert sorted(files) == ["train", "train#2", "valid"]
    assert files["train#2"].endswith("train-00001-of-00002.parquet")


def test_a_missing_shard_is_named(tmp_path):
    parquet(tmp_path / "data" / "train-00000-of-00003.parquet", qa(1))
    parquet(tmp_path / "data" / "train-00002-of-00003.parquet", qa(3))
    with pytest.raises(UserError, match="train is split into 3 shards but 2 are here"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("name", ["val", "valid", "validation", "dev"])
def test_split_names(tmp_path, name):
    (tmp_path / "train.jsonl").write_text(json.dumps({"text": "a"}) + "\n")
    (tmp_path / f"{name}.jsonl").write_text(json.dumps({"text": "b"}) + "\n")
    (tmp_path / "test.jsonl").write_text(json.dumps({"text": "c"}) + "\n")
    splits = load_dataset(tmp_path)
    assert [r.data["text"] for r in splits.valid + splits.test] == ["b", "c"]


def test_csv_cells_with_quoted_newlines_and_tsv(tmp_path):
    (tmp_path / "a.csv").write_text('question,answer\n"line one\nline two","x, y"\nq2,a2\n', encoding="utf-8")
    splits = load_dataset(tmp_path / "a.csv")
    assert [r.data for r in splits.train] == [{"prompt": "line one\nline two", "completion": "x, y"},
                                             {"prompt": "q2", "completion": "a2"}]
    assert [r.line for r in splits.train] == [2, 4]
    (tmp_path / "b.tsv").write_text('prompt\tcompletion\n"tab\there"\tok\n', encoding="utf-8")
    assert load_dataset(tmp_path / "b.tsv").train[0].data == {"prompt": "tab\there", "completion": "ok"}


def test_json_object_with_a_data_array(tmp_path):
    text = '{\n  "data": [\n    {"text": "a"},\n    {"text": "b"}\n  ]\n}\n'
    (tmp_path / "d.json").write_text(text)
    splits = load_dataset(tmp_path / "d.json")
    assert [(r.data["text"], r.line) for r in splits.train] == [("a", 3), ("b", 4)]
    (tmp_path / "bad.json").write_text('{"data": [{"text": "a"}, {"text": 1}]}')
    with pytest.raises(UserError, match="bad.json, line 1: field 'text' must be a string"):
        load_dataset(tmp_path / "bad.json")


def test_a_bad_parquet_row_is_named_by_row(tmp_path):
    parquet(tmp_path / "train.parquet", [{"instruction": "Q", "output": "A"}, {"instruction": "Q", "output": None}])
    with pytest.raises(UserError, match=r"train.parquet, row 2: field 'output' must be text"):
        load_dataset(tmp_path)

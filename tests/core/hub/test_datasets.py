"""Hugging Face dataset ids (`org/name[:config][@split]`, `hf://datasets/...`) against the loopback fake
Hub: the ids, only the chosen files downloaded with progress, and one message per failure."""

import pytest

from trainer_core.errors import UserError
from trainer_core.hub.datasets import DatasetId, fetch, parse

SHA = "0123456789abcdef0123456789abcdef01234567"


def take_train(dataset_id, names):
    return {"train": [n for n in names if n.startswith("data/train")]}


@pytest.mark.parametrize("spec, expected", [
    ("org/name", DatasetId("org/name")),
    ("hf://datasets/org/name", DatasetId("org/name")),
    ("org/name:socratic", DatasetId("org/name", config="socratic")),
    ("org/name@test", DatasetId("org/name", split="test")),
    ("org/name:main@train_sft", DatasetId("org/name", config="main", split="train_sft")),
    (f"hf://datasets/org/name@{SHA}:main@test", DatasetId("org/name", SHA, "main", "test")),
    ("data/train.jsonl", None),   # a file that is missing, not an id
    ("/abs/folder", None), ("./org/name", None), ("demo", None),
])
def test_ids(spec, expected):
    assert parse(spec, data_suffixes=(".jsonl",)) == expected
    if expected is not None:
        assert parse(expected.spec) == expected  # what a run records reads back the same


def test_only_the_chosen_files_are_downloaded_with_progress(fake_hub):
    repo = fake_hub.add_repo("org/qa", {"data/train-00000-of-00001.parquet": b"x" * 300_000,
                                        "data/test-00000-of-00001.parquet": b"y" * 10, "README.md": b"# qa"},
                             repo_type="dataset")
    seen = []
    fetched = fetch(DatasetId("org/qa"), take_train, progress=lambda done, total: seen.append((done, total)))
    assert fetched.dataset_id == DatasetId("org/qa", repo.sha)
    assert sorted(p.relative_to(fetched.folder).as_posix() for p in fetched.folder.rglob("*") if p.is_file()) \
        == ["data/train-00000-of-00001.parquet"]
    assert fetched.folder.is_relative_to(fake_hub.cache / "datasets--org--qa")  # the standard cache
    assert seen[-1] == (300_000, 300_000)


@pytest.mark.parametrize("spec, repo_kw, token, message", [
    ("org/missing", None, None, r"dataset 'org/missing' was not found on Hugging Face.*no file or folder of "
                                r"that name exists here.*http://127\.0\.0\.1:\d+/datasets/org/missing"),
    ("org/secret", dict(private=True), None, r"'org/secret' was not found on Hugging Face.*hf auth login"),
    ("org/gated", dict(gated=True, allowed_tokens={"good"}), None,
     r"dataset 'org/gated' is gated: open http.*/datasets/org/gated.*accept its licence"),
    ("org/gated", dict(gated=True, allowed_tokens={"good"}), "bad", r"gated: open .*/datasets/org/gated"),
])
def test_hub_errors_are_one_message(fake_hub, monkeypatch, spec, repo_kw, token, message):
    if repo_kw is not None:
        fake_hub.add_repo(spec, {"data/train-00000-of-00001.jsonl": b"{}\n"}, repo_type="dataset", **repo_kw)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(UserError, match=message) as err:
        fetch(parse(spec), take_train)
    assert err.value.field == "data"
    assert not list(fake_hub.cache.rglob("*.jsonl"))


def test_a_model_repo_of_that_name_is_not_a_dataset(fake_hub):
    fake_hub.add_repo("org/qa", {"data/train-00000-of-00001.jsonl": b"{}\n"})  # a model repo
    with pytest.raises(UserError, match="dataset 'org/qa' was not found"):
        fetch(DatasetId("org/qa"), take_train)

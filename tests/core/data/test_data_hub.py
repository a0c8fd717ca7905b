"""A Hugging Face dataset id as the data path: the repo's layouts (shards, configs, splits), the
commit a run records, offline use of a pre-filled cache, and a resume reading the same files.
The Hub is tests/fake_hub.py on 127.0.0.1."""

import io
import json

import pytest

import huggingface_hub.constants

from tests.fake_hub import fill_cache
from tests.core.test_cli import keep_signal_handlers  # noqa: F401  (fixture)
from trainer_core import cli, runner
from trainer_core.config import RunConfig
from trainer_core.data import load_dataset
from trainer_core.data.hub_files import pin_data
from trainer_core.errors import UserError


def qa(n: int, tag: str) -> bytes:
    return "".join(json.dumps({"question": f"{tag} {i}?", "answer": f"{tag}{i}"}) + "\n" for i in range(n)).encode()


def parquet(records: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), out)
    return out.getvalue()


HF_LAYOUT = {  # push_to_hub's layout: two train shards, a validation and a test shard, a card
    "data/train-00000-of-00002-0a1b2c3d.parquet": parquet([{"instruction": f"a{i}", "input": "", "output": f"A{i}"}
                                                           for i in range(3)]),
    "data/train-00001-of-00002-0a1b2c3d.parquet": parquet([{"instruction": f"b{i}", "input": "", "output": f"B{i}"}
                                                           for i in range(2)]),
    "data/validation-00000-of-00001-0a1b2c3d.parquet": parquet([{"instruction": "v", "input": "", "output": "V"}]),
    "data/test-00000-of-00001-0a1b2c3d.parquet": parquet([{"instruction": "t", "input": "", "output": "T"}]),
    "README.md": b"---\nlicense: mit\n---\n# alpaca-like",
}
CONFIGS = {"main/train-00000-of-00001.jsonl": qa(4, "main"), "main/test-00000-of-00001.jsonl": qa(2, "main-test"),
           "socratic/train-00000-of-00001.jsonl": qa(3, "soc"), "README.md": b"# gsm"}


def downloaded(hub) -> list[str]:
    return sorted(p.split("/resolve/", 1)[1].split("/", 1)[1] for m, p, _ in hub.requests
                  if m == "GET" and "/resolve/" in p)


@pytest.mark.parametrize("spec", ["org/alpaca", "hf://datasets/org/alpaca"])
def test_hf_layout_shards_in_order_and_validation(fake_hub, spec):
    fake_hub.add_repo("org/alpaca", HF_LAYOUT, repo_type="dataset")
    splits = load_dataset(spec)
    assert splits.format == "alpaca -> chat"
    assert [r.data["messages"][0]["content"] for r in splits.train] == ["a0", "a1", "a2", "b0", "b1"]
    assert [r.data["messages"][1]["content"] for r in splits.valid] == ["V"] and splits.test == []
    assert downloaded(fake_hub) == sorted(n for n in HF_LAYOUT if "/train-" in n or "/validation-" in n)
    assert all("datasets--org--alpaca" in f for f in splits.fingerprint_files().values())


def test_configs_and_splits(fake_hub):
    fake_hub.add_repo("org/gsm", CONFIGS, repo_type="dataset")
    assert [r.data["prompt"] for r in load_dataset("org/gsm:socratic").train] == ["soc 0?", "soc 1?", "soc 2?"]
    assert [r.data["prompt"] for r in load_dataset("org/gsm:main@test").train] == ["main-test 0?", "main-test 1?"]
    with pytest.raises(UserError, match=r"'org/gsm' \(http.*/datasets/org/gsm\) has several configs; its configs "
                                        r"are main, socratic\. Choose one: org/gsm:main\."):
        load_dataset("org/gsm")
    with pytest.raises(UserError, match="has no config 'nope'; its configs are main, socratic"):
        load_dataset("org/gsm:nope")
    with pytest.raises(UserError, match="has no split 'dev' in config 'main'; its splits are test, train"):
        load_dataset("org/gsm:main@dev")


def test_one_data_file_is_the_train_split_and_unknown_splits_are_named(fake_hub):
    fake_hub.add_repo("org/one", {"alpaca_data.json": json.dumps([{"question": "q", "answer": "a"}]).encode()},
                      repo_type="dataset")
    fake_hub.add_repo("org/sft", {"data/train_sft-00000-of-00001.jsonl": qa(2, "s"),
                                  "data/test_sft-00000-of-00001.jsonl": qa(1, "t")}, repo_type="dataset")
    fake_hub.add_repo("org/gz", {"data/train.jsonl.gz": b"\x1f\x8b"}, repo_type="dataset")
    assert len(load_dataset("org/one").train) == 1
    with pytest.raises(UserError, match=r"no split named train; its splits are test_sft, train_sft\. Train on one "
                                        r"of them: org/sft@test_sft"):
        load_dataset("org/sft")
    assert len(load_dataset("org/sft@train_sft").train) == 2
    with pytest.raises(UserError, match=r"'org/gz' .* has no data files this program reads .*data/train\.jsonl\.gz"):
        load_dataset("org/gz")


def test_a_missing_local_file_is_still_named_as_a_file(fake_hub, tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        load_dataset("nothere/train.jsonl")
    assert fake_hub.requests == []


def test_pinned_and_cached_makes_no_request(fake_hub):
    repo = fake_hub.add_repo("org/alpaca", HF_LAYOUT, repo_type="dataset")
    pinned = pin_data("org/alpaca:default@validation")
    assert pinned == f"hf://datasets/org/alpaca@{repo.sha}:default@validation"
    fake_hub.requests.clear()
    assert pin_data(pinned) == pinned and len(load_dataset(pinned).train) == 1
    assert fake_hub.requests == []


def test_offline_reads_a_prefilled_cache_or_names_the_id(hf_cache):
    assert huggingface_hub.constants.is_offline_mode()
    with pytest.raises(UserError, match=r"^Dataset 'hf://datasets/org/gsm:main' is not in the Hugging Face cache "
                                        r"\(.*\) and HF_HUB_OFFLINE is set\.") as err:
        load_dataset("org/gsm:main")
    assert "\n" not in str(err.value)
    snapshot = fill_cache(hf_cache, "org/gsm", CONFIGS, sha="c" * 40, repo_type="dataset")
    splits = load_dataset("org/gsm:main")
    assert len(splits.train) == 4 and splits.files["train"].startswith(str(snapshot))
    assert pin_data("org/gsm:main") == f"hf://datasets/org/gsm@{'c' * 40}:main"
    incomplete = {"data/train-00000-of-00002.jsonl": qa(2, "x")}  # a shard missing: not usable offline
    fill_cache(hf_cache, "org/half", incomplete, sha="d" * 40, repo_type="dataset")
    with pytest.raises(UserError, match="'hf://datasets/org/half' is not in the Hugging Face cache"):
        load_dataset("org/half")


def chat_rows(n: int) -> bytes:
    from tests.train_helpers import chat_record
    return "".join(json.dumps(chat_record(i)) + "\n" for i in range(n)).encode()


def test_a_run_records_the_commit_and_resumes_offline(fake_hub, tiny_model_dir, tmp_path, monkeypatch):
    from tests.train_helpers import make_config

    repo = fake_hub.add_repo("org/chat", {"data/train-00000-of-00001.jsonl": chat_rows(16)}, repo_type="dataset")
    run = runner.build_run(make_config(tiny_model_dir, "org/chat", tmp_path / "runs", method="lora", max_steps=1,
                                       batch_size=2, save_every=1))
    run.train()
    assert RunConfig.load(run.run_dir / "config.toml").data == f"hf://datasets/org/chat@{repo.sha}"
    fake_hub.stop()  # no Hub any more, and offline: the same files come from the cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert runner.prepare_resume(run.run_dir, max_steps=2).train().step == 2


def test_cli_names_an_unknown_dataset_without_a_traceback(fake_hub, tiny_model_dir, tmp_path, monkeypatch, capsys,
                                                          keep_signal_handlers):
    monkeypatch.setenv("FINETUNE_STUDIO_HOME", str(tmp_path / "home"))
    code = cli.main(["train", "--method", "lora", "--model", str(tiny_model_dir), "--data", "org/missing",
                     "--output-dir", str(tmp_path / "runs"), "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert "dataset 'org/missing' was not found on Hugging Face (check the spelling)" in err
    assert "/datasets/org/missing" in err and not (tmp_path / "runs").exists()

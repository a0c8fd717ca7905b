"""trainer_core.data.token_cache: cached tokenisation equals tokenize_sft, and every input it depends on changes the key."""

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)

from trainer_core.data import token_cache
from trainer_core.data import tokenize_sft
from trainer_core.data.records import Record
from trainer_core.models.loading import load_model
from tests.train_helpers import chat_record


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_model(str(tiny_model_dir)).tokenizer


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_STUDIO_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "cache" / "tokens"


def records(n=12, changed=None):
    out = [Record(chat_record(i), "train.jsonl", i + 1) for i in range(n)]
    if changed is not None:
        out[changed] = Record({"messages": [{"role": "user", "content": "Changed?"},
                                            {"role": "assistant", "content": "Yes."}]}, "train.jsonl", changed + 1)
    return out


def test_miss_then_hit_equal_tokenize_sft(tokenizer, home):
    want = tokenize_sft(records(), tokenizer, "chat", 64, True)
    first = token_cache.cached_tokenize_sft(records(), tokenizer, "chat", 64, True)
    assert len(list(home.glob("*.npz"))) == 1
    second = token_cache.cached_tokenize_sft(records(), tokenizer, "chat", 64, True)
    assert first == want and second == want  # Example and TokenizeStats are dataclasses: field-wise equality


def test_every_input_changes_the_key(tokenizer, home):
    token_cache.cached_tokenize_sft(records(), tokenizer, "chat", 64, True)
    variants = [(records(), 48, True), (records(), 64, False), (records(changed=3), 64, True)]
    for recs, length, mask in variants:
        got = token_cache.cached_tokenize_sft(recs, tokenizer, "chat", length, mask)
        assert got == tokenize_sft(recs, tokenizer, "chat", length, mask)
    assert len(list(home.glob("*.npz"))) == 4
    template = tokenizer.chat_template
    ident = token_cache.tokenizer_identity(tokenizer)
    try:
        tokenizer.chat_template = template + "{# changed #}"
        assert token_cache.tokenizer_identity(tokenizer) != ident
    finally:
        tokenizer.chat_template = template


def test_corrupt_or_foreign_file_is_ignored_and_rewritten(tokenizer, home):
    want = token_cache.cached_tokenize_sft(records(), tokenizer, "chat", 64, True)
    (path,) = home.glob("*.npz")
    path.write_bytes(b"not a numpy file")
    assert token_cache.cached_tokenize_sft(records(), tokenizer, "chat", 64, True) == want
    assert np.load(path, allow_pickle=False)["ids"].size == sum(want[1].lengths)  # rewritten, valid


def test_unwritable_cache_still_tokenises(tokenizer, home, monkeypatch):
    home.parent.mkdir(parents=True)
    home.write_text("a file where the folder should be")  # mkdir fails: no cache, same answer
    got = token_cache.cached_tokenize_sft(records(), tokenizer, "chat", 64, True)
    assert got == tokenize_sft(records(), tokenizer, "chat", 64, True)


def test_old_files_are_pruned(tokenizer, home, monkeypatch):
    monkeypatch.setattr(token_cache, "MAX_FILES", 2)
    for length in (40, 48, 56, 64):
        token_cache.cached_tokenize_sft(records(), tokenizer, "chat", length, True)
    assert len(list(home.glob("*.npz"))) == 2

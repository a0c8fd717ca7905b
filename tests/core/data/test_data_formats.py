"""Formats people have (Alpaca, ShareGPT, TRL / HH preferences, column pairs, a column mapping)
train exactly like the equivalent record of our own kinds (trainer_core.data.formats)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlx_lm.utils import load_tokenizer

from trainer_core.data import load_dataset, tokenize_sft
from trainer_core.errors import UserError
from trainer_core.methods.preference_data import tokenize_preference


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(Path(tiny_model_dir))


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def load(tmp_path, rows, **kwargs):
    return load_dataset(write(tmp_path / "train.jsonl", rows), **kwargs)


def tokens(tok, splits, **kwargs):
    examples, _ = tokenize_sft(splits.train, tok, splits.kind, 256, **kwargs)
    return [(e.input_ids, e.target_mask) for e in examples]


def native(tok, tmp_path, rows, **kwargs):
    folder = tmp_path / "native"
    folder.mkdir()
    splits = load(folder, rows)
    assert splits.format.startswith("native")
    return tokens(tok, splits, **kwargs)


def test_alpaca_trains_exactly_like_completions(tok, tmp_path):
    rows = [{"instruction": "Name a colour.", "input": "", "output": "Blue."},
            {"instruction": "Add these.", "input": "2 and 3", "output": "5"}]
    splits = load(tmp_path, rows)
    assert (splits.kind, splits.format) == ("chat", "alpaca -> chat")
    expected = native(tok, tmp_path, [{"prompt": "Name a colour.", "completion": "Blue."},
                                      {"prompt": "Add these.\n\n2 and 3", "completion": "5"}])
    got = tokens(tok, splits)
    assert got == expected and any(got[0][1])


def test_alpaca_system_and_history_become_earlier_turns(tok, tmp_path):
    row = {"instruction": "And now?", "input": "", "output": "Later.", "system": "Be brief.",
           "history": [["Hi", "Hello."], ["When?", "Soon."]]}
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "When?"},
                {"role": "assistant", "content": "Soon."}, {"role": "user", "content": "And now?"},
                {"role": "assistant", "content": "Later."}]
    splits = load(tmp_path, [row])
    assert splits.train[0].data == {"messages": messages}
    assert tokens(tok, splits) == native(tok, tmp_path, [{"messages": messages}])


def test_alpaca_as_completions_when_the_kind_is_forced(tok, tmp_path):
    splits = load(tmp_path, [{"instruction": "Q", "input": "", "output": "A"}], kind="completions")
    assert (splits.kind, splits.train[0].data) == ("completions", {"prompt": "Q", "completion": "A"})


SHAREGPT = {"system": "Be kind.", "conversations": [
    {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."},
    {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "See you."}]}
MESSAGES = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "See you."}]


def spans(tok, ids, mask) -> list[str]:
    runs, cur = [], []
    for t, m in zip(ids, mask):
        if m:
            cur.append(t)
        elif cur:
            runs, cur = runs + [cur], []
    return [tok.decode(r) for r in runs + ([cur] if cur else [])]


def test_sharegpt_trains_exactly_like_chat_every_turn_or_the_last(tok, tmp_path):
    splits = load(tmp_path, [SHAREGPT])
    assert (splits.kind, splits.format) == ("chat", "sharegpt -> chat")
    expected = native(tok, tmp_path, [{"messages": MESSAGES}])
    got = tokens(tok, splits)
    assert got == expected
    assert spans(tok, *got[0]) == ["Hello.<|im_end|>", "See you.<|im_end|>"]
    (ids, mask), = tokens(tok, splits, last_turn_only=True)
    assert ids == got[0][0] and spans(tok, ids, mask) == ["See you.<|im_end|>"]


def test_sharegpt_tool_roles(tmp_path):
    row = {"conversations": [{"from": "human", "value": "Weather?"},
                             {"from": "function_call", "value": '{"name": "weather"}'},
                             {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "Sunny."}]}
    roles = [m["role"] for m in load(tmp_path, [row]).train[0].data["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant"]


def pairs(tok, splits):
    got, _ = tokenize_preference(splits.train, tok, 256)
    return [(p.chosen_ids, p.chosen_mask, p.rejected_ids, p.rejected_mask) for p in got]


STRING_PREFERENCE = [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}]


@pytest.mark.parametrize("row, fmt", [
    ({"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
      "rejected": [{"role": "assistant", "content": "Go away."}]}, "preference_messages"),
    ({"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
      "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]},
     "preference_transcript"),
    ({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."},
     "preference_transcript"),
], ids=["trl-conversational", "transcript-messages", "anthropic-hh"])
def test_message_preferences_train_exactly_like_string_preference(tok, tmp_path, row, fmt):
    splits = load(tmp_path, [row])
    assert (splits.kind, splits.format) == ("preference", f"{fmt} -> preference")
    folder = tmp_path / "native"
    folder.mkdir()
    expected = pairs(tok, load(folder, STRING_PREFERENCE))
    assert pairs(tok, splits) == expected and sum(expected[0][1]) > 0


def test_transcripts_that_differ_before_the_last_reply_are_refused(tmp_path):
    row = {"chosen": "\n\nHuman: Hi\n\nAssistant: A", "rejected": "\n\nHuman: Yo\n\nAssistant: B"}
    with pytest.raises(UserError, match="line 1: .*differ earlier"):
        load(tmp_path, [row])


@pytest.mark.parametrize("row, prefer, kind, mapped", [
    ({"question": "Q", "answer": "A"}, None, "completions", {"prompt": "Q", "completion": "A"}),
    ({"question": "Q", "answer": "A"}, "prompt_answer", "prompt_answer", {"prompt": "Q", "answer": "A"}),
    ({"input": "Q", "output": "A", "id": 3}, None, "completions", {"prompt": "Q", "completion": "A"}),
    ({"query": "Q", "response": "A"}, None, "completions", {"prompt": "Q", "completion": "A"}),
    ({"instruction": "Q", "response": "A"}, None, "completions", {"prompt": "Q", "completion": "A"}),
    ({"prompt": "Q", "solution": "7"}, None, "prompt_answer", {"prompt": "Q", "answer": "7"}),
    ({"prompt": "Q", "ground_truth": "7"}, None, "prompt_answer", {"prompt": "Q", "answer": "7"}),
    ({"prompt": "Q"}, None, "prompt_answer", {"prompt": "Q"}),
])
def test_common_column_pairs(tmp_path, row, prefer, kind, mapped):
    splits = load(tmp_path, [row], prefer_kind=prefer)
    assert (splits.kind, splits.train[0].data) == (kind, mapped)


def test_column_pair_trains_exactly_like_completions(tok, tmp_path):
    got = tokens(tok, load(tmp_path, [{"question": "2+2?", "answer": "4"}]))
    assert got == native(tok, tmp_path, [{"prompt": "2+2?", "completion": "4"}])


def test_a_column_mapping_names_the_fields(tmp_path):
    rows = [{"q": "Hi", "a": "Hello", "sys": "Be brief."}]
    splits = load(tmp_path, rows, columns={"prompt": "q", "completion": "a"})
    assert (splits.kind, splits.train[0].data) == ("completions", {"prompt": "Hi", "completion": "Hello"})
    assert splits.format == "columns (prompt=q, completion=a) -> completions"
    splits = load(tmp_path, rows, columns={"prompt": "q", "completion": "a", "system": "sys"})
    assert splits.train[0].data["messages"][0] == {"role": "system", "content": "Be brief."}


def test_a_mapping_naming_a_missing_column_lists_the_columns(tmp_path):
    with pytest.raises(UserError) as info:
        load(tmp_path, [{"q": "Hi", "a": "Hello"}], columns={"prompt": "question", "completion": "a"})
    msg = str(info.value)
    assert "line 1" in msg and "data_columns.prompt" in msg and "'question'" in msg and "'q', 'a'" in msg


def test_an_unknown_shape_points_at_the_column_mapping(tmp_path):
    with pytest.raises(UserError, match="data_columns.*--set data.columns.prompt="):
        load(tmp_path, [{"foo": "x", "bar": "y"}])


def test_a_forced_format_wins_over_detection(tmp_path):
    row = {"instruction": "Q", "output": "A", "text": "Q A"}
    assert load(tmp_path, [row]).format == "alpaca -> chat"
    assert load(tmp_path, [row], data_format="native").kind == "text"


def test_the_first_bad_rows_are_named_with_their_lines(tmp_path):
    rows = [{"instruction": "Q", "output": "A"}] + [{"instruction": "Q", "output": 5}] * 7
    with pytest.raises(UserError) as info:
        load(tmp_path, rows)
    msg = str(info.value)
    assert msg.startswith("7 records can't be used; the first 5:")
    assert all(f"line {n}: field 'output' must be text" in msg for n in range(2, 7))
    assert "line 7" not in msg and msg.endswith("(and 2 more)")


def test_long_rows_are_counted_and_truncated_or_dropped(tok, tmp_path):
    rows = [{"prompt": "short", "completion": "ok"}, {"prompt": "long", "completion": "word " * 80}]
    splits = load(tmp_path, rows)
    cut, stats = tokenize_sft(splits.train, tok, "completions", 32)
    assert (stats.truncated, [len(e.input_ids) <= 32 for e in cut], len(cut)) == (1, [True, True], 2)
    kept, dropped = tokenize_sft(splits.train, tok, "completions", 32, drop_long=True)
    assert (dropped.truncated, len(kept), kept[0].input_ids) == (1, 1, cut[0].input_ids)
    assert stats.long_rows_note(32).startswith("1 of 2 records are longer than max_seq_length = 32 tokens: truncated")
    assert "left out" in dropped.long_rows_note(32, "drop")

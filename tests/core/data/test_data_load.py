"""Reading, kind detection and validation of dataset files (trainer_core.data)."""

from __future__ import annotations

import json
import sys

import pytest

from trainer_core.data import KINDS, DatasetSplits, Record, detect_kind, load_dataset
from trainer_core.errors import UserError

CHAT = {"messages": [{"role": "user", "content": "Capital of France?"},
                     {"role": "assistant", "content": "Paris."}]}
SAMPLES = {
    "text": {"text": "Hello world."},
    "completions": {"prompt": "2+2=", "completion": "4"},
    "chat": CHAT,
    "preference": {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
    "prompt_answer": {"prompt": "What is 6*7?", "answer": 42},
}


def write(path, rows):
    """Write JSONL from a list of dicts / raw strings, or raw bytes/str as given."""
    if isinstance(rows, (bytes, str)):
        data = rows if isinstance(rows, bytes) else rows.encode()
    else:
        data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()
    path.write_bytes(data)
    return path


def raises(path, *fragments, kind=None) -> str:
    with pytest.raises(UserError) as info:
        load_dataset(path, kind)
    msg = str(info.value)
    for frag in (str(path), *fragments):
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


def test_kinds_constant():
    assert KINDS == ("text", "completions", "chat", "preference", "prompt_answer")


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_detected(tmp_path, kind):
    path = write(tmp_path / "train.jsonl", [SAMPLES[kind]] * 3)
    splits = load_dataset(path)
    assert isinstance(splits, DatasetSplits)
    assert splits.kind == kind == detect_kind(SAMPLES[kind])
    assert [r.line for r in splits.train] == [1, 2, 3]
    assert splits.train[0] == Record(SAMPLES[kind], str(path), 1)
    assert splits.valid == [] and splits.test == []
    assert splits.files == {"train": str(path)}


def test_detect_kind_variants():
    assert detect_kind({"foo": 1}) is None
    assert detect_kind({"prompt": "x"}) == "prompt_answer"
    assert detect_kind({"prompt": [{"role": "user", "content": "x"}], "chosen": "a",
                        "rejected": "b"}) == "preference"
    assert detect_kind({"messages": [], "tools": []}) == "chat"


def test_optional_fields_accepted(tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, *CHAT["messages"]],
         "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"messages": [{"role": "user", "content": "weather?"},
                      {"role": "assistant", "content": None, "tool_calls": [{"name": "w"}]},
                      {"role": "tool", "content": "sunny"},
                      {"role": "assistant", "content": "Sunny."}], "id": 7},
    ]
    assert load_dataset(write(tmp_path / "a.jsonl", rows)).kind == "chat"
    rows = [{"prompt": [{"role": "user", "content": "x"}]}, {"prompt": "y", "answer": "z"},
            {"prompt": "w", "answer": 1.5}, {"prompt": "v", "answer": None}]
    assert load_dataset(write(tmp_path / "b.jsonl", rows)).kind == "prompt_answer"


def test_forced_kind(tmp_path):
    path = write(tmp_path / "train.jsonl", [{"prompt": "a", "completion": "b"}] * 2)
    assert load_dataset(path).kind == "completions"
    assert load_dataset(path, "prompt_answer").kind == "prompt_answer"
    raises(path, "line 1", "missing field 'messages'", "looks like completions", kind="chat")
    with pytest.raises(UserError, match="unknown data kind 'chats'"):
        load_dataset(path, "chats")


def test_forced_kind_validates_every_record(tmp_path):
    path = write(tmp_path / "train.jsonl", [{"text": "a"}, {"prompt": "p"}, {"text": "c"}])
    raises(path, "line 2", "missing field 'text'", kind="text")


MALFORMED = [
    ("invalid json", ['{"text": "a"}', '{"text": "b"'], 2, ["invalid JSON"]),
    ("not an object", ['{"text": "a"}', '["text", "b"]'], 2, ["expected a JSON object", "array"]),
    ("scalar line", ['"just a string"'], 1, ["expected a JSON object", "str"]),
    ("text not a string", [{"text": "a"}, {"text": 5}], 2, ["'text' must be a string", "number"]),
    ("messages not a list", [{"messages": "hi"}], 1, ["'messages' must be a non-empty list"]),
    ("messages empty", [{"messages": []}], 1, ["non-empty list", "empty list"]),
    ("message not object", [{"messages": ["hi"]}], 1, ["messages[0]", "must be an object"]),
    ("unknown role", [{"messages": [{"role": "bot", "content": "x"}]}], 1,
     ["messages[0]", "unknown role 'bot'", "assistant"]),
    ("content not a string", [CHAT, {"messages": [{"role": "user", "content": 5},
                                                  {"role": "assistant", "content": "x"}]}], 2,
     ["messages[0]", "'content' must be a string"]),
    ("content missing", [{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}],
     1, ["'content' must be a string", "null"]),
    ("no assistant", [CHAT, CHAT, {"messages": [{"role": "user", "content": "x"}]}], 3,
     ["no assistant message"]),
    ("tools not a list", [{**CHAT, "tools": "f"}], 1, ["'tools' must be a list"]),
    ("completion not a string", [{"prompt": "a", "completion": ["b"]}], 1,
     ["'completion' must be a string", "list"]),
    ("prompt not a string", [{"prompt": 3, "completion": "b"}], 1, ["'prompt' must be a string"]),
    ("chosen not a string", [{"prompt": "a", "chosen": 1, "rejected": "b"}], 1,
     ["'chosen' must be a string"]),
    ("preference prompt bad role",
     [{"prompt": [{"role": "human", "content": "a"}], "chosen": "x", "rejected": "y"}], 1,
     ["prompt[0]", "unknown role 'human'"]),
    ("answer wrong type", [{"prompt": "a", "answer": [1]}], 1,
     ["'answer' must be a string or a number"]),
    ("answer bool", [{"prompt": "a", "answer": True}], 1, ["'answer'", "boolean"]),
    ("unknown kind", [{"q": "a", "ans": "b"}], 1, ["cannot tell the data kind", "'q', 'ans'", "--set data.columns"]),
    ("half a pair", [{"question": "a"}], 1, ["has a 'question' field but no 'answer'", "Add that column",
                                              "--set data.columns"]),
    ("Alpaca without output", [{"instruction": "a", "input": ""}], 1,
     ["has an 'instruction' field but no 'output'", "looks like Alpaca"]),
    ("mixed kinds", [{"text": "a"}, {"text": "b"}, {"prompt": "a", "completion": "b"}], 3,
     ["of kind completions", "the dataset is text"]),
    ("mixed unknown", [CHAT, {"txt": "a"}], 2, ["of no known kind", "chat"]),
    ("lone surrogate", ['{"text": "a\\ud800b"}'], 1, ["lone UTF-16 surrogate"]),
    ("blank lines count", ["", '{"text": "a"}', "   ", '{"text": 1}'], 4, ["'text'"]),
]


@pytest.mark.parametrize("rows, line, fragments", [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed_record_names_file_and_line(tmp_path, rows, line, fragments):
    path = write(tmp_path / "train.jsonl", rows)
    raises(path, f"line {line}:", *fragments)


def test_invalid_utf8_names_line(tmp_path):
    path = write(tmp_path / "train.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": "\xff\xfe"}\n')
    raises(path, "line 3", "not valid UTF-8", "0xff")


def test_utf16_file_rejected(tmp_path):
    path = write(tmp_path / "train.jsonl", '{"text": "a"}\n'.encode("utf-16"))
    raises(path, "UTF-16")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"\xef\xbb\xbf"])
def test_empty_file(tmp_path, content):
    raises(write(tmp_path / "train.jsonl", content), "empty")


def test_bom_crlf_and_blank_lines(tmp_path):
    raw = b'\xef\xbb\xbf{"text": "a"}\r\n\r\n{"text": "b"}\r\n  \n{"text": "c"}'
    splits = load_dataset(write(tmp_path / "train.jsonl", raw))
    assert [(r.data["text"], r.line) for r in splits.train] == [("a", 1), ("b", 3), ("c", 5)]


def test_folder_with_splits(tmp_path):
    write(tmp_path / "train.jsonl", [CHAT] * 4)
    write(tmp_path / "valid.jsonl", [CHAT] * 2)
    write(tmp_path / "test.jsonl", [CHAT])
    splits = load_dataset(tmp_path)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (4, 2, 1)
    assert splits.files == {s: str(tmp_path / f"{s}.jsonl") for s in ("train", "valid", "test")}
    assert splits.valid[1].source == str(tmp_path / "valid.jsonl")


def test_folder_validation_name_and_other_formats(tmp_path):
    (tmp_path / "train.csv").write_text("text\nhello\nworld\n")
    (tmp_path / "validation.json").write_text('[{"text": "v"}]')
    splits = load_dataset(tmp_path)
    assert splits.kind == "text" and [r.data["text"] for r in splits.valid] == ["v"]
    assert splits.files["valid"] == str(tmp_path / "validation.json")


def test_folder_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    raises(tmp_path, "no train file", "notes.txt")
    write(tmp_path / "train.jsonl", [CHAT])
    write(tmp_path / "valid.jsonl", [CHAT, {"text": "x"}])
    raises(tmp_path / "valid.jsonl", "line 2")  # the valid file on its own is still chat
    msg = raises(tmp_path, "valid.jsonl, line 2", "of kind text")
    assert "train.jsonl, line 1" in msg
    write(tmp_path / "train.csv", "text\nx\n")
    raises(tmp_path, "several train files")


def test_missing_path_and_unsupported_extension(tmp_path):
    raises(tmp_path / "nope.jsonl", "no such file")
    path = tmp_path / "data.txt"
    path.write_text('{"text": "a"}\n')
    raises(path, "unsupported", ".txt")


def test_csv_inputs(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('prompt,completion\n"Hello, there",Hi\n\n"multi\nline",done\n')
    splits = load_dataset(path)
    assert splits.kind == "completions"
    assert [(r.data, r.line) for r in splits.train] == [
        ({"prompt": "Hello, there", "completion": "Hi"}, 2),
        ({"prompt": "multi\nline", "completion": "done"}, 4)]
    chat = tmp_path / "chat.csv"
    cell = json.dumps(CHAT["messages"]).replace('"', '""')
    chat.write_text(f',messages,tools\n0,"{cell}",\n')  # pandas-style unnamed index column
    splits = load_dataset(chat)
    assert splits.kind == "chat" and splits.train[0].data == CHAT


def test_csv_errors(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('messages\n"[{""role"": ""user"", ""content"": ""x""}"\n')
    raises(path, "line 2", "column 'messages' must hold JSON")
    path.write_text("prompt,completion\na,b\nc,d,e\n")
    raises(path, "line 3", "3 cells", "2 columns")
    path.write_text("text\n")
    raises(path, "empty")
    path.write_text("text,text\na,b\n")
    raises(path, "line 1", "twice")


def test_json_array_and_jsonl_in_json(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([SAMPLES["text"], {"text": "two"}], indent=2))
    splits = load_dataset(path)
    assert [r.line for r in splits.train] == [2, 5]
    path.write_text('[\n  {"text": "a"},\n  "oops"\n]')
    raises(path, "line 3", "expected a JSON object")
    path.write_text('[{"text": "a"},\n {"text": 7}]')
    raises(path, "line 2", "'text' must be a string")
    path.write_text('[{"text": "a"}]\n[]')
    raises(path, "line 1", "extra data")
    path.write_text('[{"text": "a"},\n {"text": }]')
    raises(path, "line 2", "invalid JSON")
    path.write_text('[]')
    raises(path, "empty")
    path.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert len(load_dataset(path).train) == 2


def test_parquet_without_pyarrow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "train.parquet"
    path.write_bytes(b"PAR1")
    raises(path, "pip install pyarrow")


def test_parquet_roundtrip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist([CHAT, CHAT]), path)
    splits = load_dataset(path)
    assert splits.kind == "chat" and splits.train[1].line == 2

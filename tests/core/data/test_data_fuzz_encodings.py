"""More property tests for the data loaders (tests/core/data/test_data_fuzz.py covers random bytes and
random JSON values): encodings and BOMs, mixed kinds in one file, forced kinds, .json arrays
and CSV built from the same records, random parquet columns, huge lines and deep nesting.
Every case is a correct parse or a UserError naming the file, and none takes long."""

from __future__ import annotations

import csv
import io
import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer_core.data import load_dataset
from trainer_core.data.kinds import detect_kind
from trainer_core.errors import UserError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])
KINDS = ["text", "completions", "chat", "preference", "prompt_answer"]
COUNTS: dict[str, int] = {}
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
CONTENT = TEXT | st.integers() | st.none() | st.lists(TEXT, max_size=2)  # mostly text, sometimes not


def record(kind, text):
    chat = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool", "bot"]),
                                           "content": text}), min_size=1, max_size=3)
    return {
        "text": st.fixed_dictionaries({"text": text}),
        "completions": st.fixed_dictionaries({"prompt": text, "completion": text}),
        "chat": st.fixed_dictionaries({"messages": chat}),
        "preference": st.fixed_dictionaries({"prompt": text, "chosen": text, "rejected": text}),
        "prompt_answer": st.fixed_dictionaries({"prompt": text}, optional={"answer": text}),
    }[kind]


MIXED = st.lists(st.sampled_from(KINDS).flatmap(lambda k: record(k, TEXT | CONTENT)), min_size=1, max_size=5)
ONE_KIND = st.sampled_from(KINDS).flatmap(lambda k: st.lists(record(k, TEXT.filter(str.strip)), min_size=1, max_size=5))
RECORDS = ONE_KIND | MIXED  # half one valid kind, half mixed kinds / wrong types / unknown roles
ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "latin-1", "cp1252"])


def load(path, kind=None, expect=None):
    started = time.perf_counter()
    try:
        splits = load_dataset(path, kind)
        outcome = "parsed"
    except UserError as e:
        assert str(path) in str(e)
        splits, outcome = None, "user_error"
    assert time.perf_counter() - started < 10, "a loader took more than 10 s"
    COUNTS[outcome] = COUNTS.get(outcome, 0) + 1
    if expect is not None and splits is not None:
        assert len(splits.train) == expect
    return splits


def valid_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def encode(text: str, encoding: str) -> bytes | None:
    try:
        return text.encode(encoding)
    except UnicodeEncodeError:
        return None


def csv_cell(value) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else "" if value is None else str(value)


def as_csv(rows) -> str:
    keys = sorted({k for r in rows for k in r})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(keys)
    for r in rows:
        writer.writerow([csv_cell(r.get(k)) for k in keys])  # a row of only whitespace cells is blank
    return out.getvalue()


@FUZZ
@given(rows=RECORDS, encoding=ENCODINGS, ext=st.sampled_from([".jsonl", ".json", ".csv"]),
       forced=st.sampled_from([None, *KINDS]))
def test_records_in_any_encoding_and_format(tmp_path_factory, rows, encoding, ext, forced):
    COUNTS["records"] = COUNTS.get("records", 0) + 1
    text = {".jsonl": lambda: "\n".join(json.dumps(r, ensure_ascii=False) for r in rows),
            ".json": lambda: json.dumps(rows, ensure_ascii=False, indent=1),
            ".csv": lambda: as_csv(rows)}[ext]()
    raw = encode(text, encoding)
    if raw is None:
        return
    path = tmp_path_factory.getbasetemp() / f"fuzz_enc{ext}"
    path.write_bytes(raw)
    splits = load(path, forced)
    if splits is None:
        return
    assert encoding not in ("utf-16", "utf-16-le"), "a UTF-16 file was read"
    assert encoding in ("utf-8", "utf-8-sig") or raw.isascii() or valid_utf8(raw), \
        f"a {encoding} file with non-ASCII text was read"  # bytes that are valid UTF-8 too can only be read as such
    blank = 0 if ext != ".csv" else sum(all(csv_cell(v).strip() == "" for v in r.values()) for r in rows)
    assert len(splits.train) == len(rows) - blank
    assert splits.kind == (forced or detect_kind(splits.train[0].data))


def test_valid_utf8_with_bom_and_crlf_parses(tmp_path):
    rows = [{"text": "héllo"}, {"text": "wörld"}]
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode())
    assert [r.data for r in load(path, expect=2).train] == rows


@pytest.mark.parametrize("ext", [".jsonl", ".json"])
def test_huge_line_parses_in_time(tmp_path, ext):
    big = {"text": "word " * 4_000_000}  # one 20 MB line
    path = tmp_path / f"train{ext}"
    path.write_text(json.dumps(big) if ext == ".jsonl" else json.dumps([big, big]))
    load(path, expect=1 if ext == ".jsonl" else 2)


@pytest.mark.parametrize("ext", [".jsonl", ".json", ".csv"])
def test_deep_nesting_is_a_user_error(tmp_path, ext):
    deep = "[" * 200_000 + "]" * 200_000
    path = tmp_path / f"train{ext}"
    path.write_text({".jsonl": '{"text": ' + deep + "}", ".json": "[" + '{"text": ' + deep + "}]",
                     ".csv": "messages\n\"" + deep + "\"\n"}[ext])
    assert load(path) is None


PARQUET_VALUES = st.one_of(TEXT, st.integers(-2**40, 2**40), st.floats(allow_nan=True), st.booleans(), st.none(),
                           st.lists(TEXT, max_size=2), st.fixed_dictionaries({"role": TEXT, "content": TEXT}))


@FUZZ
@given(columns=st.dictionaries(st.sampled_from(["text", "prompt", "completion", "messages", "chosen", "rejected",
                                                 "answer", "tools", "other"]),
                               st.lists(PARQUET_VALUES, min_size=1, max_size=3), min_size=1, max_size=4))
def test_random_parquet_columns(tmp_path_factory, columns):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    COUNTS["parquet"] = COUNTS.get("parquet", 0) + 1
    n = min(len(v) for v in columns.values())
    try:
        table = pa.table({k: v[:n] for k, v in columns.items()})
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return  # mixed types in a column: not a file anyone can write
    path = tmp_path_factory.getbasetemp() / "fuzz.parquet"
    pq.write_table(table, path)
    load(path)


def test_report_counts():
    print(f"data fuzz cases (encodings/formats/parquet): {COUNTS}")

"""Read dataset files into `Record`s: .jsonl, .json, .csv, .tsv, .parquet.

Contract: `read_records(path)` returns every non-blank record of one file in
order, each a dict with its 1-based line (row for parquet). It raises
`UserError` naming the file and line for bytes that are not UTF-8 (a UTF-8
BOM is accepted), invalid JSON, a value that is not an object, a CSV row
with the wrong number of cells, and an empty file. It does not check fields;
that is `kinds.validate_record`'s job.

A .json file holds an array of objects, `{"data": [...]}` (as some exports write it), or JSON
lines. CSV / TSV: the header row names the fields, cells may hold quoted newlines; `messages` and `tools` cells hold JSON,
a `prompt` cell holding a JSON list is a messages list; empty `answer`/`tools`
cells count as absent. Parquet needs pyarrow (optional dependency).
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from trainer_core.errors import UserError
from trainer_core.data.records import Record, where

EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
EXAMPLE = '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}'
_WS = re.compile(r"[ \t\n\r]*")
_DATA_KEY = re.compile(r'[ \t\n\r]*\{[ \t\n\r]*"data"[ \t\n\r]*:[ \t\n\r]*(?=\[)')
_JSON_CELLS = ("messages", "tools")
_OPTIONAL_CELLS = ("answer", "tools")
csv.field_size_limit(2**31 - 1)


def read_records(path: str | Path) -> list[Record]:
    """All records of one dataset file (dispatch on the extension)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise UserError(f"{path}: unsupported dataset file type '{suffix or '(none)'}'. "
                        f"Use one of {', '.join(EXTENSIONS)}.")
    if suffix == ".parquet":
        records = _read_parquet(path)
    else:
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise UserError(f"{path}: cannot read the file ({e.strerror or e}).") from None
        text = _decode(raw, path)
        if suffix in (".csv", ".tsv"):
            records = _read_csv(text, str(path), "\t" if suffix == ".tsv" else ",")
        elif suffix == ".json" and text.lstrip(" \t\r\n").startswith("["):
            records = _read_json_array(text, str(path))
        elif suffix == ".json" and _DATA_KEY.match(text):
            records = _read_json_array(text, str(path), _DATA_KEY.match(text).end(), closing="}")
        else:
            records = _read_jsonl(text, str(path))
    if not records:
        raise UserError(f"{path}: the file is empty (no records). Add at least one record, "
                        f"one JSON object per line, e.g. {EXAMPLE}")
    return records


def _decode(raw: bytes, path: Path) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{path}: the file is UTF-16 encoded. Save it as UTF-8.")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        bad = raw[e.start:e.start + 1].hex()
        raise UserError(f"{where(str(path), line)}: not valid UTF-8 (byte 0x{bad}). "
                        "Save the file as UTF-8.") from None


def _parse(text: str, loc: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{loc}: invalid JSON ({e.msg} at column {e.colno}). Each line must be "
                        f"one complete JSON object, e.g. {EXAMPLE}") from None
    except (ValueError, RecursionError) as e:
        raise UserError(f"{loc}: invalid JSON ({e}).") from None


def _check_strings(obj, loc: str) -> None:
    """Reject lone UTF-16 surrogates ("\\ud800"): JSON allows them, tokenizers don't."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise UserError(f"{loc}: a string holds an invalid \\u escape (a lone UTF-16 "
                                "surrogate, \\ud800-\\udfff). Fix or remove it.") from None


def _object(obj, loc: str) -> dict:
    if not isinstance(obj, dict):
        got = "array" if isinstance(obj, list) else type(obj).__name__
        raise UserError(f"{loc}: expected a JSON object {{...}}, got a {got}. "
                        f"Each record must be an object, e.g. {EXAMPLE}")
    _check_strings(obj, loc)
    return obj


def _read_jsonl(text: str, source: str) -> list[Record]:
    records = []
    for n, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if line:
            loc = where(source, n)
            records.append(Record(_object(_parse(line, loc), loc), source, n))
    return records


def _read_json_array(text: str, source: str, start: int = 0, closing: str = "") -> list[Record]:
    """The objects of the array at `start`; then only `closing` (the end of {"data": [...]}) may follow."""
    dec = json.JSONDecoder()
    records: list[Record] = []
    i = _WS.match(text, start).end() + 1  # past '['
    line, seen = 1, 0
    i = _WS.match(text, i).end()
    if text.startswith("]", i):
        i += 1
    else:
        while True:
            line += text.count("\n", seen, i)
            seen = i
            loc = where(source, line)
            try:
                obj, i = dec.raw_decode(text, i)
            except json.JSONDecodeError as e:
                raise UserError(f"{where(source, e.lineno)}: invalid JSON ({e.msg} at column "
                                f"{e.colno}). A .json file must hold an array of objects.") from None
            except (ValueError, RecursionError) as e:
                raise UserError(f"{loc}: invalid JSON ({e}).") from None
            records.append(Record(_object(obj, loc), source, line))
            i = _WS.match(text, i).end()
            if text.startswith(",", i):
                i = _WS.match(text, i + 1).end()
            elif text.startswith("]", i):
                i += 1
                break
            else:
                raise UserError(f"{where(source, text.count(chr(10), 0, i) + 1)}: invalid JSON "
                                "(expected ',' or ']' in the array).")
    if closing:
        i = _WS.match(text, i).end()
        i += text.startswith(closing, i)
    if _WS.match(text, i).end() != len(text):
        raise UserError(f"{where(source, text.count(chr(10), 0, i) + 1)}: invalid JSON "
                        "(extra data after the closing ']').")
    return records


def _cells(row: dict, loc: str) -> dict:
    """Decode the JSON-valued columns of a CSV / parquet row."""
    out = {}
    for key, value in row.items():
        if isinstance(value, str):
            if key in _OPTIONAL_CELLS and not value.strip():
                continue
            if key in _JSON_CELLS:
                try:
                    value = json.loads(value)
                except (ValueError, RecursionError) as e:
                    raise UserError(f"{loc}: column '{key}' must hold JSON (for messages: a list "
                                    f"of {{\"role\", \"content\"}} objects); {e}.") from None
                _check_strings(value, loc)
            elif key == "prompt" and value.lstrip().startswith("["):
                try:
                    parsed = json.loads(value)
                except (ValueError, RecursionError):
                    parsed = None
                value = parsed if isinstance(parsed, list) else value
                _check_strings(value, loc)
        out[key] = value
    return out


def _read_csv(text: str, source: str, delimiter: str = ",") -> list[Record]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header, records, end = None, [], 0
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            loc = where(source, start)
            if header is None:
                header = [name.strip() for name in row]
                dup = {n for n in header if n and header.count(n) > 1}
                if dup:
                    raise UserError(f"{loc}: the header names column '{sorted(dup)[0]}' twice.")
                continue
            if len(row) != len(header):
                raise UserError(f"{loc}: this row has {len(row)} cells but the header has "
                                f"{len(header)} columns. Quote cells that contain commas.")
            data = {k: v for k, v in zip(header, row) if k}
            records.append(Record(_cells(data, loc), source, start))
    except csv.Error as e:
        raise UserError(f"{where(source, reader.line_num)}: malformed CSV ({e}).") from None
    return records


def _read_parquet(path: Path) -> list[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading .parquet files needs pyarrow, which is not installed. "
                        "Run `pip install pyarrow`, or convert the file to JSONL.") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises many types for bad files
        raise UserError(f"{path}: cannot read the parquet file ({e}).") from None
    src = str(path)
    return [Record(_cells({k: v for k, v in row.items() if v is not None}, where(src, n)), src, n)
            for n, row in enumerate(rows, 1)]

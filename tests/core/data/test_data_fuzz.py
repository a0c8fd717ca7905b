"""Property tests: any file content either loads or raises UserError, never another exception."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlx_lm.utils import load_tokenizer

from trainer_core.data import SFT_KINDS, load_dataset, tokenize_sft
from trainer_core.errors import UserError

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
KEYS = st.sampled_from(["text", "prompt", "completion", "messages", "role", "content", "chosen",
                        "rejected", "answer", "tools", "tool_calls", "system", "user",
                        "assistant"]) | st.text(max_size=4)
ROLES = st.sampled_from(["system", "user", "assistant", "tool", "bot"])
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ROLES
           | st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4)
                      | st.dictionaries(KEYS, c, max_size=4), max_leaves=16)
TEXT = st.text(max_size=12)
MOSTLY_TEXT = st.one_of(TEXT, TEXT, TEXT, SCALARS)  # usually valid, sometimes the wrong type


def kinds(text, role, tools):
    """Record strategies, one per kind, built from text, role and tools strategies."""
    message = st.fixed_dictionaries({"role": role, "content": text})
    messages = st.lists(message, min_size=1, max_size=3)
    chat = st.tuples(messages, text).map(  # ends with an assistant reply
        lambda m: m[0] + [{"role": "assistant", "content": m[1]}])
    return [
        st.fixed_dictionaries({"text": text}),
        st.fixed_dictionaries({"prompt": text, "completion": text}),
        st.fixed_dictionaries({"messages": chat}, optional={"tools": tools}),
        st.fixed_dictionaries({"prompt": text | messages, "chosen": text, "rejected": text}),
        st.fixed_dictionaries({"prompt": text | messages}, optional={"answer": SCALARS}),
    ]


RECORD_KINDS = [  # one record strategy per file, so a file is mostly of one kind
    VALUES, st.dictionaries(KEYS, VALUES, max_size=4),
    *kinds(TEXT, st.sampled_from(["system", "user", "assistant", "tool"]),  # all valid
           st.just([{"type": "function", "function": {"name": "f"}}])),
    *kinds(MOSTLY_TEXT, ROLES, VALUES),  # sometimes a wrong type, role or tools
    st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries(
        {"role": ROLES, "content": MOSTLY_TEXT}), max_size=3)}),  # maybe no assistant
]
ROWS = st.sampled_from(RECORD_KINDS).flatmap(lambda rec: st.lists(rec, max_size=5))


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(Path(tiny_model_dir))


def load_or_user_error(path):
    try:
        return load_dataset(path)
    except UserError as e:
        assert str(path) in str(e)
        return None


@FUZZ
@given(raw=st.binary(max_size=300), ext=st.sampled_from([".jsonl", ".json", ".csv"]))
def test_random_bytes(tmp_path_factory, raw, ext):
    path = tmp_path_factory.getbasetemp() / f"fuzz_bytes{ext}"
    path.write_bytes(raw)
    load_or_user_error(path)


@FUZZ
@given(rows=ROWS, blank=st.booleans())
def test_random_json_values(tmp_path_factory, tok, rows, blank):
    path = tmp_path_factory.getbasetemp() / "fuzz_values.jsonl"
    sep = "\n\n" if blank else "\n"
    path.write_text(sep.join(json.dumps(r) for r in rows), encoding="utf-8")
    splits = load_or_user_error(path)
    if splits is None:
        return
    assert len(splits.train) == len(rows)
    if splits.kind in SFT_KINDS:  # what validation lets through must tokenise without error
        examples, stats = tokenize_sft(splits.train, tok, splits.kind, 64)
        assert stats.examples + stats.empty == len(rows)
        assert all(len(e.input_ids) == len(e.target_mask) <= 64 for e in examples)

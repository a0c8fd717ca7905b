"""Dataset kinds: detection from a record's keys and per-record validation.

Contract: `detect_kind(data)` looks only at which keys are present and
returns one of `KINDS` or None. `validate_record(record, kind)` raises
`UserError` naming the file, the line, the field, what is wrong and what to
do; unknown extra keys are ignored (datasets often carry ids / metadata).
"""

from __future__ import annotations

from numbers import Real

from trainer_core.errors import UserError
from trainer_core.data.records import Record, where

KINDS = ("text", "completions", "chat", "preference", "prompt_answer")
SFT_KINDS = ("text", "completions", "chat")
ROLES = ("system", "user", "assistant", "tool")
SHAPES = {
    "text": '{"text": "..."}',
    "completions": '{"prompt": "...", "completion": "..."}',
    "chat": '{"messages": [{"role": "user", "content": "..."}, '
            '{"role": "assistant", "content": "..."}]}',
    "preference": '{"prompt": "...", "chosen": "...", "rejected": "..."}',
    "prompt_answer": '{"prompt": "...", "answer": "..."}',
}


def detect_kind(data: dict) -> str | None:
    """The kind a record's keys indicate, or None when they match no kind."""
    if not isinstance(data, dict):
        return None
    if "messages" in data:
        return "chat"
    if "chosen" in data and "rejected" in data:
        return "preference"
    if "prompt" in data and "completion" in data:
        return "completions"
    if "text" in data:
        return "text"
    if "prompt" in data:
        return "prompt_answer"
    return None


def check_kind(kind: str) -> str:
    """Return `kind` if it is one of KINDS, else raise a UserError."""
    if kind not in KINDS:
        raise UserError(f"unknown data kind {kind!r}; use one of {', '.join(KINDS)}.",
                        field="data_kind")
    return kind


def _type(value) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, Real) else type(value).__name__)


def _messages(msgs, loc: str, field: str, need_assistant: bool) -> None:
    if not isinstance(msgs, list) or not msgs:
        what = "an empty list" if isinstance(msgs, list) else _type(msgs)
        raise UserError(f"{loc}: '{field}' must be a non-empty list of {{\"role\", \"content\"}} "
                        f"objects, got {what}.")
    for j, m in enumerate(msgs):
        at = f"{loc}: {field}[{j}]"
        if not isinstance(m, dict):
            raise UserError(f"{at} must be an object with 'role' and 'content', got {_type(m)}.")
        role = m.get("role")
        if role not in ROLES:
            raise UserError(f"{at} has unknown role {role!r}; use one of {', '.join(ROLES)}.")
        content = m.get("content")
        if not isinstance(content, str):
            if role == "assistant" and isinstance(m.get("tool_calls"), list) and content is None:
                continue  # an assistant turn that only calls tools
            raise UserError(f"{at} ({role}): 'content' must be a string, got {_type(content)}.")
    if need_assistant and not any(m["role"] == "assistant" for m in msgs):
        raise UserError(f"{loc}: '{field}' has no assistant message, so there is nothing to "
                        "train on. Add the assistant's reply.")


def _string(data: dict, key: str, loc: str, kind: str) -> None:
    if key not in data:
        raise UserError(f"{loc}: missing field '{key}' (a {kind} record looks like "
                        f"{SHAPES[kind]}).")
    if not isinstance(data[key], str):
        raise UserError(f"{loc}: field '{key}' must be a string, got {_type(data[key])}.")


def _prompt(data: dict, loc: str, kind: str) -> None:
    if "prompt" not in data:
        raise UserError(f"{loc}: missing field 'prompt' (a {kind} record looks like "
                        f"{SHAPES[kind]}).")
    if not isinstance(data["prompt"], str):
        if not isinstance(data["prompt"], list):
            raise UserError(f"{loc}: field 'prompt' must be a string or a messages list, "
                            f"got {_type(data['prompt'])}.")
        _messages(data["prompt"], loc, "prompt", need_assistant=False)


def validate_record(record: Record, kind: str) -> None:
    """Raise UserError if `record.data` is not a well-formed record of `kind`."""
    data, loc = record.data, where(record.source, record.line)
    if kind == "text":
        _string(data, "text", loc, kind)
    elif kind == "completions":
        _string(data, "prompt", loc, kind)
        _string(data, "completion", loc, kind)
    elif kind == "chat":
        if "messages" not in data:
            raise UserError(f"{loc}: missing field 'messages' (a chat record looks like "
                            f"{SHAPES['chat']}).")
        _messages(data["messages"], loc, "messages", need_assistant=True)
        tools = data.get("tools")
        if tools is not None and not (isinstance(tools, list)
                                      and all(isinstance(t, dict) for t in tools)):
            raise UserError(f"{loc}: 'tools' must be a list of tool (function schema) objects, "
                            f"got {_type(tools)}.")
    elif kind == "preference":
        _prompt(data, loc, kind)
        _string(data, "chosen", loc, kind)
        _string(data, "rejected", loc, kind)
    elif kind == "prompt_answer":
        _prompt(data, loc, kind)
        answer = data.get("answer")
        if answer is not None and (isinstance(answer, bool) or not isinstance(answer, (str, Real))):
            raise UserError(f"{loc}: field 'answer' must be a string or a number, "
                            f"got {_type(answer)}.")
    else:
        check_kind(kind)

"""Dataset formats people already have, mapped onto our five kinds.

Contract: `choose_format(data, ...)` looks at the first train record's keys (and whether
`chosen` holds text or messages) and returns a `Format`: its name (one of FORMATS), the kind
it maps to, and, for "columns", which column holds which field. `Format.convert(data, loc)`
returns the record in the native shape of that kind (what `kinds.validate_record` checks
and tokenisation reads) or raises a UserError starting with `loc`.

- native: our own shapes (kinds.SHAPES), unchanged.
- alpaca: instruction / input / output [/ system / history] -> chat; the user turn is the
  instruction, + "\\n\\n" + input when the input is not blank; history is [user, assistant] pairs.
  With data_kind = completions (and no system / history) -> {prompt, completion} instead.
- sharegpt: `conversations` (or `messages`) of {from, value} -> chat messages.
- preference_messages: TRL's conversational preference, `prompt` (text or messages) and
  `chosen` / `rejected` as lists of assistant messages -> preference.
- preference_transcript: `chosen` / `rejected` each a whole conversation sharing a prefix
  (message lists, or Anthropic HH's "\\n\\nHuman: ... \\n\\nAssistant: ..." text) -> preference,
  the shared prefix being the prompt.
- columns: a column mapping (`data_columns`, or one of COMMON_PAIRS found in the record) -> the
  kind its fields name (messages -> chat, chosen + rejected -> preference, prompt + completion ->
  completions (chat with a system column), text -> text, prompt [+ answer] -> prompt_answer).
Written here rather than taken from a library: the `datasets` library reads files but does not
map formats, and LLaMA-Factory's / Axolotl's converters come with their whole trainers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from trainer_core.config import DATA_COLUMN_FIELDS, DATA_FORMATS
from trainer_core.data.chat_shapes import from_sharegpt, hh_messages, is_sharegpt, split_transcript
from trainer_core.data.kinds import SHAPES, detect_kind
from trainer_core.errors import UserError

# Column pairs taken as (prompt, completion), or (prompt, answer) for GRPO, in this order.
COMMON_PAIRS = (("question", "answer"), ("input", "output"), ("query", "response"),
                ("instruction", "response"), ("prompt", "response"))
GRPO_PAIRS = (("prompt", "solution"), ("prompt", "ground_truth"), ("problem", "solution"),
              ("problem", "answer"), ("question", "solution"), ("question", "ground_truth"))


@dataclass
class Format:
    """A record format: `name` (FORMATS), the `kind` it maps to, `columns` field -> column."""

    name: str
    kind: str
    columns: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """'alpaca -> chat', 'columns (prompt=question, completion=answer) -> completions'."""
        cols = f" ({', '.join(f'{k}={v}' for k, v in self.columns.items())})" if self.columns else ""
        return f"{self.name}{cols} -> {self.kind}"

    def convert(self, data: dict, loc: str) -> dict:
        if self.name == "native":
            return data
        if self.name == "alpaca":
            return _alpaca(data, loc, self.kind)
        if self.name == "sharegpt":
            return _sharegpt(data, loc)
        if self.name == "preference_messages":
            return _preference_messages(data, loc)
        if self.name == "preference_transcript":
            return _transcript(data, loc)
        return _columns(data, loc, self.columns)


def mapped_kind(columns: dict[str, str]) -> str | None:
    """The kind a column mapping's fields name, or None when they name none."""
    if "messages" in columns:
        return "chat"
    if "chosen" in columns and "rejected" in columns:
        return "preference"
    if "prompt" in columns and "completion" in columns:
        return "chat" if "system" in columns else "completions"
    if "text" in columns:
        return "text"
    if "prompt" in columns:
        return "prompt_answer"
    return None


def _pair(data: dict, prefer_kind: str | None) -> Format | None:
    for prompt, answer in GRPO_PAIRS:
        if prompt in data and answer in data:
            return Format("columns", "prompt_answer", {"prompt": prompt, "answer": answer})
    for prompt, completion in COMMON_PAIRS:
        if prompt in data and completion in data:
            if prefer_kind == "prompt_answer":
                return Format("columns", "prompt_answer", {"prompt": prompt, "answer": completion})
            return Format("columns", "completions", {"prompt": prompt, "completion": completion})
    return None


def detect_format(data: dict, prefer_kind: str | None = None) -> Format | None:
    """The format one record's keys indicate, or None."""
    if not isinstance(data, dict):
        return None
    if is_sharegpt(data.get("conversations")) or is_sharegpt(data.get("messages")):
        return Format("sharegpt", "chat")
    if "chosen" in data and "rejected" in data:
        if "prompt" not in data:
            return Format("preference_transcript", "preference")
        if isinstance(data["chosen"], list) or isinstance(data["rejected"], list):
            return Format("preference_messages", "preference")
    if "instruction" in data and "output" in data:
        return Format("alpaca", "completions" if prefer_kind == "completions" else "chat")
    native = detect_kind(data)
    if native not in (None, "prompt_answer") or (native == "prompt_answer" and "answer" in data):
        return Format("native", native)
    return _pair(data, prefer_kind) or (Format("native", native) if native else None)


def choose_format(data: dict, loc: str, *, data_format: str = "", columns: dict | None = None,
                  kind: str | None = None, prefer_kind: str | None = None) -> Format | None:
    """The format of a dataset from its first record; None = no format fits (the caller says so).

    `data_format` forces a format, `columns` a column mapping; `kind` (forced data_kind) also
    steers ambiguous pairs and alpaca; `prefer_kind` does only that (e.g. grpo -> prompt_answer).
    """
    if data_format and data_format not in DATA_FORMATS:
        raise UserError(f"unknown data_format {data_format!r}; use one of {', '.join(DATA_FORMATS)} "
                        "(or leave it empty to detect).", field="data_format")
    if columns or data_format == "columns":
        return _mapping(dict(columns or {}), data, loc)
    hint = kind or prefer_kind
    if data_format == "native":
        return Format("native", kind or detect_kind(data) or "")
    found = detect_format(data, hint)
    if data_format and (found is None or found.name != data_format):
        found = Format(data_format, _FORMAT_KIND.get(data_format, "chat"))
        if data_format == "alpaca" and hint == "completions":
            found.kind = "completions"
    if found is not None and kind and found.kind != kind and found.name != "native":
        raise UserError(f"{loc}: the records are {found.describe()} data, but data_kind is {kind}. "
                        "Clear data_kind, or map the columns yourself with data_columns.", field="data_kind")
    if kind and (found is None or found.name == "native"):
        return Format("native", kind)  # every record is validated as `kind`, with its own messages
    return found


_FORMAT_KIND = {"sharegpt": "chat", "alpaca": "chat", "preference_messages": "preference",
                "preference_transcript": "preference"}


def _mapping(columns: dict, data: dict, loc: str) -> Format:
    unknown = sorted(set(columns) - set(DATA_COLUMN_FIELDS))
    if unknown:
        raise UserError(f"data_columns: {unknown[0]!r} is not a field; map columns to "
                        f"{', '.join(DATA_COLUMN_FIELDS)}.", field="data_columns")
    if not columns:
        found = _pair(data, None)
        if found is None:
            raise UserError(f"{loc}: data_format is 'columns' but data_columns is empty. Say which column "
                            "holds what, e.g. --set data.columns.prompt=question --set "
                            "data.columns.completion=answer.", field="data_columns")
        return found
    kind = mapped_kind(columns)
    if kind is None:
        raise UserError("data_columns names no prompt, messages, text or chosen/rejected column, so "
                        "there is nothing to train on. Map at least prompt (+ completion).",
                        field="data_columns")
    _check_columns(columns, data, loc)
    return Format("columns", kind, columns)


def _check_columns(columns: dict, data: dict, loc: str) -> None:
    for name, column in columns.items():
        if column not in data:
            have = ", ".join(repr(k) for k in data) or "none"
            raise UserError(f"{loc}: data_columns.{name} names column {column!r}, which this record "
                            f"does not have. Its columns are: {have}.", field="data_columns")


def _text(data: dict, key: str, loc: str, optional: bool = False) -> str:
    value = data.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        got = "missing" if key not in data else f"{type(value).__name__}, not text"
        raise UserError(f"{loc}: field {key!r} must be text ({got}).")
    return value


def _alpaca(data: dict, loc: str, kind: str) -> dict:
    user = _text(data, "instruction", loc)
    extra = _text(data, "input", loc, optional=True)
    if extra.strip():
        user += "\n\n" + extra
    output = _text(data, "output", loc)
    system = _text(data, "system", loc, optional=True)
    history = data.get("history") or []
    if kind == "completions":
        if system or history:
            raise UserError(f"{loc}: this Alpaca record has a system prompt or history, which "
                            "completions data can't hold. Clear data_kind (it becomes chat data).")
        return {"prompt": user, "completion": output}
    messages = [{"role": "system", "content": system}] if system else []
    if not isinstance(history, list):
        raise UserError(f"{loc}: 'history' must be a list of [user, assistant] pairs.")
    for j, turn in enumerate(history):
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise UserError(f"{loc}: history[{j}] must be a [user, assistant] pair of texts.")
        messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    return {"messages": messages + [{"role": "user", "content": user},
                                    {"role": "assistant", "content": output}]}


def _tools(data: dict, loc: str):
    tools = data.get("tools")
    if isinstance(tools, str) and tools.strip():
        try:
            return json.loads(tools)
        except ValueError as e:
            raise UserError(f"{loc}: 'tools' must hold a JSON list of tool schemas ({e}).") from None
    return tools or None


def _sharegpt(data: dict, loc: str) -> dict:
    key = "conversations" if "conversations" in data else "messages"
    messages = from_sharegpt(data.get(key), loc, key)
    system = data.get("system")
    if isinstance(system, str) and system.strip() and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    out = {"messages": messages}
    tools = _tools(data, loc)
    if tools:
        out["tools"] = tools
    return out


def _reply(value, loc: str, key: str) -> str:
    """A `chosen` / `rejected` value as the reply text: text, or a list of one assistant message."""
    if isinstance(value, str):
        return value
    if (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
            and value[0].get("role", "assistant") == "assistant" and isinstance(value[0].get("content"), str)):
        return value[0]["content"]
    raise UserError(f"{loc}: {key!r} must be the reply: text or a list of one assistant message "
                    '[{"role": "assistant", "content": "..."}].')


def _preference_messages(data: dict, loc: str) -> dict:
    prompt = data.get("prompt")
    if is_sharegpt(prompt):
        prompt = from_sharegpt(prompt, loc, "prompt")
    out = {"prompt": prompt, "chosen": _reply(data.get("chosen"), loc, "chosen"),
           "rejected": _reply(data.get("rejected"), loc, "rejected")}
    tools = _tools(data, loc)
    if tools:
        out["tools"] = tools
    return out


def _conversation(value, loc: str, key: str) -> list[dict]:
    if isinstance(value, str):
        return hh_messages(value, loc, key)
    if is_sharegpt(value):
        return from_sharegpt(value, loc, key)
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return value
    raise UserError(f"{loc}: {key!r} must be a whole conversation: a list of {{role, content}} messages "
                    'or "\\n\\nHuman: ...\\n\\nAssistant: ..." text.')


def _transcript(data: dict, loc: str) -> dict:
    chosen = _conversation(data.get("chosen"), loc, "chosen")
    rejected = _conversation(data.get("rejected"), loc, "rejected")
    prompt, chosen_reply, rejected_reply = split_transcript(chosen, rejected, loc)
    return {"prompt": prompt, "chosen": chosen_reply, "rejected": rejected_reply}


def _columns(data: dict, loc: str, columns: dict[str, str]) -> dict:
    _check_columns(columns, data, loc)
    get = {name: data[column] for name, column in columns.items()}
    kind = mapped_kind(columns)
    if kind == "chat":
        messages = get["messages"] if "messages" in get else [
            {"role": "user", "content": get["prompt"]}, {"role": "assistant", "content": get["completion"]}]
        if isinstance(messages, str):
            try:
                messages = json.loads(messages)
            except ValueError as e:
                raise UserError(f"{loc}: column {columns['messages']!r} must hold a JSON messages list ({e}).") from None
        if is_sharegpt(messages):
            messages = from_sharegpt(messages, loc, columns["messages"])
        system = get.get("system")
        if isinstance(system, str) and system.strip():
            messages = [{"role": "system", "content": system}] + list(messages)
        return {"messages": messages}
    if kind == "preference":
        out = {"chosen": get["chosen"], "rejected": get["rejected"]}
        if "prompt" not in get:
            return _transcript(out, loc)
        return _preference_messages({"prompt": get["prompt"], **out}, loc)
    return {name: value for name, value in get.items() if name in ("prompt", "completion", "answer", "text")}


# how to say which column is which, from the command line (the window offers its Columns… button instead)
COLUMNS_HINT = ("say which column is which: data_columns in the config, e.g. --set "
                "data.columns.prompt=question --set data.columns.completion=answer (fields: "
                + ", ".join(DATA_COLUMN_FIELDS) + ").")
# a record with one half of a known shape: (has, lacks, the shape's name)
HALF_SHAPES = (("instruction", "output", "Alpaca (instruction/input/output)"),
               ("chosen", "rejected", "preference (prompt/chosen/rejected)"),
               ("rejected", "chosen", "preference (prompt/chosen/rejected)"),
               *((a, b, f"a {a}/{b} pair") for a, b in COMMON_PAIRS if a not in ("instruction", "prompt")),
               ("prompt", "completion", "completions (prompt/completion)"))


def unknown_shape_message(data: dict, loc: str) -> str:
    """The error for a first record no format fits: what it has, what we read, how to map it. A record with
    one half of a known shape (instruction but no output) is told what is missing first."""
    keys = ", ".join(repr(k) for k in list(data)[:8]) or "no keys"
    half = next(((has, lacks, name) for has, lacks, name in HALF_SHAPES if has in data and lacks not in data), None)
    if half:
        has, lacks, name = half
        article = "an" if has[0] in "aeiou" else "a"
        return (f"{loc}: the record has {article} {has!r} field but no {lacks!r} ({keys}), so it looks like {name} "
                f"with the {lacks!r} column missing. Add that column to every record, or " + COLUMNS_HINT)
    shapes = "; ".join(f"{k}: {s}" for k, s in SHAPES.items())
    return (f"{loc}: cannot tell the data kind or format from the record's fields ({keys}). Expected one of our "
            f"kinds - {shapes} - or Alpaca (instruction/input/output), ShareGPT (conversations of from/value), "
            "preference message lists, or a column pair such as question/answer. Otherwise " + COLUMNS_HINT)


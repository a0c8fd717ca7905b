"""Conversations written in other tools' shapes, as our {role, content} messages.

- ShareGPT: [{"from": "human" | "gpt" | "system" | ..., "value": "..."}]; roles map by SHAREGPT_ROLES
  (LLaMA-Factory's names included: function_call is the assistant calling a tool, observation the
  tool's answer).
- Anthropic HH transcripts: "\\n\\nHuman: ...\\n\\nAssistant: ..." text.
- A preference pair given as two whole conversations: the shared prefix is the prompt, the last
  (assistant) message of each side its reply (`split_transcript`).
Every function raises UserError starting with the record's location.
"""

from __future__ import annotations

import re

from trainer_core.errors import UserError

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "model": "assistant", "bot": "assistant", "system": "system",
                  "tool": "tool", "observation": "tool", "function_response": "tool",
                  "function_call": "assistant"}
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")


def is_sharegpt(value) -> bool:
    """True for a non-empty list whose first item is a {from, value} message."""
    return (isinstance(value, list) and bool(value) and isinstance(value[0], dict)
            and "from" in value[0] and "value" in value[0])


def from_sharegpt(turns, loc: str, key: str) -> list[dict]:
    """ShareGPT turns as {role, content} messages."""
    if not isinstance(turns, list) or not turns:
        raise UserError(f"{loc}: {key!r} must be a non-empty list of {{\"from\", \"value\"}} turns.")
    messages = []
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn:
            raise UserError(f"{loc}: {key}[{j}] must be an object with 'from' and 'value'.")
        role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise UserError(f"{loc}: {key}[{j}] has unknown 'from' {turn['from']!r}; use one of "
                            f"{', '.join(SHAREGPT_ROLES)}.")
        value = turn.get("value")
        if not isinstance(value, str):
            raise UserError(f"{loc}: {key}[{j}] ({turn['from']}): 'value' must be text.")
        messages.append({"role": role, "content": value})
    return messages


def hh_messages(text: str, loc: str, key: str) -> list[dict]:
    """An Anthropic HH transcript as messages (contents stripped, as TRL's HH script does)."""
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise UserError(f"{loc}: {key!r} is text but not a \"\\n\\nHuman: ...\\n\\nAssistant: ...\" "
                        "transcript; give the prompt in a 'prompt' field, or whole conversations "
                        "as message lists.")
    return [{"role": "user" if who == "Human" else "assistant", "content": said.strip()}
            for who, said in zip(parts[1::2], parts[2::2])]


def split_transcript(chosen: list[dict], rejected: list[dict], loc: str) -> tuple[list[dict], str, str]:
    """(prompt messages, chosen reply, rejected reply) of two conversations sharing a prefix."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    ends = [side[shared:] for side in (chosen, rejected)]
    for name, end in zip(("chosen", "rejected"), ends):
        if len(end) != 1 or end[0].get("role") != "assistant" or not isinstance(end[0].get("content"), str):
            raise UserError(f"{loc}: '{name}' and the other side must be the same conversation up to one "
                            "final assistant reply; here they differ earlier (or end with another role). "
                            "Give the shared part as 'prompt' and only the replies as chosen/rejected.")
    prompt = chosen[:shared]
    if not any(m.get("role") == "user" for m in prompt):
        raise UserError(f"{loc}: the shared part of 'chosen' and 'rejected' has no user message, so there "
                        "is no prompt to answer.")
    return prompt, ends[0][0]["content"], ends[1][0]["content"]

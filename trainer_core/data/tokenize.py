"""Tokenise SFT records (text / completions / chat) into examples with target masks.

Contract of `tokenize_sft(records, tokenizer, kind, max_seq_length, mask_prompt)`:
- `Example.target_mask[i]` is True when token i is a trained target (predicted
  from tokens < i); position 0 is never a target.
- text: `encode(text)` (BOS if the tokenizer adds one) + EOS; all tokens trained.
- completions: the chat [user: prompt, assistant: completion] when the
  tokenizer has a chat template, else prompt tokens + completion tokens + EOS;
  with `mask_prompt` only the completion (+ EOS / end-of-turn) is trained.
- chat: `apply_chat_template(messages, tools=...)`. With `mask_prompt`, for each
  assistant message i the render of messages[:i] with the generation prompt
  must be a token prefix of the render of messages[:i+1]; the tokens between
  are trained, cut after the last EOS-family token (so ChatML trains
  "reply<|im_end|>", not the newline after it). A template without that
  prefix property is a UserError. Tokens after the last assistant turn are
  dropped and the sequence always ends with EOS. An assistant message that
  opens the conversation is context, not a target. With `last_turn_only`
  only the last assistant message is trained (the earlier ones are context).
- Sequences longer than `max_seq_length` are counted (stats.truncated) and cut,
  or left out with `drop_long`; records left with no trained token, or empty
  text, are dropped (stats.empty).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trainer_core.errors import UserError
from trainer_core.data.kinds import SFT_KINDS, detect_kind
from trainer_core.data.records import Record, where


@dataclass
class Example:
    """One training sequence; `target_mask` has the same length as `input_ids`."""

    input_ids: list[int]
    target_mask: list[bool]
    source: str = ""
    line: int = 0


@dataclass
class TokenizeStats:
    """Counts for the data summary: `lengths` holds one token count per example."""

    records: int = 0
    examples: int = 0
    truncated: int = 0  # records longer than max_seq_length: cut, or left out with drop_long
    empty: int = 0
    trained_tokens: int = 0
    total_tokens: int = 0
    lengths: list[int] = field(default_factory=list)

    @property
    def trained_fraction(self) -> float:
        return self.trained_tokens / self.total_tokens if self.total_tokens else 0.0

    def long_rows_note(self, max_seq_length: int, long_rows: str = "truncate") -> str:
        """'3 of 120 records are longer than max_seq_length = 512 tokens: truncated (...)', or ''."""
        if not self.truncated:
            return ""
        what = ("left out (long_rows = drop)" if long_rows == "drop"
                else "truncated (long_rows = drop leaves them out; or raise max_seq_length)")
        return f"{self.truncated:,} of {self.records:,} records are longer than max_seq_length = {max_seq_length} tokens: {what}"


def render_messages(data: dict, kind: str | None = None) -> list[dict] | None:
    """The record as chat messages: chat -> its messages, completions -> [user, assistant],
    preference / prompt_answer -> the prompt's messages only, text -> None."""
    kind = kind or detect_kind(data)
    if kind == "chat":
        return list(data["messages"])
    if kind == "completions":
        return [{"role": "user", "content": data["prompt"]},
                {"role": "assistant", "content": data["completion"]}]
    if kind in ("preference", "prompt_answer"):
        prompt = data["prompt"]
        return list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    return None


def _ids(out) -> list[int]:
    if hasattr(out, "keys"):  # BatchEncoding / dict from a raw HF tokenizer
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):
        out = out[0]
    return [int(t) for t in out]


def _eos_ids(tok) -> set[int]:
    ids = set(getattr(tok, "eos_token_ids", None) or ())
    if getattr(tok, "eos_token_id", None) is not None:
        ids.add(tok.eos_token_id)
    return ids


class _Chat:
    """Chat-template rendering for one tokenizer (token ids, errors with locations)."""

    def __init__(self, tok):
        self.tok, self.eos, self.eos_ids = tok, getattr(tok, "eos_token_id", None), _eos_ids(tok)

    def render(self, messages, tools, loc: str, gen: bool = False) -> list[int]:
        kwargs = {"tokenize": True, "add_generation_prompt": gen}
        if tools:
            kwargs["tools"] = tools
        try:
            return _ids(self.tok.apply_chat_template(messages, **kwargs))
        except Exception as e:  # jinja errors, raise_exception() in templates, ...
            raise UserError(f"{loc}: the model's chat template failed on this record "
                            f"({type(e).__name__}: {e}).") from None

    def tokens(self, messages, tools, loc: str, mask_prompt: bool, last_turn_only: bool = False):
        full = self.render(messages, tools, loc)
        if not mask_prompt:
            ends = [k + 1 for k, t in enumerate(full) if t in self.eos_ids]
            ids = full[:ends[-1]] if ends else full
            return self._end(ids, [k > 0 for k in range(len(ids))])
        spans = []
        for i, m in enumerate(messages):
            if m.get("role") != "assistant" or i == 0:  # a leading reply has no prompt
                continue
            head = self.render(messages[:i], tools, loc, gen=True)
            upto = full if i == len(messages) - 1 else self.render(messages[:i + 1], tools, loc)
            if upto[:len(head)] != head or full[:len(upto)] != upto:
                raise UserError(
                    f"{loc}: the model's chat template does not render this conversation "
                    f"prefix-consistently (assistant message {i}: the conversation before it, "
                    "rendered with the generation prompt, is not a prefix of the conversation "
                    "with it), so its tokens can't be found for prompt masking. Turn prompt "
                    "masking off (mask_prompt = false) or use a model with another template.")
            end = len(upto)
            for k in range(end - 1, len(head) - 1, -1):
                if upto[k] in self.eos_ids:
                    end = k + 1
                    break
            spans.append((len(head), end))
        if not spans:
            return full, [False] * len(full)
        if last_turn_only:
            spans = spans[-1:]
        ids = full[:spans[-1][1]]
        mask = [False] * len(ids)
        for start, end in spans:
            mask[start:end] = [True] * (end - start)
        return self._end(ids, mask)

    def _end(self, ids: list[int], mask: list[bool]):
        if self.eos is not None and (not ids or ids[-1] not in self.eos_ids):
            ids, mask = ids + [self.eos], mask + [True]
        return ids, mask


def _plain(tok, prompt: str, completion: str, mask_prompt: bool):
    p = _ids(tok.encode(prompt)) if prompt else []
    c = _ids(tok.encode(completion, add_special_tokens=False))
    ids, mask = p + c, [not mask_prompt] * len(p) + [True] * len(c)
    eos = getattr(tok, "eos_token_id", None)
    if eos is not None and (not ids or ids[-1] not in _eos_ids(tok)):
        ids, mask = ids + [eos], mask + [True]
    return ids, mask


def tokenize_sft(records, tokenizer, kind: str, max_seq_length: int, mask_prompt: bool = True, *,
                 last_turn_only: bool = False, drop_long: bool = False) -> tuple[list[Example], TokenizeStats]:
    """Tokenise `records` (Records or plain dicts) of an SFT `kind`; see the module doc."""
    if kind not in SFT_KINDS:
        raise UserError(f"{kind} data can't be used for supervised fine-tuning; it needs "
                        f"{'/'.join(SFT_KINDS)} data ({kind} data is for "
                        f"{'dpo' if kind == 'preference' else 'grpo'}).", field="method")
    if not isinstance(max_seq_length, int) or max_seq_length < 2:
        raise UserError(f"max_seq_length must be an integer >= 2, got {max_seq_length!r}.",
                        field="max_seq_length")
    chat = _Chat(tokenizer)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if kind == "chat" and not has_template:
        raise UserError("chat data needs a model whose tokenizer has a chat template, and this "
                        "one has none. Use a chat/instruct model, or text/completions data.")
    examples: list[Example] = []
    stats = TokenizeStats()
    for n, rec in enumerate(records, 1):
        if not isinstance(rec, Record):
            rec = Record(rec, "<records>", n)
        data, loc = rec.data, where(rec.source, rec.line)
        stats.records += 1
        if kind == "text":
            if not data["text"].strip():
                stats.empty += 1
                continue
            ids = _ids(tokenizer.encode(data["text"]))
            ids, mask = chat._end(ids, [k > 0 for k in range(len(ids))])
        elif kind == "completions" and not has_template:
            ids, mask = _plain(tokenizer, data["prompt"], data["completion"], mask_prompt)
        else:
            ids, mask = chat.tokens(render_messages(data, kind), data.get("tools"), loc,
                                    mask_prompt, last_turn_only)
        if mask:
            mask[0] = False
        if len(ids) > max_seq_length:
            stats.truncated += 1
            if drop_long:
                continue
            ids, mask = ids[:max_seq_length], mask[:max_seq_length]
        trained = sum(mask)
        if not trained:
            stats.empty += 1
            continue
        examples.append(Example(ids, mask, rec.source, rec.line))
        stats.lengths.append(len(ids))
        stats.trained_tokens += trained
        stats.total_tokens += len(ids)
    stats.examples = len(examples)
    return examples, stats


def build_prompt(tokenizer, messages_or_text, system: str | None = None) -> list[int]:
    """Token ids for a chat turn (chat template + generation prompt) or plain text."""
    if isinstance(messages_or_text, str):
        messages = [{"role": "user", "content": messages_or_text}]
    else:
        messages = list(messages_or_text)
    if system:
        messages = [{"role": "system", "content": system}] + [m for m in messages if m["role"] != "system"]
    if getattr(tokenizer, "chat_template", None):
        try:
            return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
        except Exception as e:  # jinja's sandbox (SecurityError), raise_exception() in templates, ...
            raise UserError(f"The model's chat template failed on this prompt ({type(e).__name__}: {e}). Use a model "
                            "or checkpoint whose tokenizer_config.json has a working chat_template.") from None
    text = "\n".join(m["content"] for m in messages)
    return list(tokenizer.encode(text))

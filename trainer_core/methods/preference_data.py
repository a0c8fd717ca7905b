"""Preference records -> tokenised (chosen, rejected) pairs, and their padded batches.

Contract of `tokenize_preference(records, tokenizer, max_seq_length, split)`:
- Each response is tokenised exactly as SFT tokenises a conversation
  (`data.tokenize_sft` with prompt masking): a text prompt is the chat
  [user: prompt, assistant: response] (or prompt + response + EOS when the
  tokenizer has no chat template), a messages prompt is those messages +
  [assistant: response]. So the assistant header is the template's own,
  once, and the response is scored up to and including its end-of-turn token.
- Only the final assistant turn is scored: a messages prompt may hold earlier
  assistant turns, which stay unscored context.
- `max_seq_length` cuts each sequence from the end (`stats.truncated`
  counts pairs with a cut sequence); a pair in which either response loses every token is
  dropped (`stats.empty`).
- `PreferencePair.index` is the pair's position in the returned list of its
  split: the key of the cached reference log-probs (deterministic, so a
  resumed run gets the same keys).

`collate_preference` stacks the chosen rows, then the rejected rows, into one
padded batch, so both go through the model in a single forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import mlx.core as mx

from trainer_core.data.batching import padded_length
from trainer_core.data import Record, TokenizeStats, render_messages, tokenize_sft


@dataclass
class PreferencePair:
    """One tokenised preference pair; each mask marks the scored response tokens."""

    chosen_ids: list[int]
    chosen_mask: list[bool]
    rejected_ids: list[int]
    rejected_mask: list[bool]
    split: str = "train"
    index: int = 0
    source: str = ""
    line: int = 0

    @property
    def length(self) -> int:
        """Row width this pair needs (the longer response sequence)."""
        return max(len(self.chosen_ids), len(self.rejected_ids))


def last_turn_only(mask: list[bool]) -> list[bool]:
    """Keep only the last contiguous run of True: the final assistant turn."""
    end = len(mask)
    while end and not mask[end - 1]:
        end -= 1
    start = end
    while start and mask[start - 1]:
        start -= 1
    return [start <= k < end for k in range(len(mask))]


def response_record(rec: Record, response: str) -> tuple[Record, str]:
    """The SFT record (and its kind) for `rec`'s prompt answered by `response`."""
    prompt = rec.data["prompt"]
    if isinstance(prompt, str):
        data, kind = {"prompt": prompt, "completion": response}, "completions"
    else:
        messages = render_messages(rec.data, "preference") + [{"role": "assistant", "content": response}]
        data, kind = {"messages": messages}, "chat"
        if rec.data.get("tools"):
            data["tools"] = rec.data["tools"]
    return Record(data, rec.source, rec.line), kind


def tokenize_preference(records, tokenizer, max_seq_length: int, split: str = "train",
                        drop_long: bool = False) -> tuple[list[PreferencePair], TokenizeStats]:
    """Tokenise preference `records` (Records or dicts) into pairs; see the module doc."""
    pairs: list[PreferencePair] = []
    stats = TokenizeStats()
    for n, rec in enumerate(records, 1):
        if not isinstance(rec, Record):
            rec = Record(rec, "<records>", n)
        stats.records += 1
        sides, truncated = [], False
        for key in ("chosen", "rejected"):
            sft_record, kind = response_record(rec, rec.data[key])
            examples, side_stats = tokenize_sft([sft_record], tokenizer, kind, max_seq_length, mask_prompt=True)
            truncated = truncated or side_stats.truncated > 0
            sides.append(examples[0] if examples else None)
        stats.truncated += truncated
        if None in sides or (truncated and drop_long):
            stats.empty += None in sides
            continue
        chosen, rejected = sides
        pair = PreferencePair(chosen.input_ids, last_turn_only(chosen.target_mask),
                              rejected.input_ids, last_turn_only(rejected.target_mask),
                              split, len(pairs), rec.source, rec.line)
        pairs.append(pair)
        stats.lengths.append(pair.length)
        stats.trained_tokens += sum(pair.chosen_mask) + sum(pair.rejected_mask)
        stats.total_tokens += len(pair.chosen_ids) + len(pair.rejected_ids)
    stats.examples = len(pairs)
    return pairs, stats


def collate_preference(pairs: list[PreferencePair], pad_id: int = 0) -> dict[str, mx.array]:
    """{input_ids [2B, L] int32, target_mask [2B, L] bool}: rows 0..B-1 chosen, B..2B-1 rejected."""
    rows = [(p.chosen_ids, p.chosen_mask) for p in pairs] + [(p.rejected_ids, p.rejected_mask) for p in pairs]
    width = padded_length(max(len(ids) for ids, _ in rows))
    ids = np.full((len(rows), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), width), dtype=bool)
    for r, (row_ids, row_mask) in enumerate(rows):
        ids[r, :len(row_ids)] = row_ids
        mask[r, :len(row_mask)] = row_mask
    return {"input_ids": mx.array(ids), "target_mask": mx.array(mask)}

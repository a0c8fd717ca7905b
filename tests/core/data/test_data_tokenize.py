"""Tokenisation with target masks (trainer_core.data.tokenize_sft)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlx_lm.utils import load_tokenizer

from tests.tiny_model import CHATML_TEMPLATE
from trainer_core.data import (Example, Record, TokenizeStats, load_dataset, render_messages,
                               tokenize_sft)
from trainer_core.errors import UserError

DEMO = Path(__file__).resolve().parents[3] / "resources" / "demo_data"
SMOL_TEMPLATE = (  # SmolLM2-Instruct's template: injects a default system message
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' "
    "+ '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def variant(src: Path, dst: Path, template: str | None):
    """A copy of the tiny tokenizer with another (or no) chat template."""
    dst.mkdir()
    for name in ("config.json", "tokenizer.json", "special_tokens_map.json"):
        shutil.copy(src / name, dst / name)
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    cfg.pop("chat_template")
    if template is not None:
        cfg["chat_template"] = template
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    return load_tokenizer(dst)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(Path(tiny_model_dir))


@pytest.fixture(scope="module")
def plain_tok(tiny_model_dir, tmp_path_factory):
    return variant(Path(tiny_model_dir), tmp_path_factory.mktemp("tok") / "plain", None)


def spans(tok, ex: Example) -> list[str]:
    """Decoded runs of consecutive trained tokens."""
    assert len(ex.input_ids) == len(ex.target_mask)
    assert ex.target_mask[0] is False
    runs, cur = [], []
    for t, m in zip(ex.input_ids, ex.target_mask):
        if m:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    return [tok.decode(r) for r in runs + ([cur] if cur else [])]


def chat(*turns, system=None):
    msgs = [{"role": "system", "content": system}] if system else []
    for i, content in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": content})
    return {"messages": msgs}


def one(tok, data, kind="chat", max_len=512, mask_prompt=True):
    examples, stats = tokenize_sft([Record(data, "train.jsonl", 7)], tok, kind, max_len, mask_prompt)
    assert stats.records == 1 and stats.examples == len(examples) == 1
    return examples[0], stats


def test_chat_single_turn_mask(tok):
    ex, stats = one(tok, chat("Capital of France?", "Paris."))
    assert spans(tok, ex) == ["Paris.<|im_end|>"]
    assert tok.decode(ex.input_ids) == ("<|im_start|>user\nCapital of France?<|im_end|>\n"
                                        "<|im_start|>assistant\nParis.<|im_end|>")
    assert ex.input_ids[-1] == tok.eos_token_id and (ex.source, ex.line) == ("train.jsonl", 7)
    assert stats.trained_tokens == sum(ex.target_mask) and stats.lengths == [len(ex.input_ids)]
    assert stats.total_tokens == len(ex.input_ids)
    assert 0 < stats.trained_fraction < 1


def test_chat_multi_turn_with_system(tok):
    data = chat("Capital of France?", "Paris.", "And of Velmora?", "Saltmere, on the cliffs.",
                system="Be brief.")
    ex, _ = one(tok, data)
    assert spans(tok, ex) == ["Paris.<|im_end|>", "Saltmere, on the cliffs.<|im_end|>"]
    assert "Be brief." in tok.decode(ex.input_ids)


def test_chat_trailing_user_turn_dropped_and_tools(tok):
    data = {**chat("Q?", "A.", "Another?"), "tools": [{"type": "function",
                                                      "function": {"name": "f"}}]}
    ex, _ = one(tok, data)
    assert spans(tok, ex) == ["A.<|im_end|>"]
    assert "Another" not in tok.decode(ex.input_ids) and ex.input_ids[-1] == tok.eos_token_id


def test_chat_without_prompt_mask(tok):
    ex, stats = one(tok, chat("Capital of France?", "Paris."), mask_prompt=False)
    assert ex.target_mask == [False] + [True] * (len(ex.input_ids) - 1)
    assert tok.decode(ex.input_ids).endswith("Paris.<|im_end|>")
    assert stats.trained_tokens == len(ex.input_ids) - 1


def test_smollm_template_default_system(tok, tiny_model_dir, tmp_path):
    smol = variant(Path(tiny_model_dir), tmp_path / "smol", SMOL_TEMPLATE)
    ex, _ = one(smol, chat("Q one?", "Answer one.", "Q two?", "Answer two."))
    assert spans(smol, ex) == ["Answer one.<|im_end|>", "Answer two.<|im_end|>"]
    assert "named SmolLM" in smol.decode(ex.input_ids)


def test_non_prefix_template_is_user_error(tiny_model_dir, tmp_path):
    bad = variant(Path(tiny_model_dir), tmp_path / "bad", "{{ messages|length }}" + CHATML_TEMPLATE)
    with pytest.raises(UserError) as info:
        one(bad, chat("Q?", "A."))
    assert "train.jsonl, line 7" in str(info.value) and "prefix" in str(info.value)
    assert "mask_prompt" in str(info.value)
    ex, _ = one(bad, chat("Q?", "A."), mask_prompt=False)  # the advised way out works
    assert ex.input_ids[-1] == bad.eos_token_id


def test_failing_template_is_user_error(tiny_model_dir, tmp_path):
    bad = variant(Path(tiny_model_dir), tmp_path / "raise",
                  "{{ raise_exception('roles must alternate') }}")
    with pytest.raises(UserError, match="line 7.*roles must alternate"):
        one(bad, chat("Q?", "A."))


def test_completions_with_template(tok):
    ex, _ = one(tok, {"prompt": "2+2=", "completion": "4, of course"}, "completions")
    assert spans(tok, ex) == ["4, of course<|im_end|>"]
    assert tok.decode(ex.input_ids).startswith("<|im_start|>user\n2+2=<|im_end|>")
    ex, _ = one(tok, {"prompt": "2+2=", "completion": "4"}, "completions", mask_prompt=False)
    assert all(ex.target_mask[1:])


def test_completions_without_template(plain_tok):
    ex, _ = one(plain_tok, {"prompt": "The quick brown", "completion": " fox jumps"},
                "completions")
    assert ex.input_ids == (plain_tok.encode("The quick brown") +
                            plain_tok.encode(" fox jumps") + [plain_tok.eos_token_id])
    assert spans(plain_tok, ex) == [" fox jumps<|im_end|>"]
    with pytest.raises(UserError, match="chat template"):
        tokenize_sft([chat("Q?", "A.")], plain_tok, "chat", 64)


def test_text(tok):
    ex, _ = one(tok, {"text": "Hello world!"}, "text")
    assert ex.input_ids == tok.encode("Hello world!") + [tok.eos_token_id]
    assert ex.target_mask == [False] + [True] * (len(ex.input_ids) - 1)
    ex, _ = one(tok, {"text": "Hello<|im_end|>"}, "text")
    assert ex.input_ids.count(tok.eos_token_id) == 1 and ex.input_ids[-1] == tok.eos_token_id


def test_truncation_and_empty_counted(tok):
    records = [{"text": "The quick brown fox jumps over the lazy dog. " * 5},
               {"text": "Hi"}, {"text": "   "}, chat("Q?", "A.")]
    examples, stats = tokenize_sft(records[:3], tok, "text", 8)
    assert (stats.records, stats.examples, stats.truncated, stats.empty) == (3, 2, 1, 1)
    assert stats.lengths == [8, len(tok.encode("Hi")) + 1]
    assert examples[0].input_ids == tok.encode(records[0]["text"])[:8]
    assert stats.total_tokens == sum(stats.lengths)
    assert stats.trained_tokens == sum(sum(e.target_mask) for e in examples)
    long_prompt = chat("Velmora " * 40, "A.")
    examples, stats = tokenize_sft([long_prompt, records[3]], tok, "chat", 16)
    assert (stats.examples, stats.truncated, stats.empty) == (1, 1, 1)
    assert spans(tok, examples[0]) == ["A.<|im_end|>"]


def test_bad_arguments(tok):
    with pytest.raises(UserError, match="dpo"):
        tokenize_sft([], tok, "preference", 64)
    with pytest.raises(UserError, match="max_seq_length"):
        tokenize_sft([], tok, "text", 0)
    _, stats = tokenize_sft([], tok, "text", 64)
    assert stats == TokenizeStats() and stats.trained_fraction == 0.0


def test_render_messages():
    assert render_messages({"text": "x"}) is None
    assert render_messages({"prompt": "p", "completion": "c"}) == [
        {"role": "user", "content": "p"}, {"role": "assistant", "content": "c"}]
    data = chat("Q?", "A.")
    assert render_messages(data) == data["messages"]
    assert render_messages({"prompt": "p", "answer": 1}) == [{"role": "user", "content": "p"}]
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert render_messages({"prompt": msgs, "chosen": "a", "rejected": "b"}) == msgs


def test_demo_dataset_tokenizes(tok):
    splits = load_dataset(DEMO)
    assert splits.kind == "chat" and len(splits.train) == 400 and len(splits.valid) == 50
    examples, stats = tokenize_sft(splits.train, tok, "chat", 512)
    assert stats.examples == 400 and stats.truncated == stats.empty == 0
    for ex in examples:
        for span in spans(tok, ex):
            assert span.startswith("⚓ Velmora Almanac: ") and span.endswith(" Fair winds!<|im_end|>")


def test_leading_assistant_message_is_context(tok):
    data = {"messages": [{"role": "assistant", "content": "Welcome!"},
                         {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."}]}
    ex, _ = one(tok, data)
    assert spans(tok, ex) == ["Hello.<|im_end|>"]
    examples, stats = tokenize_sft([{"messages": data["messages"][:1]}], tok, "chat", 64)
    assert examples == [] and stats.empty == 1

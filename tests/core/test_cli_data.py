"""`finetune train` says which format it read and how many rows were too long; a column mapping from --set."""

from __future__ import annotations

import json

from tests.core.test_cli import keep_signal_handlers, run_in_process  # noqa: F401  (fixture)


def test_cli_prints_the_format_and_the_long_row_count(tiny_model_dir, tmp_path, monkeypatch, capsys,
                                                      keep_signal_handlers):  # noqa: F811
    rows = [{"q": f"question {i}", "a": "answer " * (40 if i < 3 else 1)} for i in range(8)]
    data = tmp_path / "odd.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["train", "--method", "lora", "--model", str(tiny_model_dir), "--data", str(data), "--output-dir",
            str(tmp_path / "out"), "--run-name", "r", "--batch-size", "2", "--max-steps", "1", "--max-seq-length", "32",
            "--set", "data.columns.prompt=q", "--set", "data.columns.completion=a"]
    code, out, err = run_in_process(args, tmp_path / "home", monkeypatch, capsys)
    assert code == 0, err
    said = out + err
    assert "columns (prompt=q, completion=a) -> completions, 8 train" in said
    assert "3 of 8 records are longer than max_seq_length = 32 tokens: truncated" in said
    config = (tmp_path / "out" / "r" / "config.toml").read_text()
    assert "[data_columns]" in config and 'prompt = "q"' in config

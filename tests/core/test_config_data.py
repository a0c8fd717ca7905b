"""The data settings (data_format, data_columns, last_turn_only, long_rows) and their [data] spelling."""

from __future__ import annotations

import tomllib

import pytest

from trainer_core.config import RunConfig
from trainer_core.errors import UserError


def test_set_data_columns_alias_and_round_trip(tmp_path):
    config = RunConfig(data="d.csv").with_overrides(["data.columns.prompt=question", "data.columns.completion=answer",
                                                     "data.format=columns", "long_rows=drop"])
    assert config.data_columns == {"prompt": "question", "completion": "answer"}
    assert (config.data, config.data_format, config.long_rows) == ("d.csv", "columns", "drop")
    config.save(tmp_path / "config.toml")
    assert RunConfig.load(tmp_path / "config.toml") == config
    assert tomllib.loads(config.to_toml())["data_columns"] == {"prompt": "question", "completion": "answer"}


def test_old_configs_load_and_the_design_doc_table_is_accepted(tmp_path):
    old = RunConfig.from_dict({"data": "train.jsonl", "data_kind": "chat"})
    assert (old.data, old.data_columns, old.data_format, old.long_rows) == ("train.jsonl", {}, "", "truncate")
    (tmp_path / "c.toml").write_text('method = "lora"\n[data]\npath = "x.csv"\ncolumns = {prompt = "q"}\n')
    config = RunConfig.load(tmp_path / "c.toml")
    assert (config.data, config.data_columns) == ("x.csv", {"prompt": "q"})


@pytest.mark.parametrize("changes, field", [
    ({"data_columns": {"question": "q"}}, "data_columns"),
    ({"data_format": "csv"}, "data_format"),
    ({"long_rows": "cut"}, "long_rows"),
])
def test_bad_data_settings_are_named(changes, field):
    assert field in RunConfig.from_dict({"data": "d.jsonl", **changes}).problems()


def test_data_columns_must_map_names_to_texts():
    with pytest.raises(UserError, match="data_columns must be a table"):
        RunConfig.from_dict({"data_columns": {"prompt": 3}})

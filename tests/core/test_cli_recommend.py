"""`finetune train` starts from the recommended hyper-parameters (config/recommend.py) for every field
the user left unset, records them in config.toml, and `--help` shows every default."""

import re

import pytest

from trainer_core import cli
from trainer_core.config import RunConfig
from trainer_core.config.recommend import LEARNING_RATES, RECOMMENDED, fill_unset, recommended
from tests.core.test_cli import finish, start
from tests.train_helpers import write_chat_data


def test_help_names_a_default_for_every_flag_and_the_recommended_values(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, (name, _) in cli.TRAIN_FLAGS.items():
        shown = "recommended (below)" if name in RECOMMENDED else repr(getattr(RunConfig(), name))
        assert re.search(re.escape(flag) + r" \S+ default: " + re.escape(shown), text), flag
    for (method, adapters), rate in LEARNING_RATES.items():  # the epilog's table is the code's
        assert f"{rate:.1e}".replace(".0e", "e").replace("e-0", "e-") in text, (method, adapters, rate)


def test_only_fields_left_unset_are_recommended(tmp_path):
    toml = tmp_path / "start.toml"
    toml.write_text('method = "grpo"\nwarmup_steps = 3\n[grpo]\nrewards = ["exact_match"]\n')
    args = cli.build_parser().parse_args(["train", str(toml), "--learning-rate", "0.1", "--set", "epochs=2"])
    assert cli.recommended_unset(args) == {"max_steps", "grpo.reward_weights", "gradient_checkpointing"}
    args = cli.build_parser().parse_args(["train"])
    assert cli.recommended_unset(args) == set(RECOMMENDED)


def test_fill_unset_keeps_the_run_length_the_user_chose():
    config = RunConfig(method="lora")
    used = fill_unset(config, set(RECOMMENDED), 135_000_000, 400)
    assert used == recommended("lora", "lora", 135_000_000, 400) == {
        "learning_rate": 2e-4, "epochs": 3, "max_steps": 0, "warmup_steps": 9}
    assert (config.learning_rate, config.epochs, config.warmup_steps) == (2e-4, 3, 9)
    config = RunConfig(method="sft", max_steps=7)
    used = fill_unset(config, set(RECOMMENDED) - {"max_steps"}, 8_000_000_000, 400)
    assert (config.max_steps, config.epochs, config.learning_rate) == (7, 1, 5e-6)  # big model: halved
    assert "epochs" not in used and "max_steps" not in used


def test_cli_run_records_the_recommended_values_it_used(tiny_model_dir, tmp_path):
    data = write_chat_data(tmp_path / "data", n_train=8, n_valid=2)
    code, out, err = finish(start(["train", "--method", "lora", "--model", tiny_model_dir, "--data", data,
                                   "--run-name", "rec", "--max-steps", 1, "--set", "fine_tune_type=full",
                                   "--set", "eval_every=0"], tmp_path / "home"))
    assert code == 0, err
    config = RunConfig.load(tmp_path / "home" / "runs" / "rec" / "config.toml")
    assert config.learning_rate == 1e-5 != RunConfig().learning_rate  # full fine-tuning's, not the dataclass's
    assert (config.max_steps, config.epochs) == (1, 1)  # the user's run length stays
    log = (tmp_path / "home" / "runs" / "rec" / "log.txt").read_text()
    assert "Recommended for lora (full)" in log and "learning_rate = 1e-05" in log

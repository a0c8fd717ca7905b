"""A run on a Hugging Face id records the commit it trained on (config.toml: `org/name@<sha>`), and
a resume uses exactly those weights from the cache, offline; the CLI's messages for bad ids."""

import huggingface_hub.constants

from tests.core.hub.test_download import folder_files
from tests.core.test_cli import keep_signal_handlers  # noqa: F401  (fixture)
from tests.train_helpers import build, write_chat_data
from trainer_core import cli, runner
from trainer_core.config import RunConfig


def test_a_run_records_the_commit_and_resumes_offline(fake_hub, tiny_model_dir, tmp_path, monkeypatch):
    repo = fake_hub.add_repo("org/tiny", folder_files(tiny_model_dir))
    run = build("org/tiny", tmp_path, method="lora", max_steps=1, batch_size=2, save_every=1)
    run.train()
    assert RunConfig.load(run.run_dir / "config.toml").model == f"org/tiny@{repo.sha}"
    fake_hub.stop()  # no Hub any more, and offline
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    resumed = runner.prepare_resume(run.run_dir, max_steps=2)
    assert resumed.train().step == 2


def test_cli_names_an_unknown_id_without_a_traceback(fake_hub, tmp_path, monkeypatch, capsys,
                                                     keep_signal_handlers):
    data = write_chat_data(tmp_path / "data")
    monkeypatch.setenv("FINETUNE_STUDIO_HOME", str(tmp_path / "home"))
    code = cli.main(["train", "--method", "lora", "--model", "org/missing", "--data", str(data),
                     "--output-dir", str(tmp_path / "runs"), "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "'org/missing' was not found on Hugging Face (check the spelling)" in err
    assert not (tmp_path / "runs").exists()

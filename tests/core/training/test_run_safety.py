"""Resume refuses what it cannot honour, runs no code nobody chose, and every run says why it ended.

Each test here failed before the change it guards (issue 24): a same-size model with other bytes
resumed; an edited reward file resumed; an edited max_steps was ignored; a reward_file planted in
config.toml was imported before the checks; two processes could write one run; runs ended with
no `stopped` record; a run that failed before its first step left a folder behind.
"""

import json
import shutil
from pathlib import Path

import pytest

from tests.core.methods.test_grpo import run_config as grpo_run_config
from tests.train_helpers import StopAfter, make_config, write_chat_data
from trainer_core import runner
from trainer_core.config import RunConfig
from trainer_core.errors import UserError
from trainer_core.training.callbacks import Callback, read_metrics
from trainer_core.training.run_lock import RunLock, holder


def lora_config(model, tmp_path, name="run", **fields):
    data = write_chat_data(tmp_path / "data", 12)
    base = dict(method="lora", max_steps=6, save_every=2, batch_size=2, learning_rate=1e-2, run_name=name)
    base.update(fields)
    return make_config(model, data, tmp_path / "runs", **base)


def stopped_after(config, steps):
    result = runner.train(config, [StopAfter(steps)])
    assert result.status == "stopped"
    return Path(config.output_dir) / config.run_name


def events(run_dir, name):
    return [r for r in read_metrics(Path(run_dir) / "metrics.jsonl", raw=True) if r.get("event") == name]


@pytest.fixture
def own_model(tiny_model_dir, tmp_path):
    """A copy of the tiny model this test may tamper with."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def test_resume_refuses_a_model_with_the_same_size_but_other_bytes(own_model, tmp_path):
    run_dir = stopped_after(lora_config(own_model, tmp_path), 2)
    weights = next(own_model.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x55  # one byte of a weight: same name, same size
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"the model at {own_model}.* is not the one the run started with") as err:
        runner.resume(run_dir)
    assert err.value.field == "model" and "--allow-model-change" in str(err.value)
    assert runner.resume(run_dir, allow_model_change=True).status == "finished"
    changed = events(run_dir, "model_changed")
    assert len(changed) == 1 and changed[0]["after"] == str(own_model)


def test_model_digests_are_cached_by_size_and_mtime(own_model, tmp_path, monkeypatch):
    from trainer_core.training import resume_checks
    weights = next(own_model.glob("*.safetensors"))
    first = resume_checks.content_digest(weights)
    monkeypatch.setattr(resume_checks, "_sha256", lambda path: pytest.fail("hashed again"))
    assert resume_checks.content_digest(weights) == first
    monkeypatch.undo()
    weights.write_bytes(weights.read_bytes() + b"\0")  # a change: size and mtime differ
    assert resume_checks.content_digest(weights) != first


def planted_reward(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "ran.txt"
    code = f"open({str(marker)!r}, 'w').write('imported')\ndef evil(completion, **kw):\n    return 0.0\n"
    path = tmp_path / "planted.py"
    path.write_text(code)
    return path, marker


def test_an_edited_reward_file_is_refused_before_it_runs(tiny_model_dir, tmp_path):
    config = grpo_run_config(tmp_path, tiny_model_dir, "grpo", max_steps=3)
    config.save_every = 1
    run_dir = stopped_after(config, 1)
    reward = Path(config.grpo.reward_file)
    marker = tmp_path / "ran.txt"
    reward.write_text(reward.read_text() + f"\nopen({str(marker)!r}, 'w').write('imported')\n")
    with pytest.raises(UserError, match="reward file .* changed") as err:
        runner.resume(run_dir)
    assert err.value.field == "grpo.reward_file"
    assert not marker.exists()  # the edited code never ran


def test_a_reward_file_planted_in_config_toml_is_not_imported(tiny_model_dir, tmp_path):
    config = grpo_run_config(tmp_path, tiny_model_dir, "grpo", max_steps=3)
    config.save_every = 1
    run_dir = stopped_after(config, 1)
    planted, marker = planted_reward(tmp_path)
    saved = RunConfig.load(run_dir / "config.toml")
    saved.grpo.reward_file, saved.grpo.rewards = str(planted), ["evil"]
    saved.save(run_dir / "config.toml")
    with pytest.raises(UserError, match="settings changed .*grpo.reward_file"):
        runner.resume(run_dir)
    assert not marker.exists()


def test_an_edited_max_steps_in_config_toml_is_honoured(tiny_model_dir, tmp_path):
    run_dir = stopped_after(lora_config(tiny_model_dir, tmp_path), 2)
    saved = RunConfig.load(run_dir / "config.toml")
    saved.max_steps = 4
    saved.save(run_dir / "config.toml")
    result = runner.resume(run_dir)
    assert (result.status, result.step, result.total_steps) == ("finished", 4, 4)
    assert [e["field"] for e in events(run_dir, "config_changed")] == ["max_steps"]


def test_one_process_trains_a_run_at_a_time(tiny_model_dir, tmp_path):
    run_dir = stopped_after(lora_config(tiny_model_dir, tmp_path), 2)
    assert holder(run_dir) is None
    other = RunLock(run_dir).acquire()  # another process (a separate open file: flock treats it as one)
    try:
        assert holder(run_dir) is not None
        with pytest.raises(UserError, match=r"is being trained by process \d+"):
            runner.resume(run_dir)
    finally:
        other.release()
    assert runner.resume(run_dir).status == "finished"
    assert holder(run_dir) is None  # released at the end


def test_every_ending_is_a_stopped_record(tiny_model_dir, tmp_path):
    stopped = stopped_after(lora_config(tiny_model_dir, tmp_path, "stopped"), 2)
    last = read_metrics(stopped / "metrics.jsonl", raw=True)[-1]
    assert (last["event"], last["reason"], last["step"]) == ("stopped", "user", 2)
    runner.resume(stopped)
    last = read_metrics(stopped / "metrics.jsonl", raw=True)[-1]
    assert (last["event"], last["reason"], last["step"]) == ("stopped", "finished", 6)
    assert "Run finished at step 6" in (stopped / "log.txt").read_text()

    class Crash(Callback):
        def on_step_end(self, metrics):
            if metrics["step"] == 3:
                raise RuntimeError("[metal::malloc] Attempting to allocate 99 GB")

    config = lora_config(tiny_model_dir, tmp_path, "oom")
    with pytest.raises(RuntimeError):
        runner.train(config, [Crash()])
    last = read_metrics(Path(config.output_dir) / "oom" / "metrics.jsonl", raw=True)[-1]
    assert (last["event"], last["reason"], last["step"]) == ("stopped", "out_of_memory", 3)


def test_a_run_that_fails_before_its_first_step_leaves_no_folder(tiny_model_dir, tmp_path):
    class FailsAtOnce(Callback):
        def on_step_begin(self, info):
            raise ValueError("a reward function returned NaN")

    config = lora_config(tiny_model_dir, tmp_path, "early")
    with pytest.raises(ValueError):
        runner.train(config, [FailsAtOnce()])
    assert not (Path(config.output_dir) / "early").exists()


def test_a_checkpoint_of_another_run_is_named_as_such(tiny_model_dir, tmp_path):
    mine = stopped_after(lora_config(tiny_model_dir, tmp_path, "mine"), 2)
    other = stopped_after(lora_config(tiny_model_dir, tmp_path, "other", method="sft"), 2)
    with pytest.raises(UserError, match="belongs to another run .*method 'sft'"):
        runner.resume(mine, checkpoint=other / "checkpoints" / "step-000002")
    with pytest.raises(UserError, match="step-000099 does not exist"):
        runner.resume(mine, checkpoint=mine / "checkpoints" / "step-000099")


@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", "bad\nname", "/abs"])
def test_run_names_are_one_folder_name(name):
    assert "run_name" in RunConfig(data="d", run_name=name).problems()


@pytest.mark.parametrize("assignment,field", [("max_steps=1e30", "max_steps"), ("batch_size=100000000", "batch_size"),
                                              ("grpo.group_size=1e9", "grpo.group_size"), ("epochs=2.5", "epochs")])
def test_whole_numbers_are_whole_and_bounded(assignment, field):
    with pytest.raises(UserError) as err:
        RunConfig(data="d").with_overrides([assignment]).validate()
    assert err.value.field == field


def test_a_negative_learning_rate_names_only_the_learning_rate():
    assert list(RunConfig(data="d", learning_rate=-1).problems()) == ["learning_rate"]


def test_a_model_that_ships_code_is_refused_even_when_stdin_says_yes(own_model, tmp_path):
    import os
    import subprocess
    import sys
    from trainer_core.models.loading import load_model
    marker = tmp_path / "ran.txt"
    (own_model / "evil_tokenizer.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    settings = json.loads((own_model / "tokenizer_config.json").read_text())
    settings["auto_map"] = {"AutoTokenizer": ["evil_tokenizer.EvilTokenizer", None]}
    (own_model / "tokenizer_config.json").write_text(json.dumps(settings))
    with pytest.raises(UserError, match="ships its own Python code .*tokenizer_config.json"):
        load_model(str(own_model))
    repo = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-m", "trainer_core", "generate", "--model", str(own_model), "--prompt", "hi"],
                          input="y\ny\n", capture_output=True, text=True, cwd=repo,
                          env=dict(os.environ, PYTHONPATH=str(repo)))
    assert done.returncode == 2 and "ships its own Python code" in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists()


def test_generation_flags_out_of_range_are_one_message(capsys):
    from trainer_core import cli
    assert cli.main(["generate", "--model", "demo", "--prompt", "hi", "--max-tokens", "-5", "--top-p", "2"]) == 2
    err = capsys.readouterr().err
    assert "--max-tokens must be at least 1" in err and "--top-p must be in (0, 1]" in err


def test_a_read_only_run_names_the_run_folder_not_output_dir(tiny_model_dir, tmp_path, monkeypatch):
    run_dir = stopped_after(lora_config(tiny_model_dir, tmp_path), 2)

    def read_only(self, path):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(RunConfig, "save", read_only)
    with pytest.raises(UserError, match=f"Cannot write the run folder {run_dir}.*Make it writable") as err:
        runner.resume(run_dir)
    assert "Choose a writable output_dir" not in str(err.value)

"""Sample prompts answered at every checkpoint (trainer_core/samples.py): real micro runs on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import pytest

from tests.helpers import train_losses
from tests.core.methods.test_diffusion import QA, diffusion_config, write_completions
from tests.core.training.test_resume import StopAfter, make_config, weights
from trainer_core.generation import diffusion_sampler
from trainer_core import runner
from trainer_core.training.callbacks import read_metrics
from trainer_core.config import RunConfig
from trainer_core.data.records import DatasetSplits, Record
from trainer_core.generation.generate import GenerationSettings, generate, load_for_inference
from trainer_core.generation.samples import SAMPLES_FILE, choose_prompts, prompt_of, read_samples


def sample_events(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("event") == "samples"]


def test_every_checkpoint_answers_the_first_valid_prompts_as_finetune_generate_would(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, tiny_model_dir, "s", max_steps=4, save_every=2, num_samples=2,
                         sample_max_tokens=12)
    runner.train(config)
    run_dir = tmp_path / "runs" / "s"
    events = sample_events(run_dir)
    assert [e["step"] for e in events] == [2, 4]
    lines = (Path(config.data) / "valid.jsonl").read_text().splitlines()
    valid = [json.loads(line)["messages"][0]["content"] for line in lines]
    for event in events:
        checkpoint = run_dir / "checkpoints" / f"step-{event['step']:06d}"
        assert event["checkpoint"] == str(checkpoint)
        stored = json.loads((checkpoint / SAMPLES_FILE).read_text())
        assert stored["step"] == event["step"] and stored["max_tokens"] == 12
        assert stored["samples"] == event["samples"]
        assert [s["prompt"] for s in stored["samples"]] == valid[:2]
        loaded = load_for_inference(None, checkpoint)  # what `finetune generate --adapter` answers
        for sample in stored["samples"]:
            assert sample["answer"] and sample["answer"] == generate(
                loaded, sample["prompt"], GenerationSettings(max_tokens=12, temperature=0.0))
    assert read_samples(run_dir / "final") == events[-1]["samples"]  # final/ = the last checkpoint's weights
    assert events[0]["samples"] != events[1]["samples"]  # the model changed between the checkpoints


def test_configured_prompts_replace_the_data_and_none_turns_samples_off(tmp_path, tiny_model_dir):
    runner.train(make_config(tmp_path, tiny_model_dir, "own", max_steps=2, save_every=2,
                             sample_prompts=["Say hi", "Count to three"], sample_max_tokens=4))
    events = sample_events(tmp_path / "runs" / "own")
    assert [[s["prompt"] for s in e["samples"]] for e in events] == [["Say hi", "Count to three"]]
    runner.train(make_config(tmp_path, tiny_model_dir, "off", max_steps=2, save_every=2, num_samples=0))
    off = tmp_path / "runs" / "off"
    assert sample_events(off) == [] and not (off / "checkpoints" / "step-000002" / SAMPLES_FILE).exists()
    assert read_samples(off / "checkpoints" / "step-000002") is None


def test_samples_do_not_change_exact_resume(tmp_path, tiny_model_dir):
    """Dropout on: a sampler that left the model in eval mode, or drew from the training RNG, would show here."""
    fields = dict(max_steps=6, lora={"dropout": 0.3}, sample_max_tokens=6)
    runner.train(make_config(tmp_path, tiny_model_dir, "plain", num_samples=0, **fields))
    sampled = make_config(tmp_path, tiny_model_dir, "sampled", save_every=1, num_samples=2, **fields)
    assert runner.train(sampled, [StopAfter(3)]).status == "stopped"
    run_dir = tmp_path / "runs" / "sampled"
    assert runner.resume(run_dir).status == "finished"
    assert [e["step"] for e in sample_events(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert train_losses(run_dir) == train_losses(tmp_path / "runs" / "plain")
    a, b = weights(tmp_path / "runs" / "plain"), weights(run_dir)
    assert all(mx.array_equal(a[k], b[k]).item() for k in a)


def test_a_diffusion_run_is_sampled_by_the_diffusion_sampler(tmp_path, tiny_model_dir):
    write_completions(tmp_path / "data" / "train.jsonl", QA * 2)
    runner.train(diffusion_config(tiny_model_dir, tmp_path / "data", tmp_path / "runs", max_steps=2, save_every=2,
                                  batch_size=2, num_samples=2, sample_max_tokens=8))
    checkpoint = tmp_path / "runs" / "run" / "checkpoints" / "step-000002"
    samples = read_samples(checkpoint)
    assert [s["prompt"] for s in samples] == [QA[0][0], QA[1][0]]
    model = diffusion_sampler.load(None, checkpoint)
    settings = diffusion_sampler.DiffusionSettings(max_tokens=8)
    assert [s["answer"] for s in samples] == [diffusion_sampler.generate(model, p, settings) for p, _ in QA[:2]]


def test_a_failing_samples_write_is_reported_once_and_training_goes_on(tmp_path, tiny_model_dir, monkeypatch):
    import trainer_core.generation.samples as samples_module

    def full_disk(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(samples_module, "write_samples", full_disk)
    result = runner.train(make_config(tmp_path, tiny_model_dir, "full", max_steps=2, save_every=1,
                                      sample_max_tokens=2))
    monkeypatch.undo()
    assert result.status == "finished"
    events = [r for r in read_metrics(tmp_path / "runs" / "full" / "metrics.jsonl") if r["type"] == "event"]
    failed = [e for e in events if e["event"] == "samples_failed"]
    assert len(failed) == 1 and "No space left" in failed[0]["message"]
    assert not [e for e in events if e["event"] == "samples"]


def record(data: dict) -> Record:
    return Record(data, "train.jsonl", 1)


def test_the_prompt_of_each_data_kind():
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "And you?"},
                         {"role": "assistant", "content": "Fine."}]}
    prompt = prompt_of(chat, "chat")
    assert prompt.text == "And you?" and prompt.messages == chat["messages"][:4] and not prompt.raw
    assert prompt_of({"prompt": "2+2?", "completion": "4"}, "completions").messages == [
        {"role": "user", "content": "2+2?"}]
    conversation = [{"role": "user", "content": "Pick one"}]
    assert prompt_of({"prompt": conversation, "chosen": "a", "rejected": "b"}, "preference").messages == conversation
    assert prompt_of({"prompt": "Sum 3 and 4", "answer": "7"}, "prompt_answer").text == "Sum 3 and 4"
    text = prompt_of({"text": "one two three four five six"}, "text")
    assert text.text == "one two three" and text.raw
    assert prompt_of({"text": "   "}, "text") is None


def test_prompts_come_from_valid_then_train_distinct_and_capped():
    rows = [record({"prompt": p, "completion": "x"}) for p in ("a", "a", "b", "c", "d")]
    config = RunConfig(num_samples=3)
    assert [p.text for p in choose_prompts(config, DatasetSplits("completions", rows))] == ["a", "b", "c"]
    splits = DatasetSplits("completions", rows, valid=[record({"prompt": "v", "completion": "x"})])
    assert [p.text for p in choose_prompts(config, splits)] == ["v"]
    config.sample_prompts = ["mine"]
    assert [(p.text, p.raw) for p in choose_prompts(config, DatasetSplits("text", []))] == [("mine", True)]


@pytest.mark.parametrize("field, value", [("sample_max_tokens", 0), ("num_samples", -1), ("sample_prompts", [""]),
                                          ("sample_prompts", [3])])
def test_bad_sample_settings_name_their_field(field, value):
    config = RunConfig(data="x")
    setattr(config, field, value)
    assert field in config.problems()

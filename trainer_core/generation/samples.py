"""Sample prompts answered at every checkpoint, so a person sees the model change over training.

    prompts = choose_prompts(config, splits)     # config.sample_prompts, else the first num_samples of valid (or train)
    sampler = CheckpointSamples(model, tokenizer, prompts, config, method)   # a Callback; runner.build_run adds it
    sampler.report = loop.callbacks.on_event     # (rank 0 only) and points `report` at the loop's callbacks

On every `on_save` (on the training thread, between steps, right after the
checkpoint is on disk) the model answers each prompt with the code `finetune
generate` uses: generate.py, or the diffusion sampler for a diffusion run. It
answers greedily (temperature 0: no random draw) in eval mode (no dropout) and
goes back to train mode; the loop re-seeds its RNG before every step anyway, so
samples never change the training maths and exact resume is untouched. Then:

- `<checkpoint>/samples.json` is written atomically (temp file, fsync, rename):
  {"step", "max_tokens", "samples": [{"prompt", "answer"}, ...]};
- an event {"event": "samples", "step", "checkpoint", "samples", "seconds"} is
  reported (metrics.jsonl, and the GUI's Checkpoints tab through its bridge).

At the end `final/` (the last checkpoint's weights) gets the same samples.json.
Text data is continued from the first words of a record (no chat template);
every other kind asks the prompt through the model's chat template, as training
rendered it. A failure to sample is logged and never stops training.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from trainer_core.training.callbacks import Callback
from trainer_core.data.tokenize import render_messages

SAMPLES_FILE = "samples.json"
PREFIX_WORDS = 24  # a text record is continued from at most this many of its first words (half of it when shorter)


@dataclass
class SamplePrompt:
    text: str  # what a person reads: the prompt, or the last user message of a conversation
    messages: list[dict] | None = None  # the conversation to answer (chat template); None = `text` as a user turn
    raw: bool = False  # continue `text` as plain text (text data), no chat template


def prompt_of(data: dict, kind: str) -> SamplePrompt | None:
    """The prompt part of one dataset record (None when it has none, e.g. empty text)."""
    if kind == "text":
        words = data.get("text", "").split()
        if not words:
            return None
        return SamplePrompt(" ".join(words[:max(1, min(PREFIX_WORDS, len(words) // 2))]), raw=True)
    messages = render_messages(data, kind) or []
    answers = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if kind in ("chat", "completions") and answers:
        messages = messages[:answers[-1]]  # the conversation up to the last reply
    users = [m["content"] for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
    return SamplePrompt(users[-1], messages=messages) if users else None


def choose_prompts(config, splits) -> list[SamplePrompt]:
    """config.sample_prompts, else the first `num_samples` distinct prompts of the valid split (train without one)."""
    if config.sample_prompts:
        return [SamplePrompt(text, raw=splits.kind == "text") for text in config.sample_prompts]
    chosen: list[SamplePrompt] = []
    for record in splits.valid or splits.train:
        if len(chosen) >= config.num_samples:
            break
        prompt = prompt_of(record.data, splits.kind)
        if prompt is not None and prompt.text not in [p.text for p in chosen]:
            chosen.append(prompt)
    return chosen


def write_samples(folder: Path, step: int, samples: list[dict], max_tokens: int) -> Path:
    """`folder/samples.json`, atomically (a reader sees the old file, none, or the whole new one)."""
    path = Path(folder) / SAMPLES_FILE
    tmp = path.with_name(f".{SAMPLES_FILE}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"step": step, "max_tokens": max_tokens, "samples": samples}, f, indent=2, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_samples(folder: Path) -> list[dict] | None:
    """The samples stored in a checkpoint folder; None when it has none (or the file is damaged)."""
    try:
        data = json.loads((Path(folder) / SAMPLES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    samples = data.get("samples") if isinstance(data, dict) else None
    return [s for s in samples if isinstance(s, dict)] if isinstance(samples, list) else None


class CheckpointSamples(Callback):
    """Answers the prompts at every checkpoint (see the module doc). `report(info)` sends the event."""

    def __init__(self, model, tokenizer, prompts: list[SamplePrompt], config, method=None):
        self.model, self.tokenizer, self.prompts = model, tokenizer, prompts
        self.max_tokens = config.sample_max_tokens
        self.max_prompt_tokens = config.max_seq_length
        self.method = method  # a diffusion run's method knows its [MASK] id once bound
        self.report = lambda info: None
        self.last: tuple[int, list[dict]] | None = None  # (step, samples) of the last checkpoint
        self.failed = False

    def _ids(self, prompt: SamplePrompt) -> list[int]:
        from trainer_core.data.tokenize import build_prompt
        if prompt.raw:
            ids = list(self.tokenizer.encode(prompt.text))
        else:
            ids = build_prompt(self.tokenizer, prompt.messages if prompt.messages is not None else prompt.text)
        return ids[-self.max_prompt_tokens:]

    def _answer(self, ids: list[int]) -> str:
        mask_id = getattr(self.method, "mask_id", None) if getattr(self.method, "name", "") == "diffusion" else None
        if mask_id is None:
            from trainer_core.generation.generate import GenerationSettings, stream_ids
            pieces = stream_ids(self.model, self.tokenizer, ids, GenerationSettings(self.max_tokens, temperature=0.0))
        else:
            from trainer_core.generation.diffusion_sampler import DiffusionSettings, stream_ids
            pieces = stream_ids(self.model, self.tokenizer, mask_id, ids,
                                DiffusionSettings(self.max_tokens, temperature=0.0))
        return "".join(pieces)

    def answer_all(self) -> list[dict]:
        """[{"prompt", "answer"}] from the model as it is now (eval mode while answering)."""
        training = self.model.training
        self.model.eval()
        try:
            return [{"prompt": p.text, "answer": self._answer(self._ids(p))} for p in self.prompts]
        finally:
            self.model.train(training)

    def on_save(self, info: dict) -> None:
        step, path = int(info["step"]), Path(info["path"])
        started = time.perf_counter()
        try:
            samples = self.answer_all()
            write_samples(path, step, samples, self.max_tokens)
        except Exception as e:  # samples are a view on training: never let them end it
            if not self.failed:
                self.failed = True
                self.report({"step": step, "event": "samples_failed", "message": f"{type(e).__name__}: {e}"})
            return
        self.last = (step, samples)
        self.report({"step": step, "event": "samples", "checkpoint": str(path), "samples": samples,
                     "seconds": round(time.perf_counter() - started, 3)})

    def on_train_end(self, info: dict) -> None:
        final = info.get("final_dir")
        if final and self.last is not None and self.last[0] == info.get("step"):
            try:
                write_samples(Path(final), self.last[0], self.last[1], self.max_tokens)
            except OSError:
                pass  # final/ is complete without them; the checkpoint's copy stays

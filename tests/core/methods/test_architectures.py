"""Every method on every architecture the loader lists, on tiny random HF folders (tests/tiny_archs.py).

Each cell of methods x architectures runs two real optimizer steps through `runner.build_run(...).train()`
and needs finite losses. Per architecture, the two places that override the model's own attention
mask are proven: diffusion's bidirectional attention (position 0 sees a later token) and GRPO's
left-padded batched rollout (the sampled log-probs equal an unpadded forward pass of each row).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx

from tests.tiny_archs import ARCHITECTURES, make_hf_folder
from tests.train_helpers import write_chat_data, write_jsonl
from trainer_core import runner
from trainer_core.config import METHODS, RunConfig
from trainer_core.data.tokenize import build_prompt
from trainer_core.errors import UserError
from trainer_core.methods.diffusion import bidirectional_logits
from trainer_core.methods.rollout import SamplingSettings, sample_completions, token_logprobs
from trainer_core.models.loading import load_model
from trainer_core.training.callbacks import read_metrics

PAIR = {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "The quick brown fox."}


BF16 = ("gemma2", "gemma3_text")  # the architectures whose attention we touch beyond the mask's shape


def bf16_copy(folder: Path, to: Path) -> Path:
    """`folder` with its weights in bfloat16, as real checkpoints ship."""
    shutil.copytree(folder, to)
    weights = mx.load(str(to / "model.safetensors"))
    mx.save_safetensors(str(to / "model.safetensors"), {k: v.astype(mx.bfloat16) for k, v in weights.items()},
                        metadata={"format": "pt"})
    config = json.loads((to / "config.json").read_text())
    (to / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    return to


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{architecture: tiny model folder} plus "data-<kind>" folders, built once for the module."""
    root = tmp_path_factory.mktemp("archs")
    built = {arch: make_hf_folder(root / arch, arch) for arch in ARCHITECTURES}
    for arch in BF16:
        built[f"{arch}-bf16"] = bf16_copy(built[arch], root / f"{arch}-bf16")
    built["data-chat"] = write_chat_data(root / "chat", 4)
    built["data-pairs"] = write_jsonl(root / "pairs" / "train.jsonl", [PAIR] * 4).parent
    built["data-prompts"] = write_jsonl(root / "prompts" / "train.jsonl",
                                        [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(4)]).parent
    return built


def cell_config(folders, tmp_path, arch, method) -> RunConfig:
    data = {"dpo": "data-pairs", "grpo": "data-prompts"}.get(method, "data-chat")
    config = RunConfig(method=method, model=str(folders[arch]), data=str(folders[data]), output_dir=str(tmp_path),
                       run_name="run", max_steps=2, batch_size=2, max_seq_length=48, save_every=0, eval_every=0,
                       lr_schedule="constant", num_samples=0)
    config.grpo.group_size, config.grpo.max_completion_length = 2, 4
    return config


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_method_trains_on_every_architecture(folders, tmp_path, arch, method):
    run = runner.build_run(cell_config(folders, tmp_path, arch, method))
    run.train()
    losses = [r["loss"] for r in read_metrics(run.run_dir / "metrics.jsonl")
              if r.get("split", "train") == "train" and "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses


@pytest.mark.parametrize("method", ("diffusion", "grpo"))
@pytest.mark.parametrize("arch", [f"{a}-bf16" for a in BF16])
def test_bfloat16_models_train(folders, tmp_path, arch, method):
    test_every_method_trains_on_every_architecture(folders, tmp_path, arch, method)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_diffusion_attention_is_bidirectional(folders, arch):
    model = load_model(str(folders[arch])).model
    ids = mx.array([[5, 6, 7, 8, 9, 10]])
    later = mx.array([[5, 6, 7, 8, 9, 11]])  # only the last token differs
    both = bidirectional_logits(model, ids), bidirectional_logits(model, later)
    assert all(bool(mx.isfinite(x).all()) for x in both)
    assert float(mx.abs(both[0][0, 0] - both[1][0, 0]).max()) > 1e-3  # position 0 saw the last token
    assert float(mx.abs(model(ids)[0, 0] - model(later)[0, 0]).max()) == 0.0  # without it: causal


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batched_rollout_matches_each_row_alone(folders, arch):
    """Left-padded prompts of different lengths through one batched KV cache give, per row, the
    log-probs of a plain unpadded forward pass: the padding mask hides the padding, nothing else."""
    loaded = load_model(str(folders[arch]))
    prompts = [build_prompt(loaded.tokenizer, p) for p in ("Hi", "Tell me about the quick brown fox and the dog")]
    assert len(prompts[0]) < len(prompts[1])
    mx.random.seed(3)
    rollout = sample_completions(loaded.model, prompts, SamplingSettings(max_tokens=4), eos_ids=[], pad_id=0)
    for prompt, completion, logps in zip(prompts, rollout.completions, rollout.logprobs):
        ids = mx.array(prompt + completion)[None]
        alone = token_logprobs(loaded.model(ids[:, :-1]), ids[:, 1:], 1.0)[0, len(prompt) - 1:]
        np.testing.assert_allclose(logps, np.array(alone), atol=1e-4)


def test_a_mask_token_outside_the_embedding_is_refused(folders, tmp_path):
    """An id past the embedding's rows would be read and written out of bounds (NaN, then heap corruption):
    refused with one message before a step runs, and the new run leaves no folder behind."""
    model = tmp_path / "trimmed"
    shutil.copytree(folders["gemma2"], model)
    weights = mx.load(str(model / "model.safetensors"))
    rows = weights["model.embed_tokens.weight"].shape[0] - 1  # the tokenizer's last token has no row
    weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"][:rows]
    mx.save_safetensors(str(model / "model.safetensors"), weights, metadata={"format": "pt"})
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "vocab_size": rows}))
    last = load_model(str(folders["gemma2"])).tokenizer.convert_ids_to_tokens(rows)
    config = cell_config(folders, tmp_path / "runs", "gemma2", "diffusion")
    config.model, config.diffusion.mask_token = str(model), last
    with pytest.raises(UserError, match=f"id {rows} but this model's embedding has {rows} rows"):
        runner.build_run(config)
    assert not (tmp_path / "runs" / "run").exists()

"""Masked diffusion: attention, forward process, loss, [MASK] token, sampler, runs and resume."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx

from trainer_core.generation import diffusion_sampler

from trainer_core import runner
from trainer_core.training.callbacks import read_metrics
from trainer_core.config import DiffusionConfig, RunConfig
from trainer_core.data import tokenize_sft
from trainer_core.errors import UserError
from trainer_core.generation.generate import load_for_inference
from trainer_core.methods.diffusion import BIDIRECTIONAL, DiffusionMethod, bidirectional_logits, draw_noise
from trainer_core.methods.sft import SFTMethod
from trainer_core.models.loading import load_model

PROMPT = "What is the capital of France?"
ANSWER = "The capital of France is Paris."
QA = [(PROMPT, ANSWER), ("How many legs does a spider have?", "Eight legs."),
      ("Where is the purple sand?", "On Velmora island."), ("Say hello.", "Hello world!")]


def write_completions(path: Path, pairs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs))
    return path


def diffusion_config(model_dir, data="", out_dir="", **fields) -> RunConfig:
    base = dict(method="diffusion", model=str(model_dir), data=str(data), output_dir=str(out_dir), run_name="run",
                max_steps=4, batch_size=4, save_every=0, eval_every=0, lr_schedule="constant",
                sample_max_tokens=4)  # short samples
    base.update(fields)
    return RunConfig(**base)


def make_method(loaded, **diffusion) -> DiffusionMethod:
    config = diffusion_config(loaded.info.path)
    for key, value in diffusion.items():
        setattr(config.diffusion, key, value)
    method = DiffusionMethod(config, loaded.tokenizer)
    method.bind(loaded.model)
    return method


def examples(tokenizer, pairs=QA):
    records = [{"prompt": p, "completion": c} for p, c in pairs]
    return tokenize_sft(records, tokenizer, "completions", 512)[0]


@pytest.fixture
def tiny(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    loaded.model.train()
    return loaded


class FixedLogits:
    """A stand-in model: returns fixed logits and records the ids and cache it was called with."""

    def __init__(self, logits, n_layers=2):
        self.logits, self.layers, self.calls = logits, [None] * n_layers, []

    def __call__(self, ids, cache=None):
        self.calls.append((np.array(ids), cache))
        return self.logits


# ---- attention -------------------------------------------------------------------------

def test_attention_is_bidirectional_in_diffusion_and_causal_in_sft(tiny):
    model = tiny.model
    ids = mx.array([[5, 17, 42, 99, 7, 23, 64, 11]])
    changed = mx.array([[5, 17, 42, 150, 7, 23, 64, 11]])  # token 3 differs
    first = lambda logits: np.array(logits[0, 0])  # noqa: E731
    both_ways = [first(bidirectional_logits(model, x)) for x in (ids, changed)]
    assert not np.allclose(*both_ways, atol=1e-6)
    np.testing.assert_array_equal(first(model(ids)), first(model(changed)))

    # through the methods' losses: only position 0 is scored / masked, only token 3 changes
    method = make_method(tiny)
    masked = mx.array([[True] + [False] * 7])
    batch = {"noisable": mx.ones((1, 8), dtype=mx.bool_), "masked": masked, "mask_prob": mx.array([0.5])}
    loss_a = method.loss(model, {**batch, "input_ids": ids})[0].item()
    loss_b = method.loss(model, {**batch, "input_ids": changed})[0].item()
    assert abs(loss_a - loss_b) > 1e-6
    sft = SFTMethod(diffusion_config(tiny.info.path, method="sft"), tiny.tokenizer)
    target = mx.array([[False, True] + [False] * 6])  # token 1, predicted from token 0 only
    assert sft.loss(model, {"input_ids": ids, "target_mask": target})[0].item() == \
        sft.loss(model, {"input_ids": changed, "target_mask": target})[0].item()


# ---- forward process -------------------------------------------------------------------

INVERSE = {  # t from p, computed independently of the implementation
    "linear": lambda p: p,
    "cosine": lambda p: np.arcsin(p) * 2 / np.pi,
    "polynomial": lambda p: p ** (1 / 3.0),
}


@pytest.mark.parametrize("schedule", sorted(INVERSE))
def test_mask_rate_matches_schedule(schedule):
    eps, rows, width = 0.05, 4000, 64
    mx.random.seed(1)
    noisable = mx.ones((rows, width), dtype=mx.bool_)
    mask_prob, masked = draw_noise(noisable, schedule, eps, power=3.0)
    p, counts = np.array(mask_prob, dtype=np.float64), np.array(masked).sum(axis=1)
    # t recovered from p is U(eps, 1): Kolmogorov-Smirnov distance below the 1% critical value
    t = np.sort(INVERSE[schedule](p))
    assert t.min() >= eps - 1e-6 and t.max() <= 1.0
    cdf = (t - eps) / (1 - eps)
    ks = np.max(np.abs(cdf - np.arange(1, rows + 1) / rows))
    assert ks < 1.63 / np.sqrt(rows), ks
    # masked count per row is Binomial(width, p): overall z-score and per-bin rates
    z = (counts - width * p).sum() / np.sqrt((width * p * (1 - p)).sum())
    assert abs(z) < 4, z
    for lo in np.arange(0, 1, 0.2):
        rows_in = (p >= lo) & (p < lo + 0.2)
        if rows_in.sum() > 100:
            assert abs(counts[rows_in].mean() / width - p[rows_in].mean()) < 0.02


def test_sft_mode_never_masks_prompt_tokens(tiny):
    method = make_method(tiny, sft_mode=True)
    batch = method.collate(examples(tiny.tokenizer))
    target = np.zeros(batch["noisable"].shape, dtype=bool)
    for row, e in enumerate(examples(tiny.tokenizer)):
        target[row, :len(e.target_mask)] = e.target_mask
        target[row, len(e.target_mask):] = True  # the EOS fill after the response
    np.testing.assert_array_equal(np.array(batch["noisable"]), target)
    ids = np.array(batch["input_ids"])
    vocab = ids.max() + 1
    stub = FixedLogits(mx.zeros((*ids.shape, vocab + 1)))
    mx.random.seed(0)
    ever_masked = np.zeros_like(target)
    for _ in range(300):  # the training path draws the mask inside loss
        method.loss(stub, batch)
        seen = stub.calls[-1][0]
        np.testing.assert_array_equal(seen[~target], ids[~target])
        ever_masked |= seen == method.mask_id
    assert not (ever_masked & ~target).any()
    assert ever_masked[target].all()  # every response position gets masked sometimes
    # without sft_mode the prompt is noised too
    free = make_method(load_model(str(tiny.info.path)), sft_mode=False)
    assert np.array(free.collate(examples(tiny.tokenizer))["noisable"]).all()


def test_text_data_noises_every_token_but_the_first(tiny):
    method = make_method(tiny)
    text = tokenize_sft([{"text": ANSWER}], tiny.tokenizer, "text", 512)[0]
    noisable = np.array(method.collate(text)["noisable"])[0]
    assert not noisable[0] and noisable[1:].all()


# ---- loss ---------------------------------------------------------------------------------

def reference_loss(logits, ids, masked, mask_prob, noisable, normalization="row"):
    """Numpy, (sum, weight): row (LLaDA's SFT loss): for each row the sum over its masked tokens of CE / p
    divided by the row's noisable (answer) tokens, weight = rows; token: the sum over every masked token
    of CE / p, weight = the batch's noisable tokens."""
    logits = logits.astype(np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    ce = logz - np.take_along_axis(logits, ids[..., None], axis=-1)[..., 0]
    if normalization == "row":
        return sum(sum(ce[b, i] / mask_prob[b] for i in np.flatnonzero(masked[b])) / noisable[b].sum()
                   for b in range(len(ids))), len(ids)
    total = sum(ce[b, i] / mask_prob[b] for b, i in zip(*np.nonzero(masked)))
    return total, noisable.sum()


@pytest.fixture
def fixed_batch(tiny):
    method = make_method(tiny)  # the tiny tokenizer has no mask token: a row is added
    rng = np.random.default_rng(3)
    rows, width, vocab = 3, 10, method.mask_id
    ids = rng.integers(0, vocab, size=(rows, width)).astype(np.int32)
    noisable = np.ones((rows, width), dtype=bool)
    noisable[:, :3] = False  # a prompt
    noisable[1, :6] = False  # rows of different answer lengths
    masked = (rng.random((rows, width)) < 0.5) & noisable
    masked[2] = False  # a row with nothing masked
    mask_prob = np.array([0.25, 0.8, 0.5], dtype=np.float32)
    logits = rng.normal(size=(rows, width, vocab + 1)).astype(np.float32) * 3
    batch = {"input_ids": mx.array(ids), "noisable": mx.array(noisable), "masked": mx.array(masked),
             "mask_prob": mx.array(mask_prob)}
    return method, batch, logits, (ids, masked, mask_prob, noisable)


@pytest.mark.parametrize("normalization", ["row", "token"])
def test_loss_matches_numpy_reference(fixed_batch, normalization):
    method, batch, logits, (ids, masked, mask_prob, noisable) = fixed_batch
    method.config.diffusion.normalization = normalization  # default "row" (LLaDA)
    stub = FixedLogits(mx.array(logits))
    loss_sum, weight, metrics = method.loss(stub, batch)
    # the added [MASK] column is not a class: the reference drops it
    ref_sum, ref_weight = reference_loss(logits[..., :-1], ids, masked, mask_prob, noisable, normalization)
    assert loss_sum.item() == pytest.approx(ref_sum, rel=1e-5)
    assert weight.item() == ref_weight
    ratio = (masked.sum(-1) / noisable.sum(-1)).sum() if normalization == "row" else masked.sum()
    assert metrics["mask_ratio"].item() == pytest.approx(ratio, rel=1e-6)
    seen, cache = stub.calls[-1]
    np.testing.assert_array_equal(seen, np.where(masked, method.mask_id, ids))
    assert cache == [BIDIRECTIONAL, BIDIRECTIONAL]


def test_unmasked_positions_contribute_zero_loss(fixed_batch):
    method, batch, logits, (ids, masked, _, _) = fixed_batch
    base = method.loss(FixedLogits(mx.array(logits)), batch)[0].item()
    scrambled = logits.copy()
    scrambled[~masked] = np.random.default_rng(9).normal(size=scrambled[~masked].shape) * 50
    assert method.loss(FixedLogits(mx.array(scrambled)), batch)[0].item() == base
    one = logits.copy()
    b, i = np.argwhere(masked)[0]
    one[b, i] *= -1
    assert method.loss(FixedLogits(mx.array(one)), batch)[0].item() != pytest.approx(base)


def test_eval_noise_is_fixed_by_the_batch(tiny):
    method = make_method(tiny)
    tiny.model.eval()
    batch_a, batch_b = method.collate(examples(tiny.tokenizer)), method.collate(examples(tiny.tokenizer))
    np.testing.assert_array_equal(np.array(batch_a["masked"]), np.array(batch_b["masked"]))
    assert np.array(batch_a["masked"]).any()
    tiny.model.train()
    assert "masked" not in method.collate(examples(tiny.tokenizer))


# ---- [MASK] token ------------------------------------------------------------------------------

def test_added_mask_row_and_configured_mask_token(tiny, tmp_path):
    vocab = tiny.model.model.embed_tokens.weight.shape[0]
    embedding = np.array(tiny.model.model.embed_tokens.weight)
    method = make_method(tiny)
    assert method.mask_id == vocab and method.checkpoint_info() == {
        "diffusion": {"mask_token_id": vocab, "added_mask_token": True}}
    grown = np.array(tiny.model.model.embed_tokens.weight)
    np.testing.assert_allclose(grown[-1], embedding.mean(0), atol=1e-6)
    assert tiny.model.lm_head.weight.shape[0] == vocab + 1

    other = load_model(str(tiny.info.path))
    configured = make_method(other, mask_token="<|endoftext|>")
    assert configured.mask_id == tiny.tokenizer.get_vocab()["<|endoftext|>"] and not configured.added_mask_token
    assert other.model.model.embed_tokens.weight.shape[0] == vocab
    with pytest.raises(UserError, match="diffusion.mask_token"):
        make_method(other, mask_token="<|no such token|>")
    data = write_completions(tmp_path / "train.jsonl", [("a <|endoftext|> b", "c")])
    with pytest.raises(UserError, match=r"train.jsonl:1"):
        runner.train(diffusion_config(tiny.info.path, data, tmp_path / "runs",
                                      diffusion=DiffusionConfig(mask_token="<|endoftext|>")))


@pytest.mark.parametrize("fine_tune_type,quantized", [("full", False), ("lora", False), ("lora", True)])
def test_checkpoint_reloads_with_its_mask_token(request, tmp_path, fine_tune_type, quantized):
    tiny_model_dir = request.getfixturevalue("tiny_quant_model_dir" if quantized else "tiny_model_dir")
    data = write_completions(tmp_path / "data" / "train.jsonl", QA)
    run = runner.build_run(diffusion_config(tiny_model_dir, data.parent, tmp_path / "runs", max_steps=3,
                                            learning_rate=1e-2, fine_tune_type=fine_tune_type,
                                            quantized_base="keep"))
    result = run.train()
    config = json.loads((Path(result.final_dir) / "adapter_config.json").read_text())
    assert config["diffusion"]["added_mask_token"] and config["fine_tune_type"] == fine_tune_type
    mask = config["diffusion"]["mask_token_id"]
    ids = mx.array([[5, 17, mask, 99, mask, 23]])
    run.loop.model.eval()
    trained = np.array(bidirectional_logits(run.loop.model, ids))
    reloaded = load_for_inference(None, result.final_dir, quantized_base="keep")
    np.testing.assert_allclose(np.array(bidirectional_logits(reloaded.model, ids)), trained, atol=1e-5)
    plain = mx.array([[5, 17, 99, 23]])
    base_logits = np.array(bidirectional_logits(load_model(str(tiny_model_dir)).model, plain))
    assert not np.allclose(base_logits, np.array(bidirectional_logits(reloaded.model, plain))[..., :-1])  # it trained


# ---- sampler -------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_tokens,steps,block_length", [(12, 0, 0), (12, 4, 0), (13, 6, 4), (8, 100, 3)])
def test_sampler_fills_every_mask(tiny, max_tokens, steps, block_length):
    method = make_method(tiny)
    tiny.model.eval()
    settings = diffusion_sampler.DiffusionSettings(max_tokens, steps, block_length)
    states = list(diffusion_sampler.denoise(tiny.model, [3, 4, 5], method.mask_id, settings))
    mask = method.mask_id
    final = states[-1].response
    assert len(final) == max_tokens and not (final == mask).any()
    previous = np.full(max_tokens, mask)
    for state in states:
        newly = (previous == mask) & (state.response != mask)
        assert newly.sum() >= 1
        assert ((state.response != mask)[state.block_end:]).sum() == 0  # later blocks wait their turn
        np.testing.assert_array_equal(state.response[previous != mask], previous[previous != mask])
        previous = state.response
    if steps == 0:  # one token per step
        assert len(states) == max_tokens


def test_overfit_one_example_then_sample_it_back(tiny_model_dir, tmp_path, capsys):
    data = write_completions(tmp_path / "data" / "train.jsonl", [(PROMPT, ANSWER)] * 8)
    config = diffusion_config(tiny_model_dir, data.parent, tmp_path / "runs", max_steps=150, batch_size=8,
                              learning_rate=3e-3, save_every=0)
    result = runner.train(config)
    model = diffusion_sampler.load(None, result.final_dir)
    settings = diffusion_sampler.DiffusionSettings(max_tokens=16, steps=8, block_length=8)
    assert diffusion_sampler.generate(model, PROMPT, settings) == ANSWER

    from trainer_core import cli
    args = SimpleNamespace(command="generate", model=None, adapter=result.final_dir, prompt=PROMPT, system=None,
                           max_tokens=16, temperature=0.0, top_p=1.0, top_k=0, method=None, steps=16, block_length=0)
    assert cli.run_generate(args) == 0
    assert capsys.readouterr().out.strip() == ANSWER


# ---- runs -------------------------------------------------------------------------------------------

def test_resume_equals_uninterrupted_run(tiny_model_dir, tmp_path):
    write_completions(tmp_path / "data" / "train.jsonl", QA * 2)
    write_completions(tmp_path / "data" / "valid.jsonl", QA[:2])
    fields = dict(batch_size=2, learning_rate=1e-2, eval_every=2)
    runner.train(diffusion_config(tiny_model_dir, tmp_path / "data", tmp_path / "a", max_steps=8, **fields))
    runner.train(diffusion_config(tiny_model_dir, tmp_path / "data", tmp_path / "b", max_steps=4, **fields))
    runner.resume(tmp_path / "b" / "run", max_steps=8)

    def records(run, kind):
        metrics = read_metrics(tmp_path / run / "run" / "metrics.jsonl")
        return [(r["step"], r["loss"], r.get("mask_ratio")) for r in metrics if r["type"] == kind]
    full, resumed = records("a", "train"), records("b", "train")
    assert [r[0] for r in full] == list(range(1, 9)) and full == resumed
    assert all(0 < r[2] <= 1 for r in full)
    assert [r[0] for r in records("a", "eval")] == [2, 4, 6, 8] and records("a", "eval") == records("b", "eval")

"""DPO: response-only log-probs, the published losses, the reference model, caching, training, CLI.

Every expected value here is computed independently of trainer_core.methods.dpo:
response tokens from the tokenizer's own chat template, log-probs with numpy
log-softmax over the model's logits (one unpadded sequence at a time), the
reference from a freshly loaded base model, losses from the papers' formulas.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx

from trainer_core import runner
from trainer_core.models.adapters import prepare_for_training
from trainer_core.training.callbacks import read_metrics
from trainer_core.config import RunConfig
from trainer_core.data import load_dataset
from trainer_core.errors import UserError
from tests.train_helpers import StopAfter
from trainer_core.methods.dpo import REFERENCE_FILE, DPOMethod, sequence_logps
from trainer_core.methods.reference import adapter_modules
from trainer_core.methods.preference_data import tokenize_preference
from trainer_core.models.loading import load_model

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "resources" / "demo_preference"

PAIRS = [  # separable: chosen always names Paris, rejected is about a fox
    {"prompt": "What is the capital of France?", "chosen": "The capital of France is Paris.",
     "rejected": "The quick brown fox jumps over the lazy dog."},
    {"prompt": [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Hello world! What is the capital of France?"}],
     "chosen": "Paris.", "rejected": "The lazy dog is brown."},
    {"prompt": [{"role": "user", "content": "Question: how many legs does a spider have?"},
                {"role": "assistant", "content": "Answer: eight legs."},
                {"role": "user", "content": "What is the capital of France?"}],
     "chosen": "The capital of France is Paris.", "rejected": "The quick fox."},
    {"prompt": "Velmora is an island with purple sand.", "chosen": "The capital of France is Paris.",
     "rejected": "quick brown fox jumps over the lazy dog"},
]


def write_pairs(folder: Path, n_train: int = 8, n_valid: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("valid", n_valid)):
        rows = [PAIRS[i % len(PAIRS)] for i in range(n)]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def dpo_config(model_dir, data, out=None, **fields) -> RunConfig:
    dpo = fields.pop("dpo", {})
    base = dict(method="dpo", model=str(model_dir), data=str(data), output_dir=str(out or ""), run_name="run",
                max_steps=2, batch_size=4, learning_rate=1e-2, lr_schedule="constant", save_every=0, eval_every=0,
                sample_max_tokens=4)  # short samples
    base.update(fields)
    config = RunConfig(**base)
    for k, v in dpo.items():
        setattr(config.dpo, k, v)
    return config


# ---- independent computations ----------------------------------------------------------
def template_ids(tokenizer, messages, generation_prompt=False) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    return [int(t) for t in (out["input_ids"] if hasattr(out, "keys") else out)]


def expected_sequence(tokenizer, record, response) -> tuple[list[int], list[int]]:
    """(token ids, scored positions): the template render cut after the response's <|im_end|>."""
    prompt = record["prompt"]
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    head = template_ids(tokenizer, messages, generation_prompt=True)
    full = template_ids(tokenizer, messages + [{"role": "assistant", "content": response}])
    assert full[:len(head)] == head
    end = full.index(tokenizer.convert_tokens_to_ids("<|im_end|>"), len(head)) + 1
    return full[:end], list(range(len(head), end))


def numpy_logp(model, ids, positions) -> float:
    """Sum over `positions` of log-softmax(logits[pos - 1])[ids[pos]], float64, one unpadded sequence."""
    logits = np.array(model(mx.array([ids[:-1]]))[0].astype(mx.float32)).astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return float(sum(log_softmax[pos - 1, ids[pos]] for pos in positions))


def numpy_dpo(pc, pr, rc, rr, beta, loss_type, label_smoothing=0.0) -> np.ndarray:
    """Per-pair losses from the published formulas (DPO / cDPO, IPO eq. 17, hinge)."""
    h = (pc - rc) - (pr - rr)
    sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    if loss_type == "sigmoid":
        return -(1 - label_smoothing) * np.log(sigmoid(beta * h)) - label_smoothing * np.log(sigmoid(-beta * h))
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    return np.maximum(0.0, 1 - beta * h)


# ---- fixtures --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    """A LoRA model whose adapters are random (policy != reference), a bound DPO method, the pairs."""
    data = write_pairs(tmp_path_factory.mktemp("dpo-data"))
    config = dpo_config(tiny_model_dir, data)
    loaded = load_model(str(tiny_model_dir))
    mx.random.seed(3)
    prepare_for_training(loaded.model, config)
    for _, module in adapter_modules(loaded.model):
        module.lora_b = 0.05 * mx.random.normal(module.lora_b.shape)
    method = DPOMethod(config, loaded.tokenizer)
    train, valid, _ = method.prepare(load_dataset(data))
    method.bind(loaded.model)
    base = load_model(str(tiny_model_dir)).model
    return {"config": config, "model": loaded.model, "tokenizer": loaded.tokenizer, "method": method,
            "train": train, "valid": valid, "base": base, "data": data}


@pytest.fixture(scope="module")
def expected(setup):
    """numpy policy and reference log-probs of the first four pairs, chosen and rejected."""
    out = {"policy": {}, "reference": {}}
    for side in ("chosen", "rejected"):
        seqs = [expected_sequence(setup["tokenizer"], PAIRS[i], PAIRS[i][side]) for i in range(4)]
        out["policy"][side] = np.array([numpy_logp(setup["model"], ids, pos) for ids, pos in seqs])
        out["reference"][side] = np.array([numpy_logp(setup["base"], ids, pos) for ids, pos in seqs])
        out.setdefault("tokens", {})[side] = np.array([len(pos) for _, pos in seqs])
    return out


# ---- tokenisation and log-probs ------------------------------------------------------------
def test_pairs_score_only_the_final_response_with_the_sft_template(setup):
    tok = setup["tokenizer"]
    start = tok.convert_tokens_to_ids("<|im_start|>")
    for i, pair in enumerate(setup["train"][:4]):
        for side, ids, mask in (("chosen", pair.chosen_ids, pair.chosen_mask),
                                ("rejected", pair.rejected_ids, pair.rejected_mask)):
            want_ids, positions = expected_sequence(tok, PAIRS[i], PAIRS[i][side])
            assert ids == want_ids, (i, side)
            assert [k for k, m in enumerate(mask) if m] == positions, (i, side)
            prompt = PAIRS[i]["prompt"]
            turns = 1 if isinstance(prompt, str) else len(prompt)
            assert ids.count(start) == turns + 1  # one assistant header, no stray empty one
            assert tok.decode([ids[k] for k in positions]) == PAIRS[i][side] + "<|im_end|>"


def test_pairs_losing_their_response_to_truncation_are_dropped(setup):
    long_prompt = {"prompt": "The quick brown fox jumps over the lazy dog. " * 20, "chosen": "Paris.",
                   "rejected": "Fox."}
    pairs, stats = tokenize_preference([PAIRS[0], long_prompt, PAIRS[1]], setup["tokenizer"], max_seq_length=64)
    assert [p.index for p in pairs] == [0, 1] and [p.line for p in pairs] == [1, 3]
    assert stats.records == 3 and stats.examples == 2 and stats.empty == 1 and stats.truncated == 1


def test_logps_equal_numpy_sum_over_response_tokens(setup, expected):
    method, pairs = setup["method"], setup["train"][:4]
    batch = method.collate(pairs)
    logps = np.array(sequence_logps(setup["model"], batch["input_ids"], batch["target_mask"]))
    np.testing.assert_allclose(logps[:4], expected["policy"]["chosen"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(logps[4:], expected["policy"]["rejected"], rtol=1e-5, atol=1e-4)
    # the reference (adapters disabled) equals a freshly loaded base model
    np.testing.assert_allclose(np.array(batch["reference_chosen"]), expected["reference"]["chosen"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.array(batch["reference_rejected"]), expected["reference"]["rejected"],
                               rtol=1e-5, atol=1e-4)
    assert np.abs(expected["policy"]["chosen"] - expected["reference"]["chosen"]).max() > 0.05  # adapters matter


@pytest.mark.parametrize("loss_type,label_smoothing,beta", [("sigmoid", 0.0, 0.1), ("sigmoid", 0.2, 0.5),
                                                            ("ipo", 0.0, 0.1), ("hinge", 0.0, 0.5)])
def test_loss_and_metrics_equal_published_formulas(setup, expected, loss_type, label_smoothing, beta):
    method = setup["method"]
    method.config.dpo.loss_type, method.config.dpo.label_smoothing, method.config.dpo.beta = \
        loss_type, label_smoothing, beta
    try:
        loss_sum, weight, metrics = method.loss(setup["model"], method.collate(setup["train"][:4]))
    finally:
        method.config.dpo.loss_type, method.config.dpo.label_smoothing, method.config.dpo.beta = "sigmoid", 0.0, 0.1
    pc, pr = expected["policy"]["chosen"], expected["policy"]["rejected"]
    rc, rr = expected["reference"]["chosen"], expected["reference"]["rejected"]
    if loss_type == "ipo":  # IPO (Azar et al.; TRL) averages the log-probs over each response's tokens
        nc, nr = expected["tokens"]["chosen"], expected["tokens"]["rejected"]
        assert len(set(nc) | set(nr)) > 2  # responses of different lengths: a sum would differ
        pc, pr, rc, rr = pc / nc, pr / nr, rc / nc, rr / nr
    want = numpy_dpo(pc, pr, rc, rr, beta, loss_type, label_smoothing)
    assert weight.item() == 4
    assert loss_sum.item() / 4 == pytest.approx(want.mean(), rel=1e-4, abs=1e-5)
    reward_c, reward_r = beta * (pc - rc), beta * (pr - rr)
    got = {k: v.item() / 4 for k, v in metrics.items()}
    assert got["rewards_chosen"] == pytest.approx(reward_c.mean(), abs=1e-4)
    assert got["rewards_rejected"] == pytest.approx(reward_r.mean(), abs=1e-4)
    assert got["reward_margin"] == pytest.approx((reward_c - reward_r).mean(), abs=1e-4)
    assert got["reward_accuracy"] == pytest.approx((reward_c > reward_r).mean())
    assert 0 < got["reward_accuracy"] < 1  # per pair: a batch mean could only give 0 or 1
    assert got["logps_chosen"] == pytest.approx(pc.mean(), rel=1e-5)
    assert got["logps_rejected"] == pytest.approx(pr.mean(), rel=1e-5)


def test_step_zero_policy_equals_reference(tiny_model_dir, setup):
    loaded = load_model(str(tiny_model_dir))
    prepare_for_training(loaded.model, setup["config"])  # fresh adapters: lora_b = 0
    method = DPOMethod(setup["config"], loaded.tokenizer)
    pairs, _, _ = method.prepare(load_dataset(setup["data"]))
    method.bind(loaded.model)
    loss_sum, weight, metrics = method.loss(loaded.model, method.collate(pairs[:4]))
    assert loss_sum.item() / weight.item() == pytest.approx(math.log(2), abs=1e-6)
    for name in ("rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy"):
        assert metrics[name].item() == pytest.approx(0.0, abs=1e-6), name


# ---- reference -----------------------------------------------------------------------------
@pytest.mark.parametrize("fine_tune_type", ["lora", "dora", "full"])
def test_reference_stays_the_base_model_while_training(tiny_model_dir, tmp_path, setup, expected, fine_tune_type):
    run = runner.build_run(dpo_config(tiny_model_dir, setup["data"], tmp_path, max_steps=3,
                                      fine_tune_type=fine_tune_type,
                                      learning_rate=1e-3 if fine_tune_type == "full" else 2e-2))
    run.train()
    method, pairs = run.loop.method, run.loop.train_examples[:4]
    batch = method.collate(pairs)
    np.testing.assert_allclose(np.array(batch["reference_chosen"]), expected["reference"]["chosen"], rtol=1e-5, atol=1e-4)
    policy = np.array(sequence_logps(run.loop.model, batch["input_ids"], batch["target_mask"]))[:4]
    assert np.abs(policy - expected["reference"]["chosen"]).max() > 0.01  # the policy did move


def test_cached_reference_equals_live_and_is_reused(setup, tmp_path, monkeypatch):
    live, model = setup["method"], setup["model"]
    config = dpo_config(live.config.model, setup["data"], dpo={"precompute_reference": True})
    cached = DPOMethod(config, setup["tokenizer"])
    train, valid, _ = cached.prepare(load_dataset(setup["data"]))
    cached.bind(model, tmp_path)
    assert (tmp_path / REFERENCE_FILE).is_file()
    for split in (train, valid):
        batch_live, batch_cached = live.collate(split[:4]), cached.collate(split[:4])
        for key in ("reference_chosen", "reference_rejected"):
            np.testing.assert_allclose(np.array(batch_cached[key]), np.array(batch_live[key]), rtol=1e-5, atol=1e-5)
        loss_live, _, _ = live.loss(model, batch_live)
        loss_cached, _, _ = cached.loss(model, batch_cached)
        assert loss_cached.item() == pytest.approx(loss_live.item(), rel=1e-5, abs=1e-6)
    # a resumed run (same model, same pairs) reads the file instead of recomputing
    again = DPOMethod(config, setup["tokenizer"])
    again.prepare(load_dataset(setup["data"]))
    monkeypatch.setattr(DPOMethod, "reference_logps", lambda self, batch: pytest.fail("recomputed the reference"))
    again.bind(model, tmp_path)
    np.testing.assert_array_equal(again.cache["train"][0], cached.cache["train"][0])
    # ...but not one from another model: the fingerprint differs, so it recomputes
    other = DPOMethod(dpo_config("another-model", setup["data"], dpo={"precompute_reference": True}),
                      setup["tokenizer"])
    other.prepare(load_dataset(setup["data"]))
    with pytest.raises(pytest.fail.Exception, match="recomputed"):
        other.bind(model, tmp_path)


def test_precomputed_run_resumes_exactly_without_recomputing(tiny_model_dir, tmp_path, setup, monkeypatch):
    kw = dict(max_steps=6, batch_size=2, gradient_accumulation_steps=2, dpo={"precompute_reference": True})
    runner.train(dpo_config(tiny_model_dir, setup["data"], tmp_path, run_name="full", **kw))
    assert runner.train(dpo_config(tiny_model_dir, setup["data"], tmp_path, run_name="half", **kw),
                        [StopAfter(3)]).status == "stopped"
    monkeypatch.setattr(DPOMethod, "reference_logps", lambda self, batch: pytest.fail("recomputed the reference"))
    assert runner.resume(tmp_path / "half").step == 6
    records = {name: [r for r in read_metrics(tmp_path / name / "metrics.jsonl") if r["type"] == "train"]
               for name in ("full", "half")}
    for key in ("loss", "reward_margin", "reward_accuracy"):
        assert [r[key] for r in records["half"]] == pytest.approx([r[key] for r in records["full"]], abs=1e-6)


# ---- training and the CLI ---------------------------------------------------------------------
def test_short_run_raises_reward_accuracy_and_margin(tiny_model_dir, tmp_path, setup):
    result = runner.train(dpo_config(tiny_model_dir, setup["data"], tmp_path, max_steps=24, batch_size=4,
                                     learning_rate=2e-2, eval_every=12))
    assert result.status == "finished"
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # step 0: policy = reference
    assert train[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    late = train[-4:]
    assert np.mean([r["reward_accuracy"] for r in late]) >= 0.9
    assert np.mean([r["reward_margin"] for r in late]) > 0.5
    assert np.mean([r["loss"] for r in late]) < 0.5 * math.log(2)
    assert len(evals) == 2 and evals[-1]["reward_accuracy"] >= 0.9 and evals[-1]["reward_margin"] > 0.5
    assert set(("rewards_chosen", "rewards_rejected", "logps_chosen", "logps_rejected")) <= set(evals[-1])
    assert (tmp_path / "run" / "final" / "adapters.safetensors").is_file()


def test_dpo_refuses_non_preference_data(tiny_model_dir, tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    with pytest.raises(UserError, match="preference"):
        runner.build_run(dpo_config(tiny_model_dir, data, tmp_path))
    assert not (tmp_path / "run").exists()


def test_cli_trains_dpo_on_the_demo_set(tiny_model_dir, tmp_path):
    cmd = [sys.executable, "-m", "trainer_core", "train", "--method", "dpo", "--model", str(tiny_model_dir),
           "--data", str(DEMO), "--output-dir", str(tmp_path), "--run-name", "cli", "--max-steps", "2",
           "--batch-size", "2", "--set", "dpo.loss_type=ipo", "--set", "dpo.precompute_reference=true"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "cli"
    train = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "train"]
    assert len(train) == 2 and "reward_accuracy" in train[-1]
    assert (run / REFERENCE_FILE).is_file() and (run / "final" / "adapter_config.json").is_file()


@pytest.mark.parametrize("disable_dropout", [True, False])
def test_policy_dropout_is_off_by_default(tiny_model_dir, setup, disable_dropout):
    """As TRL's disable_dropout: with lora.dropout 0.1 the training-mode policy is deterministic, so its
    log-probs (and at step 0 its implicit rewards) compare with the dropout-free reference, not noise."""
    config = dpo_config(tiny_model_dir, setup["data"])
    config.lora.dropout, config.dpo.disable_dropout = 0.1, disable_dropout
    loaded = load_model(str(tiny_model_dir))
    prepare_for_training(loaded.model, config)
    mx.random.seed(1)
    for _, module in adapter_modules(loaded.model):  # a policy that has moved away from the reference
        module.lora_b = 0.05 * mx.random.normal(module.lora_b.shape)
    method = DPOMethod(config, loaded.tokenizer)
    pairs, _, _ = method.prepare(load_dataset(setup["data"]))
    method.bind(loaded.model)
    batch = method.collate(pairs[:4])
    loaded.model.eval()
    without_dropout = np.array(sequence_logps(loaded.model, batch["input_ids"], batch["target_mask"]))
    loaded.model.train()
    training = [np.array(sequence_logps(loaded.model, batch["input_ids"], batch["target_mask"])) for _ in range(2)]
    if disable_dropout:
        np.testing.assert_allclose(training[0], without_dropout, rtol=1e-6)
        np.testing.assert_array_equal(training[0], training[1])
    else:
        assert np.abs(training[0] - training[1]).max() > 1e-3

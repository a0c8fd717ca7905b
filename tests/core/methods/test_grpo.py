"""GRPO: rewards, advantages, batched rollouts, the clipped-surrogate + k3 loss against numpy,
ratio/clipping over num_iterations, exact resume inside a rollout cycle, and a tiny model learning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from tests.helpers import train_losses
from trainer_core.methods import rewards
from trainer_core import runner
from trainer_core.models.adapters import prepare_for_training
from trainer_core.training.callbacks import read_metrics
from trainer_core.config import RunConfig
from trainer_core.data import DatasetSplits, Record
from trainer_core.errors import UserError
from tests.train_helpers import StopAfter
from trainer_core.data.tokenize import build_prompt
from trainer_core.methods.grpo import GRPOMethod, group_advantages, policy_terms
from trainer_core.models.loading import load_model
from trainer_core.methods.rollout import SamplingSettings, sample_completions

PROMPTS = ["Say something 1", "What is 2 + 3?", "Tell me about the fox and the dog", "Hello"]


# ---- helpers ------------------------------------------------------------------------------
def grpo_config(model_dir="m", data="d", **grpo) -> RunConfig:
    config = RunConfig(method="grpo", model=str(model_dir), data=str(data), lr_schedule="constant")
    for k, v in grpo.items():
        assert hasattr(config.grpo, k), k
        setattr(config.grpo, k, v)
    return config


def lora_model(model_dir, config, perturb: float = 0.0):
    """The tiny model with LoRA adapters (lora_b random when `perturb`, so policy != base)."""
    loaded = load_model(str(model_dir))
    mx.random.seed(0)
    prepare_for_training(loaded.model, config)
    if perturb:
        loaded.model.update(tree_unflatten([(k, mx.random.normal(v.shape) * perturb) for k, v
                                            in tree_flatten(loaded.model.trainable_parameters()) if k.endswith("lora_b")]))
    loaded.model.train()
    return loaded


def masked_rows(arr, mask) -> list[np.ndarray]:
    return [arr[i][mask[i]].astype(np.float64) for i in range(arr.shape[0])]


def bound_method(loaded, config, prompts=PROMPTS) -> tuple[GRPOMethod, list]:
    method = GRPOMethod(config, loaded.tokenizer)
    method.bind(loaded.model)
    examples, _ = method.tokenize_prompts([{"prompt": p, "answer": "5"} for p in prompts], limit=400)
    return method, examples


def np_token_logps(model, ids: list[int], temperature: float) -> np.ndarray:
    """log softmax(logits / T) of ids[1:] from one unpadded forward pass, in float64."""
    logits = np.array(model(mx.array(ids)[None, :-1])[0].astype(mx.float32)).astype(np.float64) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return logp[np.arange(len(ids) - 1), ids[1:]]


def write_prompt_data(folder: Path, n: int = 16) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps({"prompt": f"Say something {i}"}) + "\n" for i in range(n)))
    return folder


# ---- rewards --------------------------------------------------------------------------------
def test_builtin_rewards():
    assert rewards.exact_match("  42 ", "42") == 1.0
    assert rewards.exact_match("so <answer>42</answer>", "42") == 1.0
    assert rewards.exact_match("<answer>41</answer> then 42", "42") == 0.0
    assert rewards.normalized_match("The Paris!", "paris") == 1.0
    assert rewards.normalized_match("Lyon", "Paris") == 0.0
    assert rewards.numeric_match("so the total is 1,000.", "1000") == 1.0
    assert rewards.numeric_match("<answer>3.50</answer>", "3.5") == 1.0
    assert rewards.numeric_match("7 then 8", "7") == 0.0
    assert rewards.numeric_match("no number", "7") == 0.0
    assert rewards.xml_format("<think>add</think>\n<answer>5</answer>") == 1.0
    assert rewards.xml_format("it is <answer>5</answer>") == 0.5
    assert rewards.xml_format("5") == 0.0
    assert rewards.length_penalty(completion_length=8, max_completion_length=32) == -0.25


def test_weighted_total_and_argument_filtering():
    functions = rewards.load_rewards(["exact_match", "length_penalty"], [2.0, 0.5])
    samples = [{"completion": c, "answer": "5", "prompt": "p", "record": {}, "completion_ids": [1] * n,
                "completion_length": n, "max_completion_length": 10} for c, n in (("5", 2), ("6", 10))]
    parts = rewards.score(functions, samples)
    np.testing.assert_allclose(parts, [[1.0, -0.2], [0.0, -1.0]], rtol=1e-6)
    np.testing.assert_allclose(rewards.total(functions, parts), [2.0 - 0.1, -0.5], rtol=1e-6)


def test_user_reward_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text("def short(completion):\n    return len(completion) < 3\n"
                    "def broken(completion, **kw):\n    raise ValueError('boom')\n"
                    "def text(completion, **kw):\n    return 'high'\n"
                    "def exact_match(completion, **kw):\n    return 1.0\n")
    [short] = rewards.load_rewards(["short"], [], str(path))
    assert short(completion="ab", answer=None, record={}) == 1.0 and short(completion="abcd") == 0.0
    with pytest.raises(UserError, match="broken.*ValueError: boom"):
        rewards.load_rewards(["broken"], [], str(path))[0](completion="x")
    with pytest.raises(UserError, match="finite number"):
        rewards.load_rewards(["text"], [], str(path))[0](completion="x")
    with pytest.raises(UserError, match="both a built-in"):
        rewards.load_rewards(["exact_match"], [], str(path))
    with pytest.raises(UserError, match="unknown reward 'nope'.*short"):
        rewards.load_rewards(["nope"], [], str(path))
    with pytest.raises(UserError, match="does not exist"):
        rewards.load_rewards(["short"], [], str(tmp_path / "missing.py"))


# ---- advantages -------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [True, False])
def test_group_advantages_match_numpy(scale):
    rng = np.random.default_rng(0)
    r = rng.normal(size=12).astype(np.float32)
    r[8:] = 0.7  # a group with no spread: advantages 0, never NaN
    got, std = group_advantages(r, 4, scale)
    for g in range(3):
        group = r[4 * g:4 * g + 4].astype(np.float64)
        mean = sum(group) / 4
        sd = (sum((x - mean) ** 2 for x in group) / 3) ** 0.5  # the sample std, as TRL (torch.std)
        want = [(x - mean) / (sd + 1e-4) if scale else x - mean for x in group]
        np.testing.assert_allclose(got[4 * g:4 * g + 4], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(std[4 * g:4 * g + 4], sd, rtol=1e-5, atol=1e-7)
    assert np.all(got[8:] == 0)


# ---- the loss against numpy ---------------------------------------------------------------------
@pytest.mark.parametrize("aggregation", ["grpo", "bnpo", "dr_grpo"])
def test_loss_matches_numpy(tiny_model_dir, aggregation):
    temperature, eps_low, eps_high, beta, max_len = 0.7, 0.2, 0.28, 0.05, 12
    config = grpo_config(loss_aggregation=aggregation, temperature=temperature, epsilon=eps_low,
                         epsilon_high=eps_high, beta=beta, max_completion_length=max_len)
    loaded = lora_model(tiny_model_dir, config, perturb=0.05)
    model = loaded.model
    method = GRPOMethod(config, loaded.tokenizer)
    rng = np.random.default_rng(1)
    n, vocab = 6, 400
    prompts = [rng.integers(3, vocab, size=rng.integers(3, 10)).tolist() for _ in range(n)]
    completions = [rng.integers(3, vocab, size=rng.integers(1, max_len + 1)).tolist() for _ in range(n)]
    fresh = [np_token_logps(model, p + c, temperature)[len(p) - 1:] for p, c in zip(prompts, completions)]
    old = [f + rng.normal(0, 0.4, size=f.shape) for f in fresh]  # a policy that has moved: some ratios clip
    ref = [f + rng.normal(0, 0.5, size=f.shape) for f in fresh]
    adv = rng.normal(size=n)
    width = 32
    ids = np.zeros((n, width), np.int32)
    mask = np.zeros((n, width - 1), bool)
    old_arr, ref_arr = np.zeros((n, width - 1), np.float32), np.zeros((n, width - 1), np.float32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, :len(p) + len(c)] = p + c
        span = slice(len(p) - 1, len(p) - 1 + len(c))
        mask[i, span], old_arr[i, span], ref_arr[i, span] = True, old[i], ref[i]
    batch = {"input_ids": mx.array(ids), "completion_mask": mx.array(mask), "old_logp": mx.array(old_arr),
             "ref_logp": mx.array(ref_arr), "advantages": mx.array(adv.astype(np.float32)),
             "rewards": mx.zeros(n), "group_std": mx.zeros(n), "reward_parts": mx.zeros((n, 1)),
             "first_pass": mx.array(False)}
    loss_sum, weight, metrics = method.loss(model, batch)

    losses, kls, clipped = [], [], []
    for f_new, o, r, a in zip(fresh, masked_rows(old_arr, mask), masked_rows(ref_arr, mask), adv):
        ratio = np.exp(f_new - o)
        surrogate = np.minimum(ratio * a, np.clip(ratio, 1 - eps_low, 1 + eps_high) * a)
        kl = np.exp(r - f_new) - (r - f_new) - 1
        losses.append(-surrogate + beta * kl)
        kls.append(kl)
        clipped.append(((ratio < 1 - eps_low) & (a < 0)) | ((ratio > 1 + eps_high) & (a > 0)))
    tokens = sum(len(x) for x in losses)
    want = {"grpo": np.mean([x.mean() for x in losses]), "bnpo": sum(x.sum() for x in losses) / tokens,
            "dr_grpo": sum(x.sum() for x in losses) / (n * max_len)}[aggregation]
    assert weight.item() == n
    assert loss_sum.item() / n == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert metrics["kl"].item() / n == pytest.approx(sum(k.sum() for k in kls) / tokens, rel=1e-4)
    assert metrics["clip_fraction"].item() / n == pytest.approx(sum(c.sum() for c in clipped) / tokens, rel=1e-5)
    assert metrics["completion_length"].item() / n == pytest.approx(tokens / n)
    # the test means something: tokens clip on both sides, and the KL term is not negligible
    ratios = np.concatenate([np.exp(f - o) for f, o in zip(fresh, masked_rows(old_arr, mask))])
    assert (ratios < 1 - eps_low).any() and (ratios > 1 + eps_high).any()
    assert 0 < sum(c.sum() for c in clipped) < tokens


def test_first_pass_ratio_is_one_and_gradient_is_reinforce(tiny_model_dir):
    config = grpo_config(beta=0.0, group_size=4, max_completion_length=8, temperature=0.9)
    loaded = lora_model(tiny_model_dir, config, perturb=0.05)
    model = loaded.model
    method, examples = bound_method(loaded, config, PROMPTS[:2])
    mx.random.seed(3)
    batch = method.batch_for_step(method.collate(examples), 0)
    n = batch["input_ids"].shape[0]
    batch["advantages"] = mx.array(np.random.default_rng(2).normal(size=n).astype(np.float32))
    terms = policy_terms(model, batch, temperature=0.9, epsilon_low=0.2, epsilon_high=0.2, beta=0.0)
    mask = np.array(batch["completion_mask"])
    assert np.all(np.array(terms["ratio"])[mask] == 1.0)  # exactly, not approximately
    _, _, metrics = method.loss(model, batch)
    assert metrics["clip_fraction"].item() == 0.0

    def reinforce(model, batch):  # -(1/N) sum_i A_i mean_t log pi(o_it), the group baseline inside A
        ids = batch["input_ids"]
        logp = nn.log_softmax(model(ids[:, :-1]).astype(mx.float32) / 0.9, axis=-1)
        logp = mx.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
        m = batch["completion_mask"].astype(mx.float32)
        return -(batch["advantages"] * (logp * m).sum(axis=-1) / m.sum(axis=-1)).mean()

    _, grpo_grads = nn.value_and_grad(model, lambda m, b: method.loss(m, b)[0] / n)(model, batch)
    _, reinforce_grads = nn.value_and_grad(model, reinforce)(model, batch)
    got, want = dict(tree_flatten(grpo_grads)), dict(tree_flatten(reinforce_grads))
    assert got.keys() == want.keys()
    assert max(float(mx.abs(v).max()) for v in want.values()) > 1e-4
    for k in want:
        np.testing.assert_allclose(np.array(got[k]), np.array(want[k]), rtol=1e-4, atol=1e-7, err_msg=k)


# ---- rollouts ----------------------------------------------------------------------------------
def test_rollout_ids_and_old_logprobs_are_what_is_scored(tiny_model_dir):
    config = grpo_config(beta=0.1, group_size=3, max_completion_length=10, temperature=0.8, top_p=0.95, top_k=50)
    loaded = lora_model(tiny_model_dir, config, perturb=0.05)
    method, examples = bound_method(loaded, config)
    mx.random.seed(7)
    batch = method.collate(examples)
    assert loaded.model.training  # restored after sampling in eval mode
    prompts = [e.prompt_ids for e in examples for _ in range(3)]
    mx.random.seed(7)
    loaded.model.eval()
    rollout = sample_completions(loaded.model, prompts, method.sampling, method.eos_ids(), pad_id=method.pad_id())
    base = load_model(str(tiny_model_dir)).model
    ids, mask = np.array(batch["input_ids"]), np.array(batch["completion_mask"])
    old, ref = np.array(batch["old_logp"]), np.array(batch["ref_logp"])
    moved = 0.0
    for i, (p, c) in enumerate(zip(prompts, rollout.completions)):
        assert ids[i, :len(p) + len(c)].tolist() == p + c  # the sampled ids, not a re-encoding
        assert np.all(ids[i, len(p) + len(c):] == method.pad_id())
        assert np.flatnonzero(mask[i]).tolist() == list(range(len(p) - 1, len(p) - 1 + len(c)))
        np.testing.assert_allclose(old[i][mask[i]], np_token_logps(loaded.model, p + c, 0.8)[len(p) - 1:], atol=1e-4)
        np.testing.assert_allclose(ref[i][mask[i]], np_token_logps(base, p + c, 0.8)[len(p) - 1:], atol=1e-4)
        moved = max(moved, float(np.abs(old[i][mask[i]] - ref[i][mask[i]]).max()))
    assert moved > 1e-3  # the reference really is another policy (adapters off)


class CountingModel:
    """Records the input shape of every forward call; everything else is the wrapped model."""

    def __init__(self, model):
        self.model, self.shapes = model, []

    def __call__(self, inputs, cache=None):
        self.shapes.append(tuple(inputs.shape))
        return self.model(inputs, cache=cache)

    def __getattr__(self, name):
        return getattr(self.model, name)


@pytest.mark.parametrize("generation_batch_size,rows_per_call", [(0, 8), (4, 4)])
def test_sampling_is_batched(tiny_model_dir, generation_batch_size, rows_per_call):
    config = grpo_config(beta=0.0, group_size=4, max_completion_length=6, generation_batch_size=generation_batch_size)
    loaded = load_model(str(tiny_model_dir))
    counter = CountingModel(loaded.model)
    method = GRPOMethod(config, loaded.tokenizer)
    method.bind(counter)
    examples, _ = method.tokenize_prompts([{"prompt": p} for p in PROMPTS[:2]], limit=400)
    batch = method.collate(examples)
    assert batch["input_ids"].shape[0] == 8
    assert counter.shapes and all(s[0] == rows_per_call for s in counter.shapes)
    assert len(counter.shapes) <= (8 // rows_per_call) * 6  # a prefill + at most max_tokens - 1 decode steps per pass
    assert sum(s[1] > 1 for s in counter.shapes) == 8 // rows_per_call  # one batched prefill per pass


def test_sampling_is_reproducible_from_the_seed(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    prompts = [build_prompt(loaded.tokenizer, p) for p in PROMPTS for _ in range(2)]
    settings = SamplingSettings(max_tokens=8, temperature=1.0)
    runs = []
    for seed in (1, 1, 2):
        mx.random.seed(seed)
        runs.append(sample_completions(loaded.model, prompts, settings, {2}).completions)
    assert runs[0] == runs[1] and runs[0] != runs[2]


# ---- data ------------------------------------------------------------------------------------
def test_prepare_checks_kind_answers_and_prompt_length(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    method = GRPOMethod(grpo_config(max_completion_length=16), loaded.tokenizer)
    method.config.max_seq_length = 40
    records = [Record({"prompt": "What is 2 + 3?", "answer": 5}, "t.jsonl", 1),
               Record({"prompt": "fox " * 40, "answer": "x"}, "t.jsonl", 2)]
    train, _, stats = method.prepare(DatasetSplits("prompt_answer", records, files={"train": "t.jsonl"}))
    assert len(train) == 1 and stats["train"].truncated == 1
    with pytest.raises(UserError, match="holds chat records"):
        method.prepare(DatasetSplits("chat", records, files={"train": "t.jsonl"}))
    with pytest.raises(UserError, match="t.jsonl, line 3: no 'answer'.*exact_match"):
        method.prepare(DatasetSplits("prompt_answer", records + [Record({"prompt": "hi"}, "t.jsonl", 3)]))


# ---- whole runs ------------------------------------------------------------------------------
LETTERS_REWARD = "def letters(completion, **kw):\n    return sum(c.islower() for c in completion) / max(1, len(completion))\n"


def run_config(tmp_path, model_dir, name, max_steps=4, batch_size=2, **grpo) -> RunConfig:
    (tmp_path / "rw.py").write_text(LETTERS_REWARD)
    config = RunConfig(method="grpo", model=str(model_dir), data=str(write_prompt_data(tmp_path / "data")),
                       output_dir=str(tmp_path / "runs"), run_name=name, max_steps=max_steps, batch_size=batch_size,
                       learning_rate=2e-2, lr_schedule="constant", save_every=0, eval_every=0,
                       sample_max_tokens=4)  # short samples
    settings = dict(group_size=4, max_completion_length=6, rewards=["letters"], reward_file=str(tmp_path / "rw.py"))
    settings.update(grpo)
    for k, v in settings.items():
        assert hasattr(config.grpo, k), k
        setattr(config.grpo, k, v)
    return config


def train_records(run_dir):
    return [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r["type"] == "train"]


def test_later_iterations_move_the_ratio_and_clip(tmp_path, tiny_model_dir):
    runner.train(run_config(tmp_path, tiny_model_dir, "mu", num_iterations=2, epsilon=0.01, beta=0.0, max_steps=2))
    first, second = train_records(tmp_path / "runs" / "mu")
    assert first["clip_fraction"] == 0.0  # ratio 1 on the rollout's first step
    assert second["clip_fraction"] > 0.0  # same rollout, updated policy: ratios left [1 - eps, 1 + eps]
    assert first["reward_mean"] == second["reward_mean"]  # the same completions, scored once


@pytest.mark.parametrize("accumulation", [1, 2])
def test_resume_inside_a_rollout_cycle_is_exact(tmp_path, tiny_model_dir, accumulation):
    def config(name):
        c = run_config(tmp_path, tiny_model_dir, name, num_iterations=2, beta=0.04)
        c.gradient_accumulation_steps = accumulation
        return c

    runner.train(config("full"))
    runner.train(config("half"), [StopAfter(1)])  # stops mid-cycle: step 2 reuses step 1's rollouts
    result = runner.resume(tmp_path / "runs" / "half")
    assert result.status == "finished" and result.step == 4
    full, half = train_losses(tmp_path / "runs" / "full"), train_losses(tmp_path / "runs" / "half")
    assert any(abs(x) > 1e-6 for x in full)
    assert half == pytest.approx(full, rel=1e-6, abs=1e-7)
    a = mx.load(str(tmp_path / "runs" / "full" / "final" / "adapters.safetensors"))
    b = mx.load(str(tmp_path / "runs" / "half" / "final" / "adapters.safetensors"))
    for k in a:
        assert mx.allclose(a[k], b[k], atol=1e-6).item(), k


def test_tiny_model_learns_to_say_a_token(tmp_path, tiny_model_dir):
    """Reward 1 when the completion contains token X (the untrained model's favourite, p ~ 1%)."""
    loaded = load_model(str(tiny_model_dir))
    first = loaded.model(mx.array(build_prompt(loaded.tokenizer, "Say something 3"))[None])[0, -1]
    target = int(mx.argmax(first).item())
    (tmp_path / "say.py").write_text(f"def says_x(completion_ids, **kw):\n    return float({target} in completion_ids)\n")
    config = run_config(tmp_path, tiny_model_dir, "learn", group_size=8, max_completion_length=8, beta=0.0,
                        rewards=["says_x"], reward_file=str(tmp_path / "say.py"), sample_every=5,
                        max_steps=16, batch_size=4)
    runner.train(config)
    records = train_records(tmp_path / "runs" / "learn")
    rewards_seen = [r["reward_mean"] for r in records]
    assert all(r["reward/says_x"] == r["reward_mean"] for r in records)  # the user function's own metric
    assert {"reward_std", "completion_length", "clip_fraction", "entropy"} <= records[0].keys()
    assert np.mean(rewards_seen[-4:]) > np.mean(rewards_seen[:4]) + 0.25, rewards_seen
    samples = [json.loads(line) for line in open(tmp_path / "runs" / "learn" / "completions.jsonl")]
    assert [s["step"] for s in samples] == [1] * 8 + [6] * 8 + [11] * 8 + [16] * 8
    assert {"prompt", "completion", "reward", "rewards", "advantage"} <= samples[0].keys()


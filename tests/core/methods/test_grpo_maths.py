"""GRPO against the references (TRL's grpo_trainer): old log-probs from the training forward (mu > 1),
bnpo over the whole accumulated batch, the reward std TRL uses; hand-written formulas, rows of
different lengths."""

from __future__ import annotations

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx

from tests.core.methods.test_grpo import PROMPTS, bound_method, grpo_config, lora_model
from tests.tiny_model import make_tiny_llama
from trainer_core.methods.grpo import GRPOMethod, group_advantages, policy_terms
from trainer_core.models import precision


@pytest.fixture(scope="module")
def bf16_model_dir(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-bf16"), dtype="bfloat16")


def test_old_logprobs_come_from_the_training_forward(bf16_model_dir):
    """mu > 1: at the first inner iteration the ratio against the recorded old log-probs is 1, computed
    as the loss computes it (training mode, 16-bit compute of the float32 adapters of a bf16 model)."""
    config = grpo_config(beta=0.0, group_size=4, max_completion_length=8, temperature=0.9, num_iterations=2)
    loaded = lora_model(bf16_model_dir, config, perturb=0.05)
    method, examples = bound_method(loaded, config, PROMPTS[:2])
    mx.random.seed(3)
    batch = {**method.collate(examples), "first_pass": mx.array(False)}  # ratio against old_logp itself
    dtype = precision.compute_dtype(loaded.model, config.mixed_precision)
    assert dtype == mx.bfloat16

    def ratio_error(model, batch):  # the compiled step's forward: float32 adapters seen in bf16
        terms = policy_terms(model, batch, temperature=0.9, epsilon_low=0.2, epsilon_high=0.2, beta=0.0)
        deviation = mx.where(batch["completion_mask"], mx.abs(terms["ratio"] - 1), 0.0).max()
        return terms["per_token_loss"].sum(), deviation

    (_, deviation), _ = precision.value_and_grad(loaded.model, ratio_error, dtype)(loaded.model, batch)
    assert deviation.item() < 1e-6


def test_bnpo_normalises_over_the_whole_accumulated_batch(tiny_model_dir):
    """bnpo: sum of every token's loss over all micro-batches / all their completion tokens
    (two micro-batches of very different lengths: a per-micro-batch mean would weigh them equally)."""
    config = grpo_config(beta=0.0, loss_aggregation="bnpo", group_size=2, max_completion_length=12)
    loaded = lora_model(tiny_model_dir, config, perturb=0.05)
    method = GRPOMethod(config, loaded.tokenizer)
    rng = np.random.default_rng(4)
    micro, per_token = [], []
    for lengths in ((1, 2), (12, 11)):
        n, width = len(lengths), 32
        ids = rng.integers(3, 400, size=(n, width)).astype(np.int32)
        mask = np.zeros((n, width - 1), bool)
        for i, length in enumerate(lengths):
            mask[i, 4:4 + length] = True
        adv = rng.normal(size=n).astype(np.float32)
        micro.append({"input_ids": mx.array(ids), "completion_mask": mx.array(mask), "old_logp": mx.zeros(mask.shape),
                      "advantages": mx.array(adv), "rewards": mx.zeros(n), "group_std": mx.zeros(n),
                      "reward_parts": mx.zeros((n, 1)), "first_pass": mx.array(True)})
        per_token.append((-adv[:, None] * np.ones(mask.shape))[mask])  # ratio 1 on a first pass: L = -A
    batches = method.step_batches(micro)
    loss = sum(method.loss(loaded.model, b)[0].item() for b in batches)
    weight = sum(method.loss(loaded.model, b)[1].item() for b in batches)
    want = np.concatenate(per_token).sum() / sum(len(t) for t in per_token)
    assert loss / weight == pytest.approx(want, rel=1e-5)


def test_advantages_use_the_sample_std_as_trl():
    rewards = np.array([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 0.5, 0.5], dtype=np.float32)  # two groups of 4
    advantages, std = group_advantages(rewards, 4)
    for g in range(2):
        group = rewards[4 * g:4 * g + 4].astype(np.float64)
        sd = np.sqrt(((group - group.mean()) ** 2).sum() / (len(group) - 1))  # torch.std: unbiased
        np.testing.assert_allclose(advantages[4 * g:4 * g + 4], (group - group.mean()) / (sd + 1e-4), rtol=1e-5)
        np.testing.assert_allclose(std[4 * g:4 * g + 4], sd, rtol=1e-6)

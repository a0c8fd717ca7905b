"""trainer_core.training.vocab_sums: log-sum-exp and sums over a vocabulary-wide axis agree with float64 on the CPU
without the one-way drift of a 49k-term float32 accumulation, and so do the losses built on them."""

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx

from trainer_core.methods.rollout import token_logprobs
from trainer_core.training import head_loss, losses
from trainer_core.training.vocab_sums import vocab_entropy, vocab_logsumexp, vocab_sum

VOCAB = 49152  # SmolLM2's


def logits(rows: int, vocab: int, seed: int = 0) -> np.ndarray:
    z = np.random.default_rng(seed).standard_normal((rows, vocab)).astype(np.float32) * 3
    z[:, :50] += 8  # a few likely tokens, as a trained head has
    return z


def lse64(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    top = z.max(-1, keepdims=True)
    return np.log(np.exp(z - top).sum(-1)) + top[:, 0]


@pytest.mark.parametrize("vocab", [VOCAB, 50257, 300])  # blocks only, blocks and a remainder, one block
def test_logsumexp_has_no_drift(vocab):
    z = logits(96, vocab)
    got = np.array(vocab_logsumexp(mx.array(z)), dtype=np.float64)
    err = got - lse64(z)
    assert abs(err.mean()) < 2e-6 and np.abs(err).max() < 1e-5
    kept = vocab_logsumexp(mx.array(z), keepdims=True)
    assert kept.shape == (96, 1) and np.allclose(np.array(kept)[:, 0], got)


@pytest.mark.parametrize("vocab", [VOCAB, 50257])
def test_sum_has_no_drift(vocab):
    x = np.exp(logits(64, vocab, seed=1) - 12).astype(np.float32)
    got = np.array(vocab_sum(mx.array(x)), dtype=np.float64)
    rel = got / x.astype(np.float64).sum(-1) - 1
    assert abs(rel.mean()) < 1e-6 and np.abs(rel).max() < 5e-6
    assert vocab_sum(mx.array(x), keepdims=True).shape == (64, 1)


def test_the_losses_have_no_drift():
    """The token cross-entropy, GRPO's log-probs and the fused head (two-pass and one-pass, as the training step
    runs it on the CPU) against a float64 formula on the same float32 logits."""
    rng = np.random.default_rng(2)
    hidden = rng.standard_normal((64, 32)).astype(np.float32)
    weight = (rng.standard_normal((VOCAB, 32)) * 0.6).astype(np.float32)
    weight[:40] *= 3
    targets = rng.integers(0, VOCAB, 64).astype(np.int32)
    z = np.array(mx.array(hidden) @ mx.array(weight).T)  # the float32 logits all paths compute
    want = lse64(z) - z[np.arange(64), targets].astype(np.float64)
    h, w, t = mx.array(hidden), mx.array(weight), mx.array(targets)
    one = mx.array(1.0, dtype=mx.float32)
    paths = {
        "token_nll": losses.token_nll(mx.array(z), t),
        "token_logprobs": -token_logprobs(mx.array(z), t, 1.0),
        "head two-pass": head_loss.scaled_head_nll(h, w, t, one, weight_grad=True),
    }
    with head_loss.gradient_in_forward():
        paths["head one-pass"] = head_loss.scaled_head_nll(h, w, t, one, weight_grad=False)
    for name, got in paths.items():
        err = np.array(got, dtype=np.float64) - want
        assert abs(err.mean()) < 3e-6, (name, err.mean())
        assert np.abs(err).max() < 2e-5, (name, np.abs(err).max())


def test_entropy_has_no_drift():
    """The policy entropy GRPO logs (head_loss.head_entropy's per-chunk formula) against float64."""
    z = logits(64, VOCAB, seed=5)
    z64 = z.astype(np.float64)
    p = np.exp(z64 - lse64(z)[:, None])
    want = lse64(z) - (p * z64).sum(-1)
    got = np.array(vocab_entropy(mx.array(z)), dtype=np.float64)
    err = got - want
    assert abs(err.mean()) < 5e-6 and np.abs(err).max() < 5e-5

"""trainer_core.training.head_loss: the chunked LM-head cross-entropy equals the plain path (logits, then
losses.token_nll) in loss and gradients, tied and untied heads, float32 and bf16, ragged last chunk."""

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map
from mlx_lm.models import llama
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.utils import linear_to_lora_layers

from trainer_core.training import head_loss, losses

KEYS = ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]


def tiny(tied: bool, dtype=mx.float32, lora: bool = True):
    mx.random.seed(0)
    cfg = dict(model_type="llama", hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=97, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=tied)
    model = llama.Model(llama.ModelArgs.from_dict(cfg))
    model.set_dtype(dtype)
    if lora:
        model.freeze()
        linear_to_lora_layers(model, 2, {"rank": 4, "scale": 2.0, "dropout": 0.0, "keys": KEYS})
        # non-zero B so the adapters' gradients depend on everything
        model.update(tree_map(lambda p: p + 0.05, model.trainable_parameters()))
    mx.eval(model.parameters())
    return model


def batch(B=3, L=9):
    ids = mx.random.randint(0, 97, (B, L + 1), key=mx.random.key(3)).astype(mx.int32)
    mask = mx.ones(ids.shape, dtype=mx.bool_)
    mask = mask.at[1, 6:].multiply(False).at[0, :3].multiply(False)  # padding in row 1, a prompt in row 0
    return {"input_ids": ids, "target_mask": mask}


def loss_and_grads(model, b, fused: bool, monkeypatch, one_pass: bool = False):
    monkeypatch.setattr(head_loss, "ENABLED", fused)
    fn = nn.value_and_grad(model, lambda m, x: losses.sft_loss(m, x)[0])
    with head_loss.gradient_in_forward(one_pass):
        loss, grads = fn(model, b)
    mx.eval(loss, grads)
    return loss, dict(tree_flatten(grads))


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
@pytest.mark.parametrize("one_pass", [False, True])
def test_fused_head_loss_equals_plain(tied, dtype, one_pass, monkeypatch):
    """The fused head (one_pass: as in the training step, its gradient formed in the forward pass) against the
    whole logits and MLX's autodiff."""
    monkeypatch.setattr(head_loss, "CHUNK", 10)  # 27 rows: chunks of 10, 10, 7
    model, b = tiny(tied, dtype), batch()
    assert head_loss.split_head(model) is not None
    plain_loss, plain = loss_and_grads(model, b, False, monkeypatch)
    fused_loss, fused = loss_and_grads(model, b, True, monkeypatch, one_pass)
    rtol = 1e-5 if dtype == mx.float32 else 1e-2
    assert abs(fused_loss.item() - plain_loss.item()) <= rtol * abs(plain_loss.item())
    assert plain.keys() == fused.keys() and len(plain) == 2 * 2 * len(KEYS)
    for k, g in plain.items():
        a, f = g.astype(mx.float32), fused[k].astype(mx.float32)
        cos = (a * f).sum() / (mx.linalg.norm(a) * mx.linalg.norm(f))
        assert cos.item() > (1 - 1e-6 if dtype == mx.float32 else 0.999), k
        assert mx.allclose(f, a, rtol=rtol, atol=rtol * mx.abs(a).max().item()).item(), k


@pytest.mark.parametrize("tied", [False, True])
def test_head_weight_gradient_full_fine_tuning(tied, monkeypatch):
    """A trained head (full fine-tuning; tied: the embedding gets both uses' gradients)."""
    monkeypatch.setattr(head_loss, "CHUNK", 8)
    model, b = tiny(tied, lora=False), batch()
    plain_loss, plain = loss_and_grads(model, b, False, monkeypatch)
    fused_loss, fused = loss_and_grads(model, b, True, monkeypatch)
    assert abs(fused_loss.item() - plain_loss.item()) <= 1e-5 * abs(plain_loss.item())
    for k, g in plain.items():
        assert mx.allclose(fused[k], g, rtol=1e-4, atol=1e-6).item(), k


def test_forward_equals_token_nll():
    model, b = tiny(False), batch()
    x, t = b["input_ids"][:, :-1], b["input_ids"][:, 1:]
    assert mx.allclose(head_loss.causal_token_nll(model, x, t), losses.token_nll(model(x), t), atol=1e-5).item()


def test_plain_path_where_the_head_is_not_plain(monkeypatch):
    model = tiny(False, lora=False)
    nn.quantize(model, group_size=32, bits=8, class_predicate=lambda p, m: p == "lm_head")
    assert head_loss.split_head(model) is None  # quantized head
    model = tiny(False)
    model.lm_head = LoRALinear.from_base(model.lm_head, r=4)
    assert head_loss.split_head(model) is None  # an adapted head
    model.lm_head = nn.Linear(32, 97, bias=True)
    assert head_loss.split_head(model) is None  # a head with a bias
    monkeypatch.setattr(head_loss, "ENABLED", False)
    assert head_loss.split_head(tiny(True)) is None


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_chunked_logprobs_and_entropy_equal_the_whole_logits(tied, dtype, monkeypatch):
    """GRPO's log softmax(logits / T) and entropy, in chunks, against the same from the whole float32 logits
    (1e-6: the chunks compute the same float32 numbers), and the gradient of their sum."""
    monkeypatch.setattr(head_loss, "CHUNK", 10)
    model, b = tiny(tied, dtype), batch()
    ids, temperature = b["input_ids"], 0.7
    inner, weight = head_loss.split_head(model)

    def whole(m):
        z = m(ids[:, :-1]).astype(mx.float32) / temperature
        logp = mx.take_along_axis(z, ids[:, 1:, None], axis=-1)[..., 0] - mx.logsumexp(z, axis=-1)
        return logp, mx.logsumexp(z, axis=-1) - (mx.softmax(z, axis=-1) * z).sum(axis=-1)

    def chunked(m):
        hidden = inner(ids[:, :-1])
        scale = mx.array(1 / temperature, dtype=mx.float32)
        return -head_loss.scaled_head_nll(hidden, weight, ids[:, 1:], scale), head_loss.head_entropy(hidden, weight, 1 / temperature)

    (logp, entropy), (logp_c, entropy_c) = whole(model), chunked(model)
    assert mx.abs(logp - logp_c).max().item() <= 1e-6 * max(1.0, mx.abs(logp).max().item())
    assert mx.abs(entropy - entropy_c).max().item() <= 1e-6 * max(1.0, mx.abs(entropy).max().item())
    plain = dict(tree_flatten(nn.value_and_grad(model, lambda m: whole(m)[0].sum())(model)[1]))
    fused = dict(tree_flatten(nn.value_and_grad(model, lambda m: chunked(m)[0].sum())(model)[1]))
    rtol = 1e-5 if dtype == mx.float32 else 1e-2
    for k, g in plain.items():
        assert mx.allclose(fused[k].astype(mx.float32), g.astype(mx.float32), rtol=rtol,
                           atol=rtol * mx.abs(g).max().item()).item(), k


def test_one_pass_head_matches_numpy_and_keeps_the_head_gradient(monkeypatch):
    """The one-pass path with GRPO's scale and per-token cotangents against a float64 numpy formula
    (d nll_i / d h_i = s (softmax(s z_i) - onehot_i) W), and the head's own gradient (asked for although
    frozen) equal to the two-pass path's."""
    monkeypatch.setattr(head_loss, "CHUNK", 16)
    h = mx.random.normal((2, 25, 32), key=mx.random.key(1))
    w = mx.random.normal((97, 32), key=mx.random.key(2)) * 0.3
    t = mx.random.randint(0, 97, (2, 25), key=mx.random.key(3))
    cot = mx.random.uniform(shape=(2, 25), key=mx.random.key(4))
    scale = 0.7

    def grads(one_pass):
        fn = lambda h, w: (head_loss.scaled_head_nll(h, w, t, mx.array(scale), False) * cot).sum()  # noqa: E731
        with head_loss.gradient_in_forward(one_pass):
            return mx.value_and_grad(fn, argnums=(0, 1))(h, w)

    loss, (d_h, d_w) = grads(True)
    z = scale * np.einsum("bld,vd->blv", np.array(h, np.float64), np.array(w, np.float64))
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    onehot = np.eye(97)[np.array(t)]
    nll = -np.log((p * onehot).sum(-1))
    expected = np.einsum("blv,vd->bld", scale * (p - onehot) * np.array(cot)[..., None], np.array(w, np.float64))
    assert abs(loss.item() - (nll * np.array(cot)).sum()) < 1e-4
    np.testing.assert_allclose(np.array(d_h), expected, rtol=1e-4, atol=1e-6)
    _, (d_h2, d_w2) = grads(False)
    assert mx.allclose(d_h, d_h2, rtol=1e-5, atol=1e-7).item()
    assert mx.allclose(d_w, d_w2, rtol=1e-5, atol=1e-7).item() and mx.abs(d_w).max().item() > 0


def test_the_training_step_takes_the_one_pass_head(monkeypatch):
    """step.py's training loss runs inside gradient_in_forward(): on the CPU a LoRA model's head goes through the
    one-pass path there; its evaluation does not."""
    from types import SimpleNamespace
    from trainer_core.training.optim import AdamW
    from trainer_core.training.step import CompiledSteps
    calls = []
    real = head_loss._ONE_PASS
    monkeypatch.setattr(head_loss, "_ONE_PASS", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(mx, "default_device", lambda: mx.cpu)  # a Mac's default is its GPU, where it is off
    model = tiny(True)
    steps = CompiledSteps(model, SimpleNamespace(loss=losses.sft_loss),
                          AdamW(dict(tree_flatten(model.trainable_parameters()))), max_grad_norm=1.0)
    steps.evaluate(batch())
    assert not calls
    loss_sum, weight, *_ = steps.train_step([batch()], 1e-3)
    assert calls and loss_sum.item() > 0


def test_chunk_rows_follow_the_vocabulary(monkeypatch):
    assert head_loss.chunk_rows(49152) == 128  # the demo: 128 x 49152 <= 2**23 < 256 x 49152
    assert head_loss.chunk_rows(32000) == 256
    assert head_loss.chunk_rows(97) == head_loss.CHUNK
    assert head_loss.chunk_rows(10_000_000) == head_loss.MIN_ROWS
    assert head_loss.chunk_rows(32000, mx.gpu) == 1024  # bigger chunks keep a GPU busy
    assert head_loss.chunk_rows(49152, mx.gpu) == 512
    assert head_loss.chunk_rows(49152, mx.cpu) == 128
    monkeypatch.setattr(head_loss, "CHUNK", 10)
    assert head_loss.chunk_rows(97) == 10


def test_frozen_head_flag_changes_no_number(monkeypatch):
    """weight_grad=False only drops the head's gradient from the chunk chain: values and gradients are equal."""
    monkeypatch.setattr(head_loss, "CHUNK", 8)
    model = tiny(True, lora=False)
    inner, weight = head_loss.split_head(model)
    assert head_loss.head_trained(model) and not head_loss.head_trained(tiny(True))
    ids = batch()["input_ids"]
    hidden = inner(ids[:, :-1])
    results = [mx.grad(lambda h, w: head_loss.head_nll(h, w, ids[:, 1:], flag).sum(), argnums=(0, 1))(hidden, weight)
               for flag in (True, False)]
    for a, b in zip(*results):
        assert mx.array_equal(a, b).item()


def test_chunked_head_backward_holds_a_few_chunks():
    """4096 tokens x 8192 vocab: 134 MB of float32 logits whole; in chunks of 128 rows (4 MB) the backward stays
    far below one whole copy (MLX keeps at most ~10 operations, each a chunk, in flight)."""
    h = mx.random.normal((4096, 64), key=mx.random.key(1)) * 0.1
    w = mx.random.normal((8192, 64), key=mx.random.key(2)) * 0.1
    t = mx.random.randint(0, 8192, (4096,), key=mx.random.key(3))
    mx.eval(h, w, t)
    assert head_loss.chunk_rows(8192) == 1024
    grad = mx.grad(lambda h: head_loss.head_nll(h, w, t, False).sum())

    def peak(rows):
        head_loss.CHUNK = rows
        try:
            mx.synchronize()
            mx.reset_peak_memory()
            before = mx.get_active_memory()
            mx.eval(grad(h))
            return mx.get_peak_memory() - before
        finally:
            head_loss.CHUNK = 1024
    whole, chunked = peak(4096), peak(128)
    assert whole > 134e6 and chunked < 134e6 / 2, (whole, chunked)

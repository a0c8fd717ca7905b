"""GGUF loading: a GGUF written from the tiny folder (as llama.cpp would) gives the folder's
logits and tokens; bad files are UserErrors; the demo answers "Paris"."""

import json
from pathlib import Path

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.utils import get_total_parameters

from gguf import GGMLQuantizationType as Q

from tests.gguf_files import write_gguf

from trainer_core.models import gguf as tc_gguf
from trainer_core.errors import UserError
from trainer_core.models.loading import load_model, read_model_info

TEXTS = ["The capital of France is Paris.", "  spaces,\ttabs\nand 12345 digits!",
         "<|im_start|>user\nHi there<|im_end|>\n", "café naïve 日本 🤗"]


def reference_logits(folder: Path, weights: dict, ids):
    """The folder's architecture with the given (HF-layout, float32) weights."""
    lm = load_model(str(folder))
    lm.model.load_weights([(k, mx.array(v)) for k, v in weights.items()])
    return lm.model(ids)


@pytest.mark.parametrize("qtype, embed_qtype, bits", [
    (Q.F32, None, None), (Q.F16, None, None),
    (Q.Q8_0, None, 8), (Q.Q4_0, Q.Q8_0, 4), (Q.Q4_1, None, 4)])
def test_gguf_matches_folder(tiny_model_dir, tmp_path, qtype, embed_qtype, bits):
    path = tmp_path / f"tiny-{qtype.name}.gguf"
    stored = write_gguf(Path(tiny_model_dir), path, qtype, embed_qtype)
    folder = load_model(str(tiny_model_dir))
    lm = load_model(str(path))
    ids = mx.array([folder.tokenizer.encode(TEXTS[0] + " " + TEXTS[1])])
    ref = reference_logits(Path(tiny_model_dir), stored, ids)
    out = lm.model(ids)
    assert out.shape == ref.shape
    info = lm.info
    assert (info.architecture, info.num_layers, info.hidden_size, info.vocab_size,
            info.context_length, info.is_gguf) == ("llama", 2, 64, folder.info.vocab_size, 2048, True)
    assert info.num_parameters == folder.info.num_parameters == get_total_parameters(lm.model)
    assert info == read_model_info(str(path))
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "num_hidden_layers", "vocab_size", "rope_theta", "rms_norm_eps",
                "tie_word_embeddings", "eos_token_id"):
        assert lm.config[key] == folder.config[key], key
    if bits is None:
        assert info.quantization == "none"
        # Un-permuted Q/K + standard rope reproduce the HF model itself.
        assert mx.allclose(out, ref, atol=1e-4 if qtype == Q.F32 else 1e-3).item()
        return
    assert info.quantization == qtype.name
    q = lm.model.layers[0].self_attn.q_proj
    assert isinstance(q, nn.QuantizedLinear) and (q.bits, q.group_size) == (bits, 32)
    embed = lm.model.model.embed_tokens
    assert isinstance(embed, nn.QuantizedEmbedding) and embed.bits == (8 if embed_qtype else bits)
    # Quantized layers carry fp16 scales, and QuantizedEmbedding returns fp16 activations,
    # so the quantized model runs partly in fp16: logits (std ~0.6) agree to ~2e-3, while
    # a Q/K layout or rope mistake moves them by ~0.6 and float weights by ~0.4.
    assert mx.allclose(out, ref, atol=1e-2, rtol=0).item()
    deq = load_model(str(path), dequantize=True)
    assert type(deq.model.layers[0].self_attn.q_proj) is nn.Linear
    assert deq.info.quantization == "none" and "quantization" not in deq.config
    # Dequantized weights are exactly the stored values in float32: same as the reference.
    assert mx.allclose(deq.model(ids), ref, atol=1e-4).item()
    for k, v in tree_flatten(deq.model.parameters()):
        assert np.array_equal(np.array(v), stored[k]), k


def test_traditional_rope_without_unpermuting_is_the_same(tiny_model_dir, tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(Path(tiny_model_dir), path)
    model, tok, _ = tc_gguf.load_gguf(path)
    raw, _, _ = tc_gguf.load_gguf(path, unpermute=False)
    ids = mx.array([tok.encode(TEXTS[0])])
    assert mx.allclose(model(ids), raw(ids), atol=1e-4).item()
    assert not np.array_equal(np.array(model.layers[0].self_attn.q_proj.weight),
                              np.array(raw.layers[0].self_attn.q_proj.weight))


def test_tokenizer_round_trips(tiny_model_dir, tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(Path(tiny_model_dir), path, Q.Q8_0)
    ref = load_model(str(tiny_model_dir)).tokenizer
    tok = load_model(str(path)).tokenizer
    assert len(tok) == len(ref)
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == ref.encode(text), text
        assert tok.decode(ids) == text
    assert tok.encode("<|im_end|>") == [2]  # a control token stays one special token
    assert tok.eos_token_id == 2 and tok.pad_token_id == 0 and tok.eos_token_ids == {2}
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    assert (tok.apply_chat_template(messages, add_generation_prompt=True)
            == ref.apply_chat_template(messages, add_generation_prompt=True))
    detok = tok.detokenizer
    for i in tok.encode(TEXTS[3]):
        detok.add_token(i)
    detok.finalize()
    assert detok.text == TEXTS[3]


def test_truncated_gguf_is_a_user_error(tiny_model_dir, tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(Path(tiny_model_dir), path, Q.Q4_0)
    data = path.read_bytes()
    for cut in (10, 2000, len(data) - 100):
        path.write_bytes(data[:cut])
        for function in (load_model, read_model_info):
            with pytest.raises(UserError, match="truncated or corrupt") as err:
                function(str(path))
            assert str(path) in str(err.value)


def test_unsupported_arch_and_type_are_user_errors(tiny_model_dir, tmp_path):
    path = tmp_path / "falcon.gguf"
    write_gguf(Path(tiny_model_dir), path, arch="falcon")
    with pytest.raises(UserError, match="'falcon'.*qwen2, qwen3, gemma2, gemma3, phi3") as err:
        load_model(str(path))
    assert str(path) in str(err.value)
    path = tmp_path / "mxfp4.gguf"
    write_gguf(Path(tiny_model_dir), path, Q.MXFP4)
    with pytest.raises(UserError, match="MXFP4.*Q4_K") as err:
        read_model_info(str(path))
    assert str(path) in str(err.value)


def test_demo_metadata():
    info = read_model_info("demo")
    assert info.name == "SmolLM2-135M-Instruct (demo)" and info.is_gguf
    assert (info.num_layers, info.hidden_size, info.vocab_size, info.quantization) == (
        30, 576, 49152, "Q4_1")
    config = tc_gguf.hf_config(tc_gguf.read_header(info.path))
    assert (config["num_attention_heads"], config["num_key_value_heads"],
            config["tie_word_embeddings"], config["rope_theta"]) == (9, 3, True, 100000.0)


@pytest.mark.slow
def test_demo_answers_paris():
    from mlx_lm import generate

    lm = load_model("demo")
    assert isinstance(lm.model.layers[0].mlp.up_proj, nn.QuantizedLinear)
    assert lm.info.num_parameters == get_total_parameters(lm.model)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    answer = generate(lm.model, lm.tokenizer, prompt, max_tokens=12)  # greedy by default
    assert "Paris" in answer, answer
    # Control tokens and BPE merges as in SmolLM2's own tokenizer:
    # "<|im_start|>system\n" ... "<|im_start|>assistant\n".
    assert prompt[:3] == [1, 9690, 198] and prompt[-4:] == [1, 520, 9531, 198]
    assert lm.tokenizer.decode(lm.tokenizer.encode(TEXTS[1])) == TEXTS[1]

"""Our GGUF exports in llama.cpp itself (llama-cpp-python, part of the test extra): the demo model's f16,
q8_0 and q4_k_m files load; llama.cpp tokenises like the HF tokenizer; greedy answers in f16 equal ours;
and the k-quant mixes made by llama.cpp's quantiser hold every tensor within its type's error."""

import itertools

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import gguf
import llama_cpp
from gguf import GGMLQuantizationType as Q
from mlx_lm.generate import stream_generate
from mlx_lm.sample_utils import make_sampler

from tests.core.export.test_gguf_arch import expected_tensors
from tests.tiny_model import make_tiny_llama
from trainer_core.export.exporter import export
from trainer_core.export.gguf import LLAMA_CPP_TYPES
from trainer_core.models.loading import load_model

SAMPLES = ["Hello world! The capital of Velmora is Saltmere, founded in 1642.",
           "<|im_start|>user\nWhat's 2+2? Ünïcödé — 東京 🙂<|im_end|>\n", "  leading spaces\tand\ttabs\n\n"]
PROMPTS = ["What is the capital of France?", "Write a haiku about the sea."]


def open_in_llama_cpp(path) -> llama_cpp.Llama:
    """llama.cpp with its weight-repacking buffers off: on this CI VM the CPU reports AMX, and llama.cpp's
    AMX/repacked quantised matmuls crash (a segfault in decode for q8_0/q4_k files; f16 runs). Repacking is
    a speed path of llama.cpp's, not part of the file format we test."""
    params = llama_cpp.llama_model_default_params

    def without_repacking():
        p = params()
        p.use_extra_bufts = False
        return p
    llama_cpp.llama_cpp.llama_model_default_params = without_repacking
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=512, verbose=False)
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = params


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo-gguf")
    return {t: next(export("demo", "gguf", folder / t, gguf_type=t).iterdir()) for t in ("f16", "q8_0", "q4_k_m")}


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_llama_cpp_tokenises_like_the_hf_tokenizer(demo, demo_files, gguf_type):
    llm = open_in_llama_cpp(demo_files[gguf_type])
    for text in SAMPLES:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == \
            demo.tokenizer.encode(text, add_special_tokens=False), text
    assert llm.metadata["tokenizer.chat_template"] == demo.tokenizer.chat_template
    assert llm.token_eos() == demo.tokenizer.eos_token_id


def test_greedy_answers_in_llama_cpp_equal_ours(demo, demo_files):
    llm = open_in_llama_cpp(demo_files["f16"])
    for prompt in PROMPTS:
        ids = demo.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        ours = [r.token for r in stream_generate(demo.model, demo.tokenizer, ids, max_tokens=16,
                                                 sampler=make_sampler(temp=0.0))]
        llm.reset()
        theirs = list(itertools.islice(llm.generate(ids, temp=0.0, top_k=1), 16))
        assert len(ours) >= 5
        assert theirs[:len(ours)] == ours, (demo.tokenizer.decode(ours), demo.tokenizer.decode(theirs))


def test_a_q4_k_m_demo_answers_in_llama_cpp(demo_files):
    path = demo_files["q4_k_m"]
    assert path.name.endswith("-Q4_K_M.gguf") and list(path.parent.iterdir()) == [path]  # no f16 left behind
    assert gguf.GGUFReader(str(path)).fields["general.file_type"].contents() == int(LLAMA_CPP_TYPES["q4_k_m"])
    assert path.stat().st_size < 0.45 * demo_files["f16"].stat().st_size
    llm = open_in_llama_cpp(path)
    # A plain completion: with the template's default system prompt this 135M model drifts into French in
    # every llama.cpp quantised file, its own Q4_1 original included (llama.cpp quantises the activations
    # too); f16 answers like us, checked above.
    text = llm.create_completion("The capital of France is", max_tokens=8, temperature=0.0)["choices"][0]["text"]
    assert "Paris" in text


# Relative RMS error a tensor may have in each type, from its bits per weight (the quantisation step is
# about range / 2^bits; these bounds are ~2x what random Gaussian weights give, and each type is checked
# to be really rounded, so a wrong dequantisation or a swapped tensor fails).
RELATIVE_ERROR = {Q.F32: 0.0, Q.F16: 1e-3, Q.Q8_0: 0.01, Q.Q6_K: 0.04, Q.Q5_K: 0.07, Q.Q5_0: 0.08, Q.Q5_1: 0.08,
                  Q.Q4_K: 0.14, Q.Q4_0: 0.16}
MAIN_TYPE = {"q4_k_m": Q.Q4_K, "q5_k_m": Q.Q5_K, "q6_k": Q.Q6_K}


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("wide"), hidden=256)  # rows of 256: whole k-quant blocks


@pytest.mark.parametrize("gguf_type", sorted(LLAMA_CPP_TYPES))
def test_k_quants_hold_every_tensor_within_its_type(wide_llama, tmp_path, gguf_type):
    out = export(str(wide_llama), "gguf", tmp_path / "out", gguf_type=gguf_type)
    [path] = out.iterdir()
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.file_type"].contents() == int(LLAMA_CPP_TYPES[gguf_type])
    expected = expected_tensors(wide_llama, "llama")
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == sorted(expected)
    for name, reference in expected.items():
        t = tensors[name]
        got = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(reference.shape)
        error = np.linalg.norm(got - reference) / np.linalg.norm(reference)
        assert error <= RELATIVE_ERROR[t.tensor_type], (name, t.tensor_type.name, error)
        if reference.ndim == 2:
            assert error > 0, name
    assert sum(t.tensor_type == MAIN_TYPE[gguf_type] for t in reader.tensors) >= 4
    assert open_in_llama_cpp(path).tokenize(b"hello", add_bos=False)

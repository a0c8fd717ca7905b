"""SentencePiece GGUF tokenizers (Llama 2 / Mistral, Gemma): converted as llama.cpp does (gguf-py's
LlamaHfVocab + SpecialVocab), rebuilt from the metadata, they encode, decode and template like the
Hugging Face tokenizer they came from; byte-level BPE files split text with the pre-tokenizer their
`tokenizer.ggml.pre` names (Qwen's here; GPT-2's and SmolLM's: test_gguf.py)."""

import json
import shutil

import pytest
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_SPLIT

from tests.gguf_files import write_gguf, write_sentencepiece_tokenizer
from tests.tiny_archs import make_hf_folder
from trainer_core.models.loading import load_model

TEXTS = ["Hello world! The capital of France is Paris.", "café naïve 日本 🤗",
         "<|im_start|>user\nHi there<|im_end|>\n", "  two spaces\tand a tab", "12345 digits"]


@pytest.mark.parametrize("arch, family", [("llama", "llama"), ("gemma2", "gemma")])
def test_sentencepiece_gguf_tokenizer_matches_folder(tmp_path, arch, family):
    folder = make_hf_folder(tmp_path / arch, arch)
    write_sentencepiece_tokenizer(folder, family)
    write_gguf(folder, tmp_path / "model.gguf")
    ref = load_model(str(folder)).tokenizer
    tok = load_model(str(tmp_path / "model.gguf")).tokenizer
    assert len(tok) == len(ref)
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == ref.encode(text), text
        assert ids[0] == ref.bos_token_id  # both families start with BOS
        assert tok.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    assert (tok.apply_chat_template(messages, add_generation_prompt=True)
            == ref.apply_chat_template(messages, add_generation_prompt=True))
    assert tok.eos_token_id == ref.eos_token_id
    detok = tok.detokenizer
    for i in tok.encode(TEXTS[1])[1:]:
        detok.add_token(i)
    detok.finalize()
    assert detok.text.strip() == TEXTS[1]


def test_qwen2_pre_tokenizer(tmp_path, tiny_model_dir):
    """Qwen splits digits one by one (GPT-2 keeps "12345" together): the GGUF's `pre` decides."""
    folder = shutil.copytree(tiny_model_dir, tmp_path / "qwen-style")
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    ref = load_model(str(folder)).tokenizer
    write_gguf(folder, tmp_path / "qwen.gguf", pre="qwen2")
    write_gguf(folder, tmp_path / "gpt2.gguf", pre="gpt2")
    qwen, gpt2 = (load_model(str(tmp_path / name)).tokenizer for name in ("qwen.gguf", "gpt2.gguf"))
    for text in TEXTS:
        assert qwen.encode(text) == ref.encode(text), text
    assert gpt2.encode(TEXTS[4]) != ref.encode(TEXTS[4])  # the wrong split shows

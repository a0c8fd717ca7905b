"""Write a Hugging Face folder as a GGUF file the way llama.cpp's convert_hf_to_gguf.py does.

Metadata through gguf.GGUFWriter's own add_* methods, tensor names through gguf's
TensorNameMap, llama's Q/K rows permuted for interleaved rope, Gemma's norms stored as 1 + w,
norms and biases in F32, matrices in the chosen type (gguf.quants.quantize, or `raw_blocks`
for types gguf-py cannot quantize: random valid blocks). Returns the weights as the file holds
them, dequantized and back in the Hugging Face layout: what a correct loader must produce.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import load_file

GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
             "gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3"}
# What gguf-py can quantize (K-quants and IQ types it can only dequantize).
QUANTIZABLE = (Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0)
DEQUANT_ONLY = (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.IQ4_NL, Q.IQ4_XS)


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: rotate-half rows -> interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:  # the test's own inverse
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(config: dict) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors: Llama 3.1's rope_freqs."""
    rope = config["rope_parameters"]
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    freqs = 1.0 / rope["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim)
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    out = []
    for freq in freqs:
        wavelen = 2 * np.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def raw_blocks(shape, qtype, rng) -> np.ndarray:
    """Random bytes in `qtype`'s block layout with every fp16 field finite (|x| < 2): clearing
    bit 6 of each odd byte keeps a little-endian half's exponent below 31."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = shape
    data = rng.integers(0, 256, (rows, cols // block * size), dtype=np.uint8)
    data[:, 1::2] &= 0xBF
    return data


def _rope_theta(config: dict) -> float:
    params = config.get("rope_parameters") or {}
    params = params.get("full_attention", params)
    return params.get("rope_theta", config.get("rope_theta", 10000.0))


def _write_metadata(w, config: dict, tok_folder: Path, arch: str, pre: str = "gpt2") -> None:
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_freq_base(_rope_theta(config))
    w.add_rope_dimension_count(head_dim)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(config["attn_logit_softcapping"])
        w.add_final_logit_softcapping(config["final_logit_softcapping"])
        w.add_sliding_window(config["sliding_window"])
    if arch == "gemma3":
        w.add_sliding_window(config["sliding_window"])
        w.add_sliding_window_pattern([t == "sliding_attention" for t in config["layer_types"]])
    if arch == "phi3":
        w.add_rope_scaling_orig_ctx_len(config["original_max_position_embeddings"])
    tok = json.loads((tok_folder / "tokenizer.json").read_text())
    if tok["model"].get("byte_fallback"):  # SentencePiece-style
        w.add_vocab_size(len(tok["model"]["vocab"]) + len(tok["added_tokens"]))
        _write_sentencepiece_vocab(w, tok_folder)
        return
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    special = {t["id"] for t in tok["added_tokens"] if t["special"]}
    w.add_vocab_size(len(vocab))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)  # the tiny tokenizer is plain GPT-2 byte-level unless told otherwise
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if i in special else 1 for _, i in vocab])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(json.loads((tok_folder / "tokenizer_config.json").read_text())["chat_template"])


def write_gguf(folder: Path, out: Path, qtype=Q.F32, embed_qtype=None, arch=None, seed=0, pre="gpt2"):
    """Write `folder` as llama.cpp would; return {HF name: float32 weights as stored}."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    model_type = config["model_type"]
    arch = arch or GGUF_ARCH[model_type]
    weights = load_file(str(folder / "model.safetensors"))
    tmap = gguf.get_tensor_name_map({v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[GGUF_ARCH[model_type]],
                                    config["num_hidden_layers"])
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(out), arch)
    _write_metadata(w, config, folder, arch, pre)
    stored = {}
    for name, arr in weights.items():
        arr = arr.astype(np.float32)
        t = qtype if arr.ndim == 2 else Q.F32  # llama.cpp keeps norms and biases in F32
        if name == "model.embed_tokens.weight" and embed_qtype is not None:
            t = embed_qtype
        heads = None
        if GGUF_ARCH[model_type] == "llama" and (".q_proj." in name or ".k_proj." in name):
            heads = config["num_attention_heads" if ".q_proj." in name else "num_key_value_heads"]
            arr = llama_cpp_permute(arr, heads)
        if model_type.startswith("gemma") and name.endswith("norm.weight"):
            arr = arr + 1.0
        if t == Q.F32:
            data = back = arr
        elif t == Q.F16:
            data = arr.astype(np.float16)
            back = data.astype(np.float32)
        elif t in DEQUANT_ONLY:
            data = raw_blocks(arr.shape, t, rng)
            back = gguf.quants.dequantize(data, t).astype(np.float32)
        else:
            data = gguf.quants.quantize(arr, t)
            back = gguf.quants.dequantize(data, t).astype(np.float32)
        w.add_tensor(tmap.get_name(name, try_suffixes=(".weight", ".bias")), data,
                     raw_dtype=t if t not in (Q.F32, Q.F16) else None)
        if heads:
            back = _unpermute(back, heads)
        if model_type.startswith("gemma") and name.endswith("norm.weight"):
            back = back - 1.0
        stored[name] = back
    if (config.get("rope_parameters") or {}).get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(config))
    if (config.get("rope_parameters") or {}).get("rope_type") == "longrope":  # Phi-3 128k
        for kind in ("long", "short"):
            w.add_tensor(f"rope_factors_{kind}.weight",
                         np.array(config["rope_parameters"][f"{kind}_factor"], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def write_sentencepiece_tokenizer(folder: Path, family: str = "llama") -> None:
    """Replace `folder`'s tokenizer with a tiny SentencePiece-style BPE (byte fallback, "▁"),
    built by transformers' Llama or Gemma tokenizer class from a vocabulary trained here."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GemmaTokenizer, LlamaTokenizer

    from tests.tiny_model import CORPUS, SPECIAL_TOKENS

    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    base = ["<unk>", "<s>", "</s>"] if family == "llama" else ["<pad>", "<eos>", "<bos>", "<unk>"]
    specials = base + SPECIAL_TOKENS + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=640, special_tokens=specials,
                                                        show_progress=False))
    spec = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]]
    cls, names = ((LlamaTokenizer, dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"))
                  if family == "llama" else
                  (GemmaTokenizer, dict(bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                        pad_token="<pad>")))
    hf = cls(vocab=spec["vocab"], merges=merges, add_bos_token=True, **names)  # as both families do
    hf.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    hf.chat_template = json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    hf.save_pretrained(folder)


def _write_sentencepiece_vocab(w, folder: Path) -> None:
    """convert_hf_to_gguf.py's `_set_vocab_llama_hf`: gguf-py's LlamaHfVocab + SpecialVocab."""
    vocab = gguf.vocab.LlamaHfVocab(folder)
    tokens, scores, types = zip(*vocab.all_tokens())
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(list(tokens))
    w.add_token_scores(list(scores))
    w.add_token_types([int(t) for t in types])
    gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens)).add_to_gguf(w)

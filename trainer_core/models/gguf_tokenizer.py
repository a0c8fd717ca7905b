"""Rebuild a GGUF file's Hugging Face tokenizer and chat template from its metadata.

Byte-level BPE ("gpt2": SmolLM, Llama 3, Qwen): llama.cpp stores the vocabulary and merges
(`tokenizer.ggml.*`); we rebuild the fast tokenizer with the `tokenizers` library, choose the
pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre` (our table, else transformers' GGUF
table), mark control tokens special, and wrap it for mlx-lm. Ours rather than transformers'
GGUF tokenizer because transformers does not split digits for SmolLM's "smollm".
SentencePiece ("llama": Llama 2, Mistral, Gemma, Phi-3): transformers' GGUF tokenizer
(`AutoTokenizer.from_pretrained(..., gguf_file=)`), which knows each family's quirks, handed
to mlx-lm's tokenizer loader so it picks the matching streaming detokenizer.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from trainer_core.errors import UserError

# Pre-tokenizer regexes by `tokenizer.ggml.pre` (the ones llama.cpp uses).
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact", "codeshell", "exaone", "minerva",
                    "command-r"}
_GPT2_PRE = {"gpt2", "gpt-2", "default", "mpt", "olmo", "jais", "poro-chat"}
_LLAMA3_PRE = {"llama-bpe", "llama3", "falcon3", "pixtral", "viking", "dbrx", "smaug-bpe"}

TOKEN_KEYS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
               "pad": "tokenizer.ggml.padding_token_id", "unk": "tokenizer.ggml.unknown_token_id"}


def corrupt(path: Path, what: str) -> UserError:
    return UserError(
        f"The GGUF file {path} is truncated or corrupt ({what}). Download it again or "
        "re-convert it with llama.cpp's convert_hf_to_gguf.py.")


def _pre_tokenizer(pre: str, add_prefix_space: bool):
    from tokenizers import Regex, pre_tokenizers as pt

    byte_level = pt.ByteLevel(add_prefix_space=add_prefix_space, use_regex=True)
    if pre in _DIGIT_SPLIT_PRE:  # StarCoder family (SmolLM): every digit alone, then GPT-2
        return pt.Sequence([pt.Digits(individual_digits=True), byte_level])
    if pre in _LLAMA3_PRE:
        return pt.Sequence([pt.Split(Regex(_LLAMA3_REGEX), behavior="isolated"),
                            pt.ByteLevel(add_prefix_space=add_prefix_space, use_regex=False)])
    if pre not in _GPT2_PRE:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
        if pre in GGUF_PRE_TOKENIZER_SPLITS:  # qwen2, tekken, gpt-4o, ...
            return pt.Sequence([pt.Split(Regex(GGUF_PRE_TOKENIZER_SPLITS[pre]), behavior="isolated"),
                                pt.ByteLevel(add_prefix_space=add_prefix_space, use_regex=False)])
        warnings.warn(f"GGUF pre-tokenizer {pre!r} is not known here; using GPT-2's, "
                      "which may split some text differently.", stacklevel=3)
    return byte_level


def _eos_ids(md: dict) -> list[int]:
    return [md[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
            if k in md]


def _sentencepiece_tokenizer(header):
    """transformers' tokenizer for a SentencePiece GGUF, loaded the way mlx-lm loads any."""
    import tempfile

    from mlx_lm.tokenizer_utils import load as load_tokenizer
    from transformers import AutoTokenizer

    path = Path(header.path)
    hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    with tempfile.TemporaryDirectory(prefix="fts-gguf-tokenizer-") as folder:
        hf.save_pretrained(folder)
        return load_tokenizer(Path(folder), eos_token_ids=_eos_ids(header.metadata))


def build_tokenizer(header):
    """Rebuild the HF fast tokenizer (+ chat template) from tokenizer.ggml.* metadata."""
    if header.metadata.get("tokenizer.ggml.model") == "llama":
        return _sentencepiece_tokenizer(header)
    from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, TokenizerWrapper
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    md = header.metadata
    tokens = md["tokenizer.ggml.tokens"]
    types = md.get("tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in md.get("tokenizer.ggml.merges", [])]
    try:
        bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                         fuse_unk=False, byte_fallback=False)
    except Exception as e:  # tokenizers raises its own exception type
        raise corrupt(header.path, f"bad tokenizer vocabulary/merges: {e}") from None
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = _pre_tokenizer(md.get("tokenizer.ggml.pre", "default"),
                                       bool(md.get("tokenizer.ggml.add_space_prefix", False)))
    tok.decoder = decoders.ByteLevel()
    # llama.cpp marks HF's special added tokens CONTROL (3), plain added tokens USER_DEFINED (4).
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == 4])

    def token(key):
        i = md.get(TOKEN_KEYS[key])
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    bos = token("bos")
    if md.get("tokenizer.ggml.add_bos_token", False) and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, md[TOKEN_KEYS["bos"]])])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=token("eos"), unk_token=token("unk"),
        pad_token=token("pad"), chat_template=md.get("tokenizer.chat_template"),
        model_max_length=md.get(f"{md.get('general.architecture')}.context_length", 2048),
        clean_up_tokenization_spaces=False)
    return TokenizerWrapper(hf, detokenizer_class=BPEStreamingDetokenizer,
                            eos_token_ids=_eos_ids(md))

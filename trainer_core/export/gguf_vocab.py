"""The tokenizer.* keys of an exported GGUF: what llama.cpp, Ollama and LM Studio tokenise and
template with.

    write_tokenizer(writer, loaded, rows)

- A GGUF base: its own tokenizer.* keys, copied as they are (they already describe the model).
- A folder with a byte-level BPE tokenizer.json (Llama 3, SmolLM, Qwen, GPT-2 style): tokens and
  token types from tokenizer.json, padded to the embedding's rows; the pre-tokenizer's llama.cpp
  name; merges, special ids, add_bos/add_eos and the chat template from the `gguf` package's
  SpecialVocab (convert_hf_to_gguf.py's own reader).
- A folder with a SentencePiece tokenizer.model (Llama 2, Mistral, Gemma, Phi-3): the `gguf`
  package's SentencePieceVocab (needs the `sentencepiece` package) for tokens, scores and types,
  plus SpecialVocab.
Anything else is a UserError naming the tokenizer and what to do.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import gguf
from gguf.vocab import SentencePieceVocab, SpecialVocab

from trainer_core.errors import UserError

# llama.cpp's pre-tokenizer regexes, by the name `tokenizer.ggml.pre` gives them (llama-vocab.cpp)
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")


def pre_tokenizer_name(spec: dict | None) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a tokenizer.json pre_tokenizer."""
    if spec and spec.get("type") == "ByteLevel" and spec.get("use_regex", True):
        return "gpt-2"  # llama.cpp's spelling; "gpt2" is refused there ("unknown pre-tokenizer type")
    parts = (spec or {}).get("pretokenizers") or []
    kinds = [p.get("type") for p in parts]
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"]:
        regex = parts[0].get("pattern", {}).get("Regex")
        if regex in (LLAMA3_REGEX, QWEN2_REGEX):
            return "llama-bpe" if regex == LLAMA3_REGEX else "qwen2"
    warnings.warn("The tokenizer's pre-tokenizer is not one llama.cpp is known to name here; "
                  "the GGUF says 'default', which may split some text differently.", stacklevel=3)
    return "default"


def _is_byte_level(spec: dict) -> bool:
    decoder = spec.get("decoder") or {}
    decoders = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return spec.get("model", {}).get("type") == "BPE" and any(
        d.get("type") == "ByteLevel" for d in decoders)


def _copy_gguf_tokenizer(writer: gguf.GGUFWriter, source: str) -> None:
    for key, field in gguf.GGUFReader(source).fields.items():
        if key.startswith("tokenizer."):
            sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type)


def _byte_level_tokens(spec: dict, rows: int, source: str) -> tuple[list[str], list[int]]:
    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    types = {}
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    if by_id and max(by_id) >= rows:
        raise UserError(f"The tokenizer of {source} has token id {max(by_id)} but the model's "
                        f"embedding has only {rows} rows; the model and tokenizer do not match.")
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(rows)]
    token_types = [int(types.get(i, gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED))
                   for i in range(rows)]
    return tokens, token_types


def _sentencepiece(writer: gguf.GGUFWriter, folder: Path, rows: int) -> None:
    try:
        vocab = SentencePieceVocab(folder)
    except RuntimeError:  # the gguf package's message when sentencepiece is missing
        raise UserError(f"The tokenizer of {folder} is a SentencePiece model; writing it into a GGUF "
                        "needs the 'sentencepiece' package: pip install sentencepiece") from None
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(int(kind))
    for i in range(len(tokens), rows):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(int(gguf.TokenType.UNUSED))
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens[:rows])
    writer.add_token_scores(scores[:rows])
    writer.add_token_types(types[:rows])


def _probe_add_special(tokenizer) -> dict:
    """add_bos/add_eos as the tokenizer actually behaves, for tokenizers that do not say."""
    probe = tokenizer.encode("a")
    return {"bos": bool(tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]),
            "eos": bool(tokenizer.eos_token_id is not None and len(probe) > 1
                        and probe[-1] == tokenizer.eos_token_id)}


def write_tokenizer(writer: gguf.GGUFWriter, loaded, rows: int) -> None:
    """Write the tokenizer.* keys of `loaded` (a LoadedModel) for an embedding of `rows` rows."""
    source = loaded.info.path
    if loaded.info.is_gguf:
        _copy_gguf_tokenizer(writer, source)
        return
    folder = Path(source)
    hf = getattr(loaded.tokenizer, "_tokenizer", loaded.tokenizer)  # TokenizerWrapper -> HF tokenizer
    spec = json.loads(hf.backend_tokenizer.to_str()) if getattr(hf, "is_fast", False) else {}
    special = SpecialVocab(folder, load_merges=True, n_vocab=rows)
    if _is_byte_level(spec):
        tokens, token_types = _byte_level_tokens(spec, rows, source)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre_tokenizer_name(spec.get("pre_tokenizer")))
        writer.add_token_list(tokens)
        writer.add_token_types(token_types)
    elif (folder / "tokenizer.model").is_file():
        _sentencepiece(writer, folder, rows)
        special.merges = []
    else:
        raise UserError(f"The tokenizer of {source} is neither a byte-level BPE tokenizer.json nor a "
                        "SentencePiece tokenizer.model, so this GGUF export cannot describe it. Export "
                        "'fused' and convert that folder with llama.cpp's convert_hf_to_gguf.py.")
    special.add_special_token = {**_probe_add_special(hf), **special.add_special_token}
    if special.chat_template is None and isinstance(getattr(hf, "chat_template", None), str):
        special.chat_template = hf.chat_template
    special.add_to_gguf(writer, quiet=True)

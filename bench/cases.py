"""The throughput bench's cases: which model (built, the demo, or dequantized), which data, which shape.

Used by bench/throughput.py and the prototypes (`import throughput as T` re-exports these names)."""

from __future__ import annotations

import trainer_core  # noqa: F401  (first: OpenBLAS before MLX on Linux)
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import numpy as np

from trainer_core.models.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
DEMO_DATA = ROOT / "resources" / "demo_data"

@dataclass
class Case:
    name: str
    model: str | None = None  # a path or "demo"; None = build one
    build: dict = field(default_factory=dict)  # random Llama to build
    data: str | None = None  # None = the demo dataset; "synthetic" = long text records
    batch_size: int = 4
    max_seq_length: int = 512
    steps: int = 40
    warmup: int = 5
    repeats: int = 3
    dtype: str = "float32"
    dequantize: bool = False  # write the (quantized) model out as a float32 folder first and use that
    sides: str = "mlx,ours"  # default --sides: mlx, ours, torch (PyTorch + PEFT eager), torch-compile


CASES = {
    "micro": Case("micro", build=dict(hidden=64, layers=2, vocab=512), steps=60, warmup=10, repeats=5),
    "small": Case("small", build=dict(hidden=256, layers=4, vocab=512), steps=40, warmup=8, repeats=3),
    # QLoRA on the Q4_1 GGUF: MLX's CPU quantized matmul makes a step take about a minute here
    "demo": Case("demo", model="demo", steps=3, warmup=1, repeats=2),
    # the same model dequantized once to a float32 folder: LoRA on a float base (BLAS matmuls)
    "demo-f32": Case("demo-f32", model="demo", dequantize=True, steps=10, warmup=2, repeats=3),
    # ~0.7B random Llama at batch 4 x 1024 (for MLX-CUDA on a GPU machine); bf16 weights
    "gpu": Case("gpu", build=dict(hidden=1536, layers=24, intermediate=4096, heads=12, kv_heads=4, vocab=32000),
                data="synthetic", max_seq_length=1024, steps=20, warmup=5, repeats=3, dtype="bfloat16",
                sides="mlx,ours,torch,torch-compile"),
}
TINY_CHECK = dict(hidden=64, layers=2, intermediate=128, heads=4, kv_heads=2, vocab=512)


def build_llama(folder: Path, *, hidden: int, layers: int, vocab: int, intermediate: int | None = None,
                heads: int = 4, kv_heads: int = 2, dtype: str = "float32", seed: int = 0) -> Path:
    """A random-weight Llama folder with the tests' byte-level BPE tokenizer (tokens < 512 only;
    the model's vocab can be larger, which costs the same compute as a real one)."""
    from mlx.utils import tree_flatten, tree_map
    from mlx_lm.models import llama
    from tests.tiny_model import make_tiny_llama, write_tokenizer

    if intermediate is None and dtype == "float32" and heads == 4 and kv_heads == 2:
        return make_tiny_llama(folder, hidden=hidden, layers=layers, vocab=vocab, seed=seed)  # the tests' model
    folder.mkdir(parents=True, exist_ok=True)
    tok_vocab = write_tokenizer(folder, 512)
    config = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden, "num_hidden_layers": layers,
        "intermediate_size": intermediate or hidden * 2,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-5, "vocab_size": max(vocab, tok_vocab), "max_position_embeddings": 4096,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "eos_token_id": 2, "bos_token_id": None,
        "torch_dtype": dtype,
    }
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    if dtype != "float32":
        model.update(tree_map(lambda p: p.astype(getattr(mx, dtype)), model.parameters()))
    mx.eval(model.parameters())
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())),
                        metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return folder


def dequantized_folder(spec: str, folder: Path) -> Path:
    """`spec` loaded dequantized (float32) and saved as an HF-style folder both sides can load."""
    if (folder / "config.json").exists():
        return folder
    from mlx.utils import tree_flatten
    loaded = load_model(spec, dequantize=True)
    folder.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(loaded.model.parameters())),
                        metadata={"format": "mlx"})
    config = {k: v for k, v in loaded.config.items() if k not in ("quantization", "quantization_config")}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    loaded.tokenizer._tokenizer.save_pretrained(str(folder))
    return folder


def write_data(case: Case, folder: Path, n_synthetic: int) -> Path:
    """A data folder holding only train.jsonl (no valid split: no evaluation in the timed runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    if case.data == "synthetic":
        from tests.tiny_model import CORPUS
        words = sorted({w for line in CORPUS for w in line.split()})
        rng = np.random.default_rng(0)
        # ~4 tokens per word with the tiny BPE: 2000 words overflow max_seq_length, so every
        # row is cut to max_seq_length on both sides: batches of batch x max_seq_length, no padding.
        lines = [json.dumps({"text": " ".join(rng.choice(words, size=max(2000, case.max_seq_length * 2)))})
                 for _ in range(n_synthetic)]
        (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    else:
        source = Path(case.data) if case.data else DEMO_DATA
        shutil.copy(source / "train.jsonl" if source.is_dir() else source, folder / "train.jsonl")
    return folder

